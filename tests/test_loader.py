"""The DALI loader end to end on CPU: real cache, real DALI pipeline, torch tensors out."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from dali_abs.cache.format import open_cache
from dali_abs.dataset import load_dataset
from dali_abs.errors import DaliAbsError
from dali_abs.loader.iterator import create_loader
from dali_abs.swap.config import SwapConfig


def _epoch(loader):
    images, labels = [], []
    for batch in loader:
        images.append(batch[0]["images"])
        labels.append(batch[0]["labels"])
    return torch.cat(images), torch.cat(labels)


def test_one_epoch_yields_every_training_image_once_as_nchw_tensors(tiny_cache, tiny_dataset):
    loader = create_loader(tiny_cache, batch_size=32, size=48, device="cpu", seed=1)
    n_train = len(load_dataset(tiny_dataset).split("train"))
    assert len(loader) == -(-n_train // 32)
    images, labels = _epoch(loader)
    assert images.shape == (n_train, 3, 48, 48) and images.dtype == torch.float32
    assert labels.shape == (n_train,) and labels.dtype == torch.int64
    assert sorted(torch.bincount(labels).tolist()) == [80, 80]
    assert -3 < float(images.mean()) < 3  # normalised, not 0..255
    # auto_reset: a second epoch works without reset()
    assert _epoch(loader)[0].shape[0] == n_train


def test_same_seed_same_batches(tiny_cache):
    a = _epoch(create_loader(tiny_cache, batch_size=32, size=32, device="cpu", seed=5))
    b = _epoch(create_loader(tiny_cache, batch_size=32, size=32, device="cpu", seed=5))
    c = _epoch(create_loader(tiny_cache, batch_size=32, size=32, device="cpu", seed=6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_batches_do_not_change_with_the_prefetch_depth(tiny_cache):
    """The compositing op writes every batch into one reused buffer: DALI must have copied the
    previous batch out of it, or batches waiting in a deeper prefetch queue would change."""
    a = _epoch(create_loader(tiny_cache, batch_size=16, size=32, device="cpu", seed=5, prefetch_queue_depth=1))
    b = _epoch(create_loader(tiny_cache, batch_size=16, size=32, device="cpu", seed=5, prefetch_queue_depth=4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("compose_size, size", [(None, 96), (64, 96), (None, 64)],
                         ids=["fused-upsample", "compose-64", "fused-same-size"])
def test_no_swap_is_the_plain_pipeline_and_swap_changes_images(tiny_cache, compose_size, size):
    plain = dict(batch_size=32, size=size, device="cpu", seed=2, augment=None, shuffle=True, compose_size=compose_size)
    a = _epoch(create_loader(tiny_cache, swap=None, **plain))
    b = _epoch(create_loader(tiny_cache, swap=SwapConfig(p=0.0), **plain))
    c = _epoch(create_loader(tiny_cache, swap=SwapConfig(p=1.0, translate=0.0), **plain))
    # 64 px images resized to 96: our bilinear resampling and DALI's agree within 1 LSB
    # (= 1/(255 * std) after normalising); through a 64 px composite, exactly
    tol = 0.0 if compose_size is not None or size == 64 else 1.01 / (255 * 0.224)
    assert float((a[0] - b[0]).abs().max()) <= tol
    changed = (a[0] != c[0]).flatten(1).any(1).float().mean()
    assert changed > 0.5


def test_float16_and_eval_split(tiny_cache):
    loader = create_loader(tiny_cache, batch_size=16, size=32, device="cpu", split="test", swap=None,
                           augment=None, dtype="float16", shuffle=False)
    images, labels = _epoch(loader)
    assert images.dtype == torch.float16 and images.shape[0] == 64


def test_shards_are_disjoint_and_cover_the_split(tiny_cache):
    seen = []
    for shard in range(2):
        loader = create_loader(tiny_cache, batch_size=16, size=32, device="cpu", shard_id=shard, num_shards=2,
                               swap=None, augment=None, shuffle=False, last_batch_policy="DROP")
        assert len(loader) == 5
        seen.append(_epoch(loader)[0])
    # Without augmentation, each image appears once: no row of shard 0 equals a row of shard 1.
    a, b = (x.flatten(1) for x in seen)
    assert not any(torch.equal(a[i], b[j]) for i in range(0, len(a), 7) for j in range(len(b)))


def test_user_pipeline_with_the_operators(tiny_cache):
    """Decoded images of different sizes go straight into background_swap, which outputs one size."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import background_swap, cache_reader

    cache = open_cache(tiny_cache)

    @pipeline_def(batch_size=8, num_threads=2, device_id=None, seed=0)
    def pipe(size):
        s = cache_reader(cache, random_shuffle=True, seed=0)
        images = fn.decoders.image(s.jpegs, device="cpu", output_type=types.RGB)
        images = fn.resize(images, size=fn.random.uniform(range=[40, 90], shape=[2]))  # ragged batch
        images = background_swap(images, s, SwapConfig(), size=size, device="cpu", seed=0)
        return images, s.labels

    p = pipe(56)
    p.build()
    images, labels = p.run()
    assert images.as_array().shape == (8, 56, 56, 3) and images.as_array().dtype == np.uint8
    with pytest.raises(DaliAbsError, match=r"size must be a positive int S or a pair \(H, W\) of them, got \(1, 2, 3\)"):
        pipe((1, 2, 3))
    with pytest.raises(DaliAbsError, match=r"background_swap needs size=S \(or \(H, W\)\)"):
        pipe(None)  # the parameters are drawn before the images are decoded: the canvas must be known


