"""Run by tests/test_ddp.py under ``torchrun --nproc-per-node 2``: DDP training (gloo, CPU) through create_loader.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py CACHE OUT CASES``
CASES: comma-separated ``POLICY:BATCH`` (e.g. ``PARTIAL:8,FILL:8``). Every label of the test dataset is its
image's index, so the labels a rank trains on say which images it saw. Per case each rank writes
``OUT/<policy>-<batch>-rank<r>.json``: ``len`` (len(loader)), ``epochs`` (the labels of every batch of each
epoch), ``params`` (the model's parameter sums after training, equal on every rank when DDP kept them in
sync), ``warnings`` and ``error`` (a DaliAbsError raised by create_loader, as its text).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

EPOCHS = 2


def run_case(cache: str, out: Path, policy: str, batch: int) -> None:
    from dali_abs.errors import DaliAbsError
    from dali_abs.loader.iterator import create_loader

    rank = dist.get_rank()
    record: dict = {"rank": rank, "world": dist.get_world_size()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loader = create_loader(cache, batch_size=batch, size=16, device="cpu", num_threads=1,
                                   last_batch_policy=policy, seed=0)
        except DaliAbsError as e:
            loader, record["error"] = None, str(e)
    record["warnings"] = [str(w.message) for w in caught]
    if loader is not None:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 101)))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        record["len"] = len(loader)
        record["epochs"] = []
        for _ in range(EPOCHS):
            seen = []
            for b in loader:
                x, y = b[0]["images"], b[0]["labels"].reshape(-1)
                # a sum over the batch divided by the batch size: an empty batch (PARTIAL) adds nothing
                loss = nn.functional.cross_entropy(model(x), y, reduction="sum") / batch
                opt.zero_grad()
                loss.backward()  # DDP's all-reduce: a rank with fewer batches would hang here
                opt.step()
                seen.append(y.tolist())
            record["epochs"].append(seen)
        record["params"] = [float(p.detach().double().sum()) for p in model.parameters()]
    (out / f"{policy}-{batch}-rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()


def main() -> None:
    cache, out, cases = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        for case in cases.split(","):
            policy, batch = case.split(":")
            run_case(cache, out, policy, int(batch))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
