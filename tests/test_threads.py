import pytest
import torch

from dali_abs.threads import torch_threads


def test_torch_threads_sets_and_restores_also_on_error():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_torch_threads_none_leaves_the_count():
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