def test_a_bad_normalize_is_refused_before_background_swap_makes_any_op(tiny_cache):
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import background_swap, cache_reader

    cache, made = open_cache(tiny_cache), []

    @pipeline_def(batch_size=8, num_threads=1, device_id=None, seed=0)
    def pipe():
        s = cache_reader(cache, seed=0)
        made.append(s)
        images = fn.decoders.image(s.jpegs, device="cpu", output_type=types.RGB)
        return background_swap(images, s, SwapConfig(), size=32, device="cpu", normalize="imagenet")

    with pytest.raises(DaliAbsError, match="normalize must be None or a Normalize, got str"):
        pipe()
    assert made[0]._nodes == {}  # no labels node left behind for a later, corrected call to pick up


@pytest.mark.parametrize("labels_first", [False, True], ids=["after-swap", "before-swap"])
def test_labels_are_the_cache_rows_labels_whoever_gives_them(tiny_cache, labels_first):
    """s.labels is the swap op's output when first used after background_swap (no lookup op),
    the lookup op's when used before: the cache's labels of the batch's rows either way."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import background_swap, cache_reader

    cache = open_cache(tiny_cache)

    @pipeline_def(batch_size=8, num_threads=2, device_id=None, seed=0)
    def pipe():
        s = cache_reader(cache, random_shuffle=True, seed=0)
        early = s.labels if labels_first else None
        images = fn.decoders.image(s.jpegs, device="cpu", output_type=types.RGB)
        images = background_swap(images, s, SwapConfig(), size=32, device="cpu", seed=0)
        assert (s.labels is early) == labels_first
        return images, s.labels, s.rows

    p = pipe()
    p.build()
    for _ in range(3):
        _, labels, rows = p.run()
        rows = np.array([int(np.asarray(rows[i]).reshape(-1)[0]) for i in range(8)])
        got = np.array([int(np.asarray(labels[i])) for i in range(8)])
        assert np.asarray(labels[0]).shape == () and np.array_equal(got, cache.labels[rows])


def test_resampling_matches_dali_resize(tiny_cache):
    """Without swap, crop or flip the fused pass is DALI's linear resize (no antialias), within 1 LSB."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import background_swap, cache_reader

    cache = open_cache(tiny_cache)

    @pipeline_def(batch_size=16, num_threads=2, device_id=None, seed=0)
    def pipe():
        s = cache_reader(cache, seed=0)
        images = fn.decoders.image(s.jpegs, device="cpu", output_type=types.RGB)
        ours = background_swap(images, s, SwapConfig(p=0.0), size=(96, 80), device="cpu")
        dali = fn.resize(images, size=[96, 80], interp_type=types.INTERP_LINEAR, antialias=False)
        return ours, dali

    p = pipe()
    p.build()
    ours, dali = (o.as_array().astype(int) for o in p.run())
    assert ours.shape == dali.shape == (16, 96, 80, 3)
    assert np.abs(ours - dali).max() <= 1


