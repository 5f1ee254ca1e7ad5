"""``create_loader``: the drop-in DALI iterator for PyTorch training with background swapping.

::

    loader = dali_abs.create_loader("cache", batch_size=64, size=224, device="gpu")
    for epoch in range(epochs):
        for batch in loader:                      # a list with one dict per pipeline
            images = batch[0]["images"]           # float32 NCHW, normalised (ImageNet mean/std)
            labels = batch[0]["labels"]           # int64 [B]
            ...

It returns DALI's own ``DALIGenericIterator`` (``len()``, epochs, ``reset()``,
``last_batch_policy``, ``auto_reset``, ``reader_name``), so everything you know of it holds.
Under ``torch.distributed`` it shards by rank and world size, so DDP sees each image once per
epoch; every rank draws its own swaps, crops and flips (:func:`augment_seed`) and, on the GPU,
uses the device of :func:`dali_abs.devices.local_device` (LOCAL_RANK among the visible GPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from dali_abs.cache.format import Cache, open_cache
from dali_abs.dataset import Columns, Dataset, load_dataset
from dali_abs.errors import DaliAbsError
from dali_abs.loader.ops import READER_NAME, background_swap, cache_reader, normalize_node
from dali_abs.swap.config import DTYPES, AugmentConfig, Normalize, SwapConfig


@dataclass(frozen=True)
class LoaderConfig:
    """Everything :func:`create_loader` needs besides the cache; each field documented once here."""

    batch_size: int = 64
    size: int = 224  # output side in px
    device: str = "gpu"  # "gpu" (DALI mixed decode + CuPy kernel) or "cpu" (the kernel compiled for the CPU)
    split: str = "train"  # dataset split to read
    ids: tuple[str, ...] | None = None  # only these image ids of the split (default: all of it)
    swap: SwapConfig | None = field(default_factory=SwapConfig)  # None: no swapping
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # crop + flip; None: resize only (eval)
    dtype: str = "float32"  # output images: "float32" or "float16"
    shuffle: bool = True  # reshuffle every epoch (fn.readers.file shuffle_after_epoch)
    seed: int = 0  # same seed, same batches (CPU); each shard's augmentation draws from augment_seed(seed, shard)
    num_threads: int = 2
    device_id: int | None = None  # default (GPU): dali_abs.devices.local_device(), LOCAL_RANK among the visible GPUs
    shard_id: int | None = None  # default: torch.distributed rank, else RANK, else 0
    num_shards: int | None = None  # default: torch.distributed world size, else WORLD_SIZE, else 1
    last_batch_policy: str = "PARTIAL"  # a nvidia.dali.plugin.base_iterator.LastBatchPolicy name
    auto_reset: bool = True
    # Where the swap draws: None = one pass (swap, crop, flip and resize to `size`; the fastest
    # on the CPU and the GPU); an int S = an S x S composite (images stretched over it), then
    # DALI's own random resized crop and flip.
    compose_size: int | None = None
    prefetch_queue_depth: int = 2
    output_map: tuple[str, str] = ("images", "labels")
    # At open, compare every cache file with the SHA-256 its manifest holds (reads the cache once;
    # README: Bad input). False: sizes, grid and plan only, for a cache you just verified.
    check_cache: bool = True


def _dist_defaults(cfg: LoaderConfig) -> tuple[int, int]:
    shard, shards = cfg.shard_id, cfg.num_shards
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            shard = dist.get_rank() if shard is None else shard
            shards = dist.get_world_size() if shards is None else shards
    except ImportError:
        pass
    shard = int(os.environ.get("RANK", 0)) if shard is None else shard
    shards = int(os.environ.get("WORLD_SIZE", 1)) if shards is None else shards
    if not 0 <= shard < shards:
        raise DaliAbsError(f"shard_id must be in [0, {shards}), got {shard}")
    return shard, shards


def augment_seed(seed: int, shard_id: int) -> int:
    """Seed of shard ``shard_id``'s swap, crop and flip draws: ``seed`` on shard 0, another on every
    other shard, so DDP ranks do not draw the same augmentation for the same batch index. The
    reader keeps ``seed`` on every shard: all shards must shuffle alike to split one order."""
    if shard_id == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(shard_id)]).generate_state(1)[0] >> 1)  # 31 bits


def _device_id(cfg: LoaderConfig) -> int | None:
    from dali_abs.devices import local_device

    if cfg.device_id is not None or cfg.device != "gpu":
        return cfg.device_id
    device_id = local_device()
    if device_id is None:
        raise DaliAbsError(f"device='gpu', but CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides "
                           "every GPU; unset it, or use device='cpu'")
    return device_id


def _check_gpu(cfg: LoaderConfig, device_id: int | None) -> None:
    """Before the first batch: torch's CUDA (DALI's iterator allocates CUDA tensors) and, with a
    swap, CuPy with NVRTC (the compositing kernel), each with what to install."""
    from dali_abs.devices import gpu_loader_problems

    problems = gpu_loader_problems(swap=cfg.swap is not None)
    if problems:
        raise DaliAbsError("create_loader(device='gpu') cannot run here: " + "; ".join(problems)
                           + ". Or use device='cpu'")
    import torch

    if device_id is not None and not 0 <= device_id < torch.cuda.device_count():
        raise DaliAbsError(f"device_id {device_id} is not one of the {torch.cuda.device_count()} GPU(s) this process "
                           f"sees (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, LOCAL_RANK="
                           f"{os.environ.get('LOCAL_RANK')!r}); pass device_id= or fix the launcher's settings")


def split_rows(cache: Cache, ds: Dataset, split: str, ids=None) -> list[int]:
    """The cache rows of ``split`` of ``ds`` (only those of ``ids`` when given), in cache order. Raises
    :class:`DaliAbsError` for ids outside the split and for images of it the cache lacks without having
    skipped them (a stale cache)."""
    split_ids = {s.id for s in ds.split(split)}
    if ids is not None:
        unknown = sorted(set(ids) - split_ids)
        if unknown:
            raise DaliAbsError(f"ids not in split {split!r} of {ds.root}: {', '.join(unknown[:5])}"
                               + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        split_ids = set(ids)
    rows = [i for i, sid in enumerate(cache.ids) if sid in split_ids]
    missing = split_ids - set(cache.ids)
    skipped = {s.get("id") for s in cache.manifest.get("skipped", [])}
    unexplained = sorted(missing - skipped)
    if unexplained:
        raise DaliAbsError(f"{cache.root}: {len(unexplained)} image(s) of split {split!r} are not in the cache "
                           f"(e.g. {', '.join(unexplained[:3])}); rebuild it with `dali-abs precompute`")
    if not rows:
        raise DaliAbsError(f"{cache.root}: no cached images in split {split!r}")
    return rows


def check_fresh(cache: Cache, ds: Dataset) -> None:
    """Raise :class:`DaliAbsError` when ``ds`` changed since ``cache`` was built from it."""
    fp = cache.manifest.get("dataset", {}).get("fingerprint")
    if fp is not None and fp != ds.fingerprint():
        raise DaliAbsError(
            f"{cache.root}: the cache is stale: dataset {ds.root} changed since it was built "
            f"(fingerprint {fp} -> {ds.fingerprint()}). Rebuild it with `dali-abs precompute {ds.root} "
            f"--segmenter ... --inpainter ... --out {cache.root}`; `dali-abs cache verify {cache.root} "
            f"--data {ds.root}` lists what changed.")


def _check(cache: Cache, ds: Dataset, cfg: LoaderConfig, rows: list[int], shards: int) -> None:
    check_fresh(cache, ds)
    per_shard = len(rows) // shards
    if cfg.batch_size > per_shard:
        raise DaliAbsError(f"batch_size {cfg.batch_size} is larger than the {per_shard} images of each of "
                           f"{shards} shard(s) of split {cfg.split!r}; use a smaller batch")
    if cfg.swap is not None:
        labels = {int(cache.labels[r]) for r in rows}
        if cfg.swap.background in ("other_class",) and len(labels) < 2:
            raise DaliAbsError(f"background policy 'other_class' needs at least 2 classes; split {cfg.split!r} "
                               f"has {len(labels)}")
        if cfg.swap.background == "other_group" and not ds.has_groups:
            raise DaliAbsError(f"background policy 'other_group' needs groups (a 'place' column in "
                               f"metadata.csv); {ds.root} has none")
        check_loose(cache, cfg.swap)


def check_loose(cache: Cache, swap: SwapConfig) -> None:
    """Raise :class:`DaliAbsError` when ``swap`` fills from the cache below the fill threshold it was built with."""
    loose = swap.loose
    if swap.fill == "cached" and loose is not None and loose < cache.fill_threshold:
        raise DaliAbsError(f"SwapConfig(loose={loose}) is below the fill threshold {cache.fill_threshold} "
                           f"{cache.root} was built with: the cells in between were never filled and would show "
                           f"the placeholder; use loose >= {cache.fill_threshold}, or rebuild the cache with "
                           f"`dali-abs precompute ... --fill-threshold {loose}`")


def _check_last_batch(n: int, shards: int, batch: int, policy: str) -> None:
    """Uneven shards whose smaller ones are whole batches: DALI (``pad_last_batch``) pads every shard to
    the larger ones' batch count, one batch more than the smaller shards fill. Under DROP its iterator
    then serves that padding batch at the start of the next epoch (duplicates; DALI 2.4): refused.
    Under PARTIAL it is an empty batch on those ranks: warned (a mean loss over it is NaN)."""
    if shards < 2 or n % shards == 0 or (n // shards) % batch:
        return
    small = n // shards
    what = (f"{n} images over {shards} shards and batch_size {batch}: the shards of {small} images are "
            f"{small // batch} whole batches and DALI pads every shard to {small // batch + 1}")
    if policy == "DROP":
        raise DaliAbsError(f"last_batch_policy DROP with {what}, and its iterator would serve the padding batch at "
                           f"the start of the next epoch (images twice, DALI 2.4). Use a batch_size that does not "
                           f"divide {small}, or last_batch_policy PARTIAL or FILL")
    if policy == "PARTIAL":
        import warnings

        warnings.warn(f"last_batch_policy PARTIAL with {what}: a rank reading such a shard gets an empty last batch "
                      "each epoch. A mean loss over it is NaN (and DDP spreads it to every rank): divide a summed "
                      f"loss by the batch size instead, or use a batch_size that does not divide {small}",
                      stacklevel=4)


def _compose_side(cfg: LoaderConfig) -> int | None:
    c = cfg.compose_size
    if c is None:
        return None
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 2:
        raise DaliAbsError(f"compose_size must be None or a side of at least 2 px, got {c!r}")
    return int(c)


def build_pipeline(cache: Cache, ds: Dataset, cfg: LoaderConfig):
    """The DALI pipeline behind :func:`create_loader` (exposed for inspection and benchmarks)."""
    from nvidia.dali import fn, pipeline_def, types

    if cfg.device not in ("cpu", "gpu"):
        raise DaliAbsError(f"device must be 'cpu' or 'gpu', got {cfg.device!r}")
    if cfg.dtype not in DTYPES:
        raise DaliAbsError(f"dtype must be {' or '.join(map(repr, DTYPES))}, got {cfg.dtype!r}")
    shard, shards = _dist_defaults(cfg)
    rows = split_rows(cache, ds, cfg.split, cfg.ids)
    _check(cache, ds, cfg, rows, shards)
    policy = getattr(cfg.last_batch_policy, "name", cfg.last_batch_policy)
    _check_last_batch(len(rows), shards, cfg.batch_size, str(policy).upper())
    if cfg.shuffle or cfg.swap is not None:
        # shuffle_after_epoch leaves the first epoch in file order (class-sorted in an ImageFolder),
        # and in-batch pairing needs mixed batches: start from a seeded permutation.
        rows = [rows[i] for i in np.random.default_rng(cfg.seed).permutation(len(rows))]
    groups = np.full(len(cache), -1, np.int32)
    if ds.has_groups:
        by_id = ds.by_id()
        groups = np.array([ds.group(by_id[sid]) if sid in by_id else -1 for sid in cache.ids], np.int32)

    gpu = cfg.device == "gpu"
    device_id = _device_id(cfg)
    batches_per_epoch = -(-len(rows) // shards // cfg.batch_size)
    compose = _compose_side(cfg)
    seed = augment_seed(cfg.seed, shard)  # the pipeline's seed: DALI's own crop and flip draw from it

    @pipeline_def(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=cfg.prefetch_queue_depth)
    def pipe():
        s = cache_reader(cache, rows, data_root=ds.root, groups=groups, fill_device="mixed" if gpu else "cpu",
                         shard_id=shard, num_shards=shards, shuffle_after_epoch=cfg.shuffle, seed=cfg.seed,
                         pad_last_batch=True, name=READER_NAME)
        images = fn.decoders.image(s.jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        aug = cfg.augment
        norm = Normalize.imagenet(cfg.dtype)
        if cfg.swap is not None and compose is None:
            # one pass: swap, random resized crop, flip, resize to the output size and normalise
            images = background_swap(images, s, cfg.swap, size=cfg.size, augment=aug, device=cfg.device,
                                     seed=seed, batches_per_epoch=batches_per_epoch, normalize=norm)
        else:  # DALI's own crop and flip: after a composite of compose x compose, or the plain pipeline
            if cfg.swap is not None:
                images = background_swap(images, s, cfg.swap, size=compose, device=cfg.device, seed=seed,
                                         batches_per_epoch=batches_per_epoch)
            if aug is not None and aug.random_resized_crop:
                images = fn.random_resized_crop(images, size=[cfg.size, cfg.size], random_area=list(aug.area),
                                                random_aspect_ratio=list(aug.ratio), antialias=False)
            else:
                images = fn.resize(images, size=[cfg.size, cfg.size], interp_type=types.INTERP_LINEAR,
                                   antialias=False)
            mirror = fn.random.coin_flip(probability=aug.flip) if aug is not None and aug.flip > 0 else 0
            images = normalize_node(images, norm, mirror=mirror)
        labels = s.labels.gpu() if gpu else s.labels
        return images, labels

    return pipe()


def check_overrides(what: str, config_type: type, overrides: dict) -> None:
    """Raise :class:`DaliAbsError` naming the keyword ``overrides`` of ``what`` (e.g. "create_loader")
    that are no field of the dataclass ``config_type``."""
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise DaliAbsError(f"{what} got unknown option(s) {', '.join(unknown)}; {config_type.__name__} has "
                           f"{', '.join(sorted(known))}")


def open_inputs(cache: str | os.PathLike | Cache, data: str | os.PathLike | Dataset | None = None,
                columns: Columns | None = None, allow_outside: bool | None = None,
                hashes: bool = True) -> tuple[Cache, Dataset]:
    """The cache and the dataset, each a folder or already opened (then used as given).

    ``data`` None: the folder the cache was built from. ``columns``: the dataset's column names
    (default: the standard ones). ``allow_outside`` None: as the cache was built. ``hashes``: check
    the cache files' SHA-256 (:func:`~dali_abs.cache.format.open_cache`); an opened cache whose
    hashes were not checked is opened again to check them. Freshness is the caller's to check
    (:func:`check_fresh`).
    """
    if not isinstance(cache, Cache) or (hashes and not cache.hashes_checked):
        cache = open_cache(cache if not isinstance(cache, Cache) else cache.root, hashes=hashes)
    if isinstance(data, Dataset):
        return cache, data
    if allow_outside is None:
        allow_outside = bool(cache.manifest["dataset"].get("allow_outside"))
    ds = load_dataset(Path(data) if data is not None else cache.data_root,
                      columns if columns is not None else Columns(), allow_outside=allow_outside)
    return cache, ds


def create_loader(cache: str | os.PathLike | Cache, data: str | os.PathLike | Dataset | None = None,
                  config: LoaderConfig | None = None, **overrides):
    """A ``DALIGenericIterator`` over the cached dataset with background swapping.

    ``cache``: a cache folder (``dali-abs precompute``) or an opened :class:`Cache`.
    ``data``: the dataset folder (default: the one the cache was built from).
    ``config`` / ``overrides``: any :class:`LoaderConfig` field, e.g.
    ``create_loader("cache", batch_size=128, size=224, device="cpu", swap=SwapConfig(p=0.5))``.
    Bad settings, stale caches and damaged ones (files missing, truncated or changed since the
    precompute, an edited manifest) raise :class:`~dali_abs.errors.DaliAbsError` before the first batch.
    """
    from dataclasses import replace

    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    check_overrides("create_loader", LoaderConfig, overrides)
    cfg = replace(config or LoaderConfig(), **overrides)
    cache, ds = open_inputs(cache, data, hashes=cfg.check_cache)
    try:
        policy = LastBatchPolicy[cfg.last_batch_policy] if isinstance(cfg.last_batch_policy, str) \
            else LastBatchPolicy(cfg.last_batch_policy)
    except (KeyError, ValueError):
        raise DaliAbsError(f"last_batch_policy must be one of {', '.join(p.name for p in LastBatchPolicy)}, "
                           f"got {cfg.last_batch_policy!r}") from None
    if cfg.device == "gpu":
        _check_gpu(cfg, _device_id(cfg))
    pipe = build_pipeline(cache, ds, cfg)
    return DALIGenericIterator([pipe], output_map=list(cfg.output_map), reader_name=READER_NAME,
                               last_batch_policy=policy, auto_reset=cfg.auto_reset)
