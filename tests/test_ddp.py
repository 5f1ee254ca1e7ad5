"""DDP for real: ``torchrun --nproc-per-node 2`` (gloo, CPU) through create_loader and precompute.

A split of 101 images (uneven over 2 ranks): every rank gets as many batches as the other, and
per epoch across ranks each image is seen exactly once under PARTIAL, at least once under FILL
(the shard's last sample repeated: DALI's ``pad_last_batch``) and at most once under DROP (what
DALI's LastBatchPolicy promises). Precompute with 2 processes builds the same bytes as with one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WORKER = Path(__file__).with_name("ddp_worker.py")
N = 101
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS``; a hang ends in a timeout, not a stuck suite."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert p.returncode == 0, f"torchrun exited {p.returncode}:\n{p.stderr[-4000:]}"
    return p


@pytest.fixture(scope="module")
def data101(tmp_path_factory) -> Path:
    """101 training images, each its own class (label = image index), so labels say which image was seen."""
    root = tmp_path_factory.mktemp("ddp") / "data"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        arr = np.full((64, 64, 3), rng.integers(0, 120, 3), np.uint8)
        y0, x0 = rng.integers(8, 32, 2)
        arr[y0:y0 + 24, x0:x0 + 24] = rng.integers(130, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        (root / "img" / f"{i:03d}.jpg").write_bytes(buf.getvalue())
        rows.append({"img_id": f"im{i:03d}", "img_filename": f"img/{i:03d}.jpg", "y": i, "split": 0})
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.parent.name != "parts"}


@pytest.fixture(scope="module")
def cache101(tmp_path_factory, data101, tiny_models) -> Path:
    """The cache of ``data101`` built by precompute under torchrun (2 processes), checked byte for byte
    against a single-process build (shard parts aside: they name the shards)."""
    from dali_abs.cache.precompute import PrecomputeConfig, precompute
    from dali_abs.dataset import load_dataset

    seg, fill = tiny_models
    d = tmp_path_factory.mktemp("ddp-cache")
    precompute(load_dataset(data101), seg, fill, d / "single", PrecomputeConfig(chunk_size=16, device="cpu"),
               progress=False)
    torchrun("-m", "dali_abs.cli", "precompute", data101, "--segmenter", seg, "--inpainter", fill,
             "--out", d / "ddp", "--chunk-size", "16", "--device", "cpu", "--json")
    assert sorted(p.name for p in (d / "ddp" / "parts").iterdir()) == ["shard-0-of-2.json", "shard-1-of-2.json"]
    single, ddp = _files(d / "single"), _files(d / "ddp")
    assert len(single) == 2 + 3 * 7  # plan, manifest, 7 chunks x (record, fills, masks)
    assert ddp == single
    return d / "ddp"


def test_precompute_under_torchrun_builds_the_single_process_cache(cache101):
    from dali_abs.cache.format import open_cache

    assert sorted(open_cache(cache101).labels.tolist()) == list(range(N))


def _results(out: Path, case: str) -> list[dict]:
    return [json.loads((out / f"{case}-rank{r}.json").read_text()) for r in range(2)]


def test_ddp_training_sees_each_image_as_the_last_batch_policy_promises(tmp_path, cache101):
    # batch 8: shards of 50 and 51 images, 7 padded batches each
    torchrun(WORKER, cache101, tmp_path, "PARTIAL:8,FILL:8,DROP:8")
    for policy, batches in (("PARTIAL", 7), ("FILL", 7), ("DROP", 6)):
        ranks = _results(tmp_path, f"{policy}-8")
        assert [r.get("error") for r in ranks] == [None, None]
        assert ranks[0]["params"] == ranks[1]["params"]  # the ranks trained in step
        for epoch in range(2):
            per_rank = [r["epochs"][epoch] for r in ranks]
            assert [len(b) for b in per_rank] == [r["len"] for r in ranks] == [batches, batches]
            seen = Counter(y for b in per_rank for batch in b for y in batch)
            if policy == "PARTIAL":  # every image exactly once, the last batches partial
                assert seen == Counter(range(N))
                assert sorted(len(b[-1]) for b in per_rank) == [2, 3]
            elif policy == "FILL":  # every image at least once; the rest repeats a shard's last sample
                assert set(seen) == set(range(N)) and sum(seen.values()) == 2 * 7 * 8
                assert sum(c - 1 for c in seen.values()) == 2 * 7 * 8 - N
            else:  # DROP: full batches only, no image twice
                assert max(seen.values()) == 1 and sum(seen.values()) == 2 * 6 * 8


def test_ddp_uneven_shards_that_fill_whole_batches(tmp_path, cache101):
    # batch 10: the 50-image shard is 5 whole batches, the 51-image one needs a 6th
    torchrun(WORKER, cache101, tmp_path, "PARTIAL:10,DROP:10")
    partial = _results(tmp_path, "PARTIAL-10")
    assert [r["len"] for r in partial] == [6, 6] and partial[0]["params"] == partial[1]["params"]
    for epoch in range(2):
        per_rank = [r["epochs"][epoch] for r in partial]
        assert Counter(y for b in per_rank for batch in b for y in batch) == Counter(range(N))
        assert sorted(len(b[-1]) for b in per_rank) == [0, 1]  # DALI's PARTIAL: an empty batch on one rank
    assert all(any("empty last batch" in w and "NaN" in w for w in r["warnings"]) for r in partial)
    # DROP would serve that rank's padding batch at the start of the next epoch (DALI 2.4): refused
    drop = _results(tmp_path, "DROP-10")
    assert all("last_batch_policy DROP" in (r.get("error") or "") and "batch_size" in r["error"] for r in drop)