def test_bad_settings_fail_before_the_first_batch(tiny_cache, tiny_dataset, tmp_path):
    with pytest.raises(DaliAbsError, match="batch_size 500 is larger than the 160 images"):
        create_loader(tiny_cache, batch_size=500, device="cpu")
    with pytest.raises(DaliAbsError, match="last_batch_policy must be one of"):
        create_loader(tiny_cache, batch_size=8, device="cpu", last_batch_policy="SOMETIMES")
    with pytest.raises(DaliAbsError, match="device must be 'cpu' or 'gpu'"):
        create_loader(tiny_cache, batch_size=8, device="tpu")
    with pytest.raises(DaliAbsError, match="compose_size must be None or a side of at least 2 px, got 'big'"):
        create_loader(tiny_cache, batch_size=8, device="cpu", compose_size="big")
    with pytest.raises(DaliAbsError, match="unknown option.*compose_sise.*LoaderConfig has"):
        create_loader(tiny_cache, batch_size=8, device="cpu", compose_sise=64)
    with pytest.raises(DaliAbsError, match=r"loose=0.05\) is below the fill threshold 0\.\d+ .* never filled"):
        create_loader(tiny_cache, batch_size=8, device="cpu", swap=SwapConfig(loose=0.05))
    # A changed dataset: the cache is stale and says which command rebuilds it.
    copy = tmp_path / "data"
    shutil.copytree(tiny_dataset, copy)
    first = load_dataset(copy).samples[0]
    first.path.write_bytes(first.path.read_bytes() + b"\0")
    with pytest.raises(DaliAbsError, match=r"cache is stale.*dali-abs precompute"):
        create_loader(tiny_cache, copy, batch_size=8, device="cpu")


def test_ids_select_a_subset_of_the_split(tiny_cache, tiny_dataset):
    ds = load_dataset(tiny_dataset)
    ids = tuple(s.id for s in ds.split("test") if ds.group(s) in ds.majority_groups())
    loader = create_loader(tiny_cache, batch_size=8, size=32, device="cpu", split="test", ids=ids, swap=None,
                           augment=None)
    assert _epoch(loader)[0].shape[0] == len(ids) == 32
    with pytest.raises(DaliAbsError, match=r"ids not in split 'test'.*nope"):
        create_loader(tiny_cache, batch_size=8, device="cpu", split="test", ids=("nope",))


def test_a_p_schedule_follows_the_readers_epochs_in_a_users_pipeline(tiny_cache):
    """In a user's own pipeline_def the swap counts epochs from the reader (96 rows, batch 32,
    pad_last_batch: 3 batches an epoch), so a linear schedule from 0 to 1 over 2 epochs swaps
    nothing in epoch 0, about half in epoch 1 and everything from epoch 2; the parameters are
    a CPU data node anyone can read."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import background_swap, cache_reader, swap_parameters
    from dali_abs.swap.signature import sample_dtype

    cache = open_cache(tiny_cache)
    cfg = SwapConfig(p=1.0, p_start=0.0, p_schedule="linear", schedule_epochs=2, background="other_class")

    @pipeline_def(batch_size=32, num_threads=2, device_id=None, seed=0)
    def pipe():
        s = cache_reader(cache, rows=range(96), random_shuffle=True, seed=0, pad_last_batch=True)
        images = fn.decoders.image(s.jpegs, device="cpu", output_type=types.RGB)
        params = swap_parameters(s, cfg, size=32, seed=4)
        return params, background_swap(images, s, cfg, size=32, params=params)

    p = pipe()
    p.build()
    rate = []
    for _ in range(9):
        params, images = p.run()
        rec = np.stack([np.asarray(params[i]) for i in range(32)]).view(sample_dtype(cache.grid)).reshape(32)
        assert images.as_array().shape == (32, 32, 32, 3)
        rate.append(float(rec["swap"].mean()))
    per_epoch = [float(np.mean(rate[e * 3:(e + 1) * 3])) for e in range(3)]
    assert per_epoch[0] == 0.0 and 0.3 < per_epoch[1] < 0.7 and per_epoch[2] == 1.0, rate


# --- data parallelism: one shared reader order, augmentation drawn per shard ---------------------

def _hashes(images):
    return [bytes(x.numpy().tobytes()) for x in images]


def test_shuffled_shards_split_one_order_every_epoch(tiny_cache):
    """The reader's seed is the same on every shard, so two shards read each image once per epoch."""
    plain = dict(batch_size=16, size=32, device="cpu", swap=None, augment=None, shuffle=True, seed=4)
    whole = create_loader(tiny_cache, **plain)
    shards = [create_loader(tiny_cache, shard_id=i, num_shards=2, **plain) for i in range(2)]
    for _ in range(2):  # the second epoch is reshuffled (shuffle_after_epoch) alike on both shards
        everything = _hashes(_epoch(whole)[0])
        parts = [_hashes(_epoch(s)[0]) for s in shards]
        assert len(parts[0]) == len(parts[1]) == 80
        assert sorted(parts[0] + parts[1]) == sorted(everything) and len(set(everything)) == 160


