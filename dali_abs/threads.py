"""How many CPU threads torch uses inside a block: one helper for every stage that pins them.

Why pin at all: on a small shared CPU torch's default pool (one thread per core) spins against
DALI's threads and other jobs, and torch's float reductions depend on the thread count, so a
run is only repeatable at a fixed count (measured: the demo's classifier gave 0.900 / 0.960
worst-group / average at 1 thread and 0.940 / 0.965 at 2; a 224 px push-pull fill took 390 ms
on 2 busy threads, 9 ms on 1).
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run torch on ``n`` intra-op threads inside the block (None or 0: leave it as it is), then
    restore the previous count, also when the block raises."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
