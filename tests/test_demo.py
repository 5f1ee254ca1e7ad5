"""The demo's numbers repeat: its torch training does not depend on the caller's thread count."""

from __future__ import annotations

import torch

from dali_abs import demo
from dali_abs.dataset import load_dataset
from dali_abs.swap.config import SwapConfig


def test_demo_classifier_training_repeats_whatever_the_thread_count(tmp_path, tiny_cache, tiny_dataset, monkeypatch):
    # torch sums in a thread-count-dependent order: unpinned, 1 and 2 threads give other weights
    monkeypatch.setattr(demo, "EPOCHS", 2)
    ds = load_dataset(tiny_dataset)
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"threads{threads}.json"
            demo._train_classifier(tiny_cache, ds, SwapConfig(tight=0.8), out)
            weights.append(torch.load(out.with_suffix(".pt"), weights_only=True))
            assert torch.get_num_threads() == threads  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