@pytest.fixture(scope="module")
def copies_cache(tmp_path_factory, tiny_dataset, tiny_models):
    """A cache of 32 byte-identical images of one class: every shard reads the same data."""
    from dali_abs.cache.precompute import PrecomputeConfig, precompute

    root = tmp_path_factory.mktemp("copies")
    first = load_dataset(tiny_dataset).split("train")[0].path
    (root / "data" / "train" / "bird").mkdir(parents=True)
    for i in range(32):
        shutil.copyfile(first, root / "data" / "train" / "bird" / f"{i:02d}{first.suffix}")
    precompute(load_dataset(root / "data"), *tiny_models, root / "cache", PrecomputeConfig(device="cpu"),
               progress=False)
    return root / "cache"


@pytest.mark.parametrize("compose_size", [None, 48], ids=["fused", "compose-48"])
def test_every_shard_draws_its_own_swap_crop_and_flip(copies_cache, compose_size):
    """Same inputs on two shards (identical images): only the augmentation seed can tell them apart."""
    opts = dict(batch_size=8, size=32, device="cpu", num_shards=2, seed=3, compose_size=compose_size)
    a0, a0_again, a1 = (_epoch(create_loader(copies_cache, shard_id=i, **opts))[0] for i in (0, 0, 1))
    assert torch.equal(a0, a0_again)  # a shard repeats itself
    differ = (a0 != a1).flatten(1).any(1).float().mean()
    assert differ > 0.5, f"shards 0 and 1 drew the same augmentation for {1 - float(differ):.0%} of the samples"


def test_augment_seed_is_the_seed_on_shard_0_and_distinct_on_the_others():
    from dali_abs.loader.iterator import augment_seed

    assert augment_seed(7, 0) == 7  # one process: the batches of before
    seeds = [augment_seed(7, i) for i in range(256)]
    assert len(set(seeds)) == 256 and all(0 <= s < 2 ** 31 for s in seeds)
    assert augment_seed(7, 5) == augment_seed(7, 5) != augment_seed(8, 5)


# --- layouts and the GPU path ---------------------------------------------------------------------

def test_swap_output_declares_hwc(tiny_cache):
    """The GPU crop_mirror_normalize refuses an input without a layout; the swap declares HWC (on
    either device: the operator is built by one call)."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import background_swap, cache_reader

    cache = open_cache(tiny_cache)

    @pipeline_def(batch_size=4, num_threads=2, device_id=None, seed=0)
    def pipe():
        s = cache_reader(cache, seed=0)
        images = fn.decoders.image(s.jpegs, device="cpu", output_type=types.RGB)
        swapped = background_swap(images, s, SwapConfig(), size=32, device="cpu")
        return swapped, fn.crop_mirror_normalize(swapped, output_layout="CHW")

    p = pipe()
    p.build()
    swapped, normalised = p.run()
    assert swapped.layout() == "HWC" and normalised.layout() == "CHW"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_normalising_in_the_swap_op_gives_crop_mirror_normalizes_bytes(tiny_cache, dtype):
    """background_swap(normalize=...) on the CPU normalises in its own op (what create_loader uses);
    the result is the same bytes as DALI's crop_mirror_normalize after it, with layout CHW."""
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import background_swap, cache_reader, normalize_node, swap_parameters
    from dali_abs.swap import Normalize

    cache = open_cache(tiny_cache)
    norm = Normalize.imagenet(dtype)

    @pipeline_def(batch_size=8, num_threads=2, device_id=None, seed=0)
    def pipe():
        s = cache_reader(cache, seed=0)
        images = fn.decoders.image(s.jpegs, device="cpu", output_type=types.RGB)
        params = swap_parameters(s, SwapConfig.waterbirds(), size=40, seed=3)
        fused = background_swap(images, s, SwapConfig.waterbirds(), size=40, params=params, normalize=norm)
        plain = background_swap(images, s, SwapConfig.waterbirds(), size=40, params=params)
        return fused, normalize_node(plain, norm)

    p = pipe()
    p.build()
    for _ in range(2):
        fused, reference = p.run()
        a, b = fused.as_array(), reference.as_array()
        assert fused.layout() == "CHW" and a.shape == (8, 3, 40, 40) and a.dtype == np.dtype(dtype)
        assert a.tobytes() == b.tobytes()


def test_normalize_options_are_checked():
    from dali_abs.swap import Normalize, SwapError

    assert Normalize.imagenet().mean == tuple(m * 255 for m in (0.485, 0.456, 0.406))
    with pytest.raises(SwapError, match=r"Normalize.std must be positive, got \(1, 0, 1\)"):
        Normalize((0, 0, 0), (1, 0, 1))
    with pytest.raises(SwapError, match="Normalize.dtype must be one of float32, float16; got 'int8'"):
        Normalize((0, 0, 0), (1, 1, 1), "int8")
    with pytest.raises(SwapError, match=r"Normalize.mean must be 3 numbers \(R, G, B in 0..255 units\), got \(1, 2\)"):
        Normalize((1, 2), (1, 1, 1))


def _gpu_loader_problems() -> list[str]:
    from dali_abs.devices import gpu_loader_problems

    return gpu_loader_problems()


@pytest.mark.skipif(not _gpu_loader_problems(),
                    reason="the GPU loader can run here (test_gpu_loader_matches_the_cpu_reader runs it)")
def test_gpu_loader_says_what_to_install(tiny_cache, monkeypatch):
    with pytest.raises(DaliAbsError, match=r"create_loader\(device='gpu'\) cannot run here: .*Or use device='cpu'"):
        create_loader(tiny_cache, batch_size=8, device="gpu")
    if torch.version.cuda is None:
        with pytest.raises(DaliAbsError, match=r"CPU-only build.*torch==2\.13\.0\+cu126.*whl/cu126"):
            create_loader(tiny_cache, batch_size=8, device="gpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DaliAbsError, match="CUDA_VISIBLE_DEVICES='' hides every GPU"):
        create_loader(tiny_cache, batch_size=8, device="gpu")


def _dali_torch_cuda_problem() -> str | None:
    """Why the GPU loader test cannot run here (DALI missing, torch without CUDA), or None."""
    import importlib.util

    from dali_abs.devices import torch_problem

    if importlib.util.find_spec("nvidia.dali") is None:
        return "DALI is not installed (pip install nvidia-dali-cuda120)"
    return torch_problem()


@pytest.mark.gpu
@pytest.mark.skipif(_dali_torch_cuda_problem() is not None, reason=str(_dali_torch_cuda_problem()))
def test_gpu_loader_matches_the_cpu_reader(tiny_cache):
    """On a GPU: CUDA tensors of the right shape, and the same labels in the same order as on the CPU."""
    opts = dict(batch_size=16, size=48, seed=2)
    gpu_images, gpu_labels = _epoch(create_loader(tiny_cache, device="gpu", **opts))
    cpu_images, cpu_labels = _epoch(create_loader(tiny_cache, device="cpu", **opts))
    assert gpu_images.is_cuda and gpu_images.shape == cpu_images.shape == (160, 3, 48, 48)
    assert torch.equal(gpu_labels.cpu(), cpu_labels)
    assert -3 < float(gpu_images.mean()) < 3


def test_swap_thresholds_default_to_the_caches_and_the_users_win(tiny_cache):
    """SwapConfig() cuts at the thresholds the cache records; a number the user sets is kept."""
    from dali_abs.loader.ops import swap_thresholds
    from dali_abs.swap.config import SwapError

    rec = open_cache(tiny_cache).thresholds
    assert SwapConfig().tight is None and SwapConfig.waterbirds().tight is None
    assert (swap_thresholds(SwapConfig(), rec).tight, swap_thresholds(SwapConfig(), rec).loose) == (rec.tight, rec.loose)
    mine = swap_thresholds(SwapConfig(tight=0.9), rec)
    assert (mine.tight, mine.loose) == (0.9, rec.loose)
    assert swap_thresholds(SwapConfig.waterbirds(tight=0.67), rec).tight == 0.67
    with pytest.raises(SwapError, match="carry no recorded thresholds"):
        swap_thresholds(SwapConfig(), None)

    kw = dict(batch_size=32, size=48, device="cpu", seed=4, augment=None)
    default = _epoch(create_loader(tiny_cache, swap=SwapConfig(translate=0.0), **kw))[0]
    spelled = _epoch(create_loader(tiny_cache, swap=SwapConfig(translate=0.0, tight=rec.tight, loose=rec.loose),
                                   **kw))[0]
    other = _epoch(create_loader(tiny_cache, swap=SwapConfig(translate=0.0, tight=0.99, loose=rec.loose), **kw))[0]
    assert torch.equal(default, spelled) and not torch.equal(default, other)


def _flip(path, at: int = 1000, n: int = 64):
    raw = bytearray(path.read_bytes())
    raw[at:at + n] = bytes(b ^ 0xFF for b in raw[at:at + n])
    path.write_bytes(bytes(raw))


def _edit_first_label(path):
    """The chunk record with its first image's label changed (the record's label column, version 2)."""
    import re

    text = path.read_text()
    edited = re.sub(r'("label":\{"(?:values|all)":\[?)(\d)', lambda m: m.group(1) + str(1 - int(m.group(2))), text,
                    count=1)
    assert edited != text
    path.write_text(edited)


def _edit_manifest(root, **changes):
    import json

    m = json.loads((root / "manifest.json").read_text())
    m.update(changes)
    (root / "manifest.json").write_text(json.dumps(m))


_DAMAGE = {
    "fills-flipped": ("c00001.fills.bin", lambda d: _flip(d / "chunks" / "c00001.fills.bin")),
    "fills-truncated": ("c00002.fills.bin", lambda d: (d / "chunks" / "c00002.fills.bin").write_bytes(
        (d / "chunks" / "c00002.fills.bin").read_bytes()[:-100])),
    "fills-deleted": ("c00000.fills.bin", lambda d: (d / "chunks" / "c00000.fills.bin").unlink()),
    "masks-flipped": ("c00003.masks.npz", lambda d: _flip(d / "chunks" / "c00003.masks.npz", at=200, n=8)),
    "masks-truncated": ("c00001.masks.npz", lambda d: (d / "chunks" / "c00001.masks.npz").write_bytes(
        (d / "chunks" / "c00001.masks.npz").read_bytes()[:-64])),
    "record-edited": ("c00002.json", lambda d: _edit_first_label(d / "chunks" / "c00002.json")),
    "manifest-grid": ("manifest.json", lambda d: _edit_manifest(d, grid=16)),
    "manifest-fill-threshold": ("manifest.json", lambda d: _edit_manifest(
        d, thresholds={**json_of(d / "manifest.json")["thresholds"], "fill": 0.3})),
}


def json_of(path):
    import json

    return json.loads(path.read_text())


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_a_damaged_cache_is_refused_before_the_first_batch_naming_the_file(tiny_cache, tmp_path, damage):
    from dali_abs.cache.verify import verify

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    name, do = _DAMAGE[damage]
    do(cache)
    with pytest.raises(DaliAbsError, match=rf"{cache}/(chunks/)?{name}: "):
        create_loader(cache, batch_size=16, size=32, device="cpu")
    assert not verify(cache, decode=False)["ok"]  # the same finding as `cache verify`
    if damage == "masks-flipped":  # the deflated masks carry a CRC: caught even without the hashes
        with pytest.raises(DaliAbsError, match=name):
            create_loader(cache, batch_size=16, size=32, device="cpu", check_cache=False)
    if damage in ("fills-flipped", "record-edited"):
        # same sizes: only the hashes see it, and check_cache=False skips them (the documented trade)
        loader = create_loader(cache, batch_size=16, size=32, device="cpu", check_cache=False)
        assert len(loader) == 10
        with pytest.raises(DaliAbsError, match=name):
            create_loader(open_cache(cache, hashes=False), batch_size=16, size=32, device="cpu")


def test_an_intact_cache_opens_with_its_hashes_checked(tiny_cache):
    assert open_cache(tiny_cache).hashes_checked and not open_cache(tiny_cache, hashes=False).hashes_checked
