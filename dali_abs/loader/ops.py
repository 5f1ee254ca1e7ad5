"""DALI operators for a user's own ``pipeline_def``: read the cache, swap backgrounds.

Use inside a pipeline, before your own crop / flip / normalise::

    from dali_abs.cache.format import open_cache
    from dali_abs.loader.ops import background_swap, cache_reader
    from dali_abs.loader.params import AugmentConfig, SwapConfig, SwapError

    cache = open_cache("cache")

    @pipeline_def(batch_size=64, num_threads=4, device_id=0)
    def train_pipe():
        s = cache_reader(cache, shard_id=0, num_shards=1, random_shuffle=True, name="Reader")
        images = fn.decoders.image(s.jpegs, device="mixed")
        images = background_swap(images, s, SwapConfig(), size=256, device="gpu", seed=0)
        ...  # your random_resized_crop, flip, crop_mirror_normalize
        return images, s.labels

Data conventions: images entering :func:`background_swap` are uint8 HWC RGB 0..255 of any
sizes (straight from the decoder); it returns uint8 HWC RGB of ``size`` x ``size``. Pass
``augment`` to have the random resized crop and the flip done in the same pass (what
:func:`~dali_abs.loader.iterator.create_loader` does); then only normalising is left. The
soft masks are float32 [R, R] foreground probability (1 = foreground).

Backgrounds are paired **inside the batch**: sample n gets the clean background of another
sample j of the same batch (chosen by the policy in :class:`SwapConfig`), rebuilt from
image j, which is decoded anyway, and j's small cached fill. No second full-image decode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dali_abs.cache.format import Cache
from dali_abs.errors import DaliAbsError
from dali_abs.loader.params import AugmentConfig, SwapConfig, SwapError
from dali_abs.segmenter.thresholds import Thresholds

READER_NAME = "Reader"


@dataclass
class CacheSamples:
    """The data nodes :func:`cache_reader` returns (one entry per sample of a batch).

    - ``jpegs``: encoded source image bytes (decode with ``fn.decoders.image``).
    - ``labels``: int64 class label, shape ().
    - ``rows``: int32 row of the sample in the cache arrays, shape (1,).
    - ``soft``: float32 [R, R] foreground probability.
    - ``fills``: uint8 HWC fill tile, decoded on ``fill_device`` (its own size).
    - ``boxes``: float32 [4] ``(y0, x0, y1, x1)`` in 0..1 image coordinates covered by the fill.
    - ``groups``: int32 group (``y * n_places + place``; -1 without places), shape ().
    - ``thresholds``: not a data node: the cache's recorded tight and loose thresholds
      (:attr:`~dali_abs.cache.format.Cache.thresholds`), which :func:`background_swap` uses
      where its ``SwapConfig`` leaves them None.
    """

    jpegs: object
    labels: object
    rows: object
    soft: object
    fills: object
    boxes: object
    groups: object
    thresholds: Thresholds | None = None


def _blank_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _CacheLookup:
    """Per batch: cache rows -> labels, soft masks, fill bytes, boxes, groups (host-side, NumPy)."""

    def __init__(self, cache: Cache, groups: np.ndarray):
        R = cache.grid
        self.cache = cache
        self.soft = cache.masks.astype(np.float32) / np.float32(255.0)
        self.boxes = cache.boxes.astype(np.float32) / np.float32(R)  # grid cells -> 0..1, (y0, x0, y1, x1)
        self.labels = cache.labels.astype(np.int64)
        self.groups = groups.astype(np.int32)
        self.blank = np.frombuffer(_blank_jpeg(), np.uint8)

    def __call__(self, rows: Sequence[np.ndarray]):
        labels, soft, fills, boxes, groups = [], [], [], [], []
        for r in rows:
            i = int(np.asarray(r).reshape(-1)[0])
            labels.append(np.array(self.labels[i]))
            soft.append(self.soft[i])
            data = self.cache.fill_bytes(i)
            fills.append(self.blank if data is None else np.frombuffer(data, np.uint8))
            boxes.append(self.boxes[i] if data is not None else np.zeros(4, np.float32))
            groups.append(np.array(self.groups[i]))
        return labels, soft, fills, boxes, groups


def cache_reader(cache: Cache, rows: Sequence[int] | None = None, *, data_root: str | None = None,
                 groups: np.ndarray | None = None, fill_device: str = "cpu",
                 name: str = READER_NAME, **reader_kwargs) -> CacheSamples:
    """Read source images and their cache entries, aligned per sample.

    ``rows``: cache rows to read (default all), e.g. one split. ``data_root``: the dataset
    folder (default: the one the cache was built from). ``groups``: int per cache row
    (default -1). ``fill_device``: "cpu" or "mixed" (GPU decoding of the fill tiles).
    ``reader_kwargs`` go to ``fn.readers.file`` (``shard_id``, ``num_shards``,
    ``random_shuffle``, ``shuffle_after_epoch``, ``pad_last_batch``, ``seed``, ...).
    """
    from nvidia.dali import fn, types

    rows = list(range(len(cache))) if rows is None else [int(r) for r in rows]
    if not rows:
        raise DaliAbsError(f"{cache.root}: no cache rows to read")
    root = cache.data_root if data_root is None else Path(data_root)
    files = [str(root / cache.relpaths[r]) for r in rows]
    groups = np.full(len(cache), -1, np.int32) if groups is None else np.asarray(groups, np.int32)
    jpegs, row_ids = fn.readers.file(files=files, labels=rows, name=name, **reader_kwargs)
    labels, soft, fill_bytes, boxes, grp = fn.python_function(
        row_ids, function=_CacheLookup(cache, groups), batch_processing=True, num_outputs=5)
    fills = fn.decoders.image(fill_bytes, device=fill_device, output_type=types.RGB)
    return CacheSamples(jpegs, labels, row_ids, soft, fills, boxes, grp, thresholds=cache.thresholds)


class _Swap:
    """Per batch: sample the swap, crop and flip parameters (as data), then one compositing call."""

    def __init__(self, cfg: SwapConfig, seed: int, batches_per_epoch: int, device: str, size, augment):
        self.cfg = cfg
        self.size = size
        self.augment = augment
        self.seed = seed
        self.batches_per_epoch = max(1, batches_per_epoch)
        self.device = device
        self.calls = 0

    def __call__(self, images, soft, fills, boxes, labels, groups):
        from dali_abs.loader.composite import composite_gpu, composite_host
        from dali_abs.loader.params import sample_params

        epoch = self.calls // self.batches_per_epoch
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        if self.device == "gpu":
            import cupy as cp

            xp, composite = cp, composite_gpu
        else:
            xp, composite = np, composite_host
        size = self.size
        if size is None:
            sizes = {tuple(a.shape[:2]) for a in images}
            if len(sizes) != 1:
                raise SwapError(f"background_swap got images of {len(sizes)} sizes (e.g. {sorted(sizes)[:3]}) and no "
                                "size=; pass size=S for an S x S output")
            size = sizes.pop()
        size = (int(size), int(size)) if np.isscalar(size) else tuple(int(v) for v in size)
        # Stack the small per-sample inputs once, with one device-to-host copy each on the GPU
        # for what only the host reads (labels, groups, boxes: parameter sampling and geometry).
        soft_b = xp.stack(soft)
        host = (lambda xs: cp.asnumpy(cp.stack(xs))) if self.device == "gpu" else np.stack
        lab = host(labels).reshape(-1).astype(np.int64)
        grp = host(groups).reshape(-1).astype(np.int64)
        soft_host = cp.asnumpy(soft_b) if self.device == "gpu" else soft_b
        params = sample_params(lab, rng, self.cfg, groups=grp if (grp >= 0).all() else None, epoch=epoch,
                               image_size=size, soft=soft_host, augment=self.augment)
        out = composite(list(images), soft_b, list(fills), host(boxes), params, self.cfg, size=size)
        return [out[i] for i in range(out.shape[0])]


def swap_thresholds(cfg: SwapConfig, recorded: Thresholds | None) -> SwapConfig:
    """``cfg`` with ``tight`` / ``loose`` left None taken from ``recorded`` (a cache's
    :attr:`~dali_abs.cache.format.Cache.thresholds`); the values a user set are kept. The one
    place where "None = the cache's threshold" is resolved."""
    from dataclasses import replace

    if cfg.tight is not None and cfg.loose is not None:
        return cfg
    if recorded is None:
        raise SwapError("SwapConfig leaves tight/loose to the cache (None), but these samples carry no recorded "
                        "thresholds; read them with cache_reader, or pass SwapConfig(tight=..., loose=...)")
    return replace(cfg, tight=recorded.tight if cfg.tight is None else cfg.tight,
                   loose=recorded.loose if cfg.loose is None else cfg.loose)


def background_swap(images, samples: CacheSamples, cfg: SwapConfig = SwapConfig(), *, size=None,
                    augment: AugmentConfig | None = None, device: str = "cpu", seed: int = 0,
                    batches_per_epoch: int = 1):
    """Composite each sample's foreground onto a clean background of another sample of the batch.

    ``images``: data node of uint8 HWC RGB of any sizes, on ``device`` ("cpu" or "gpu").
    ``size``: output side S (or (H, W)); default: the images' size, which must then be one
    for the whole batch. ``augment``: also apply the random resized crop and flip of an
    :class:`~dali_abs.loader.params.AugmentConfig` in the same pass (None: the whole image,
    unmirrored). ``batches_per_epoch`` lets a swap-probability schedule follow epochs. ``seed``:
    under data parallelism give every shard its own
    (:func:`dali_abs.loader.iterator.augment_seed`), or all ranks draw the same swaps.
    ``cfg.tight`` / ``cfg.loose`` left None are the cache's recorded thresholds
    (:func:`swap_thresholds`). Returns a data node of uint8 HWC RGB, S x S, on ``device``, with
    layout "HWC".
    """
    from nvidia.dali import fn

    if device not in ("cpu", "gpu"):
        raise DaliAbsError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if size is not None:
        sides = [size] if isinstance(size, (int, np.integer)) else list(size) if isinstance(size, (tuple, list)) else []
        if len(sides) not in (1, 2) or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in sides):
            raise DaliAbsError(f"size must be a positive int S or a pair (H, W) of them, got {size!r}")
    cfg = swap_thresholds(cfg, samples.thresholds)
    soft, fills, boxes = samples.soft, samples.fills, samples.boxes
    labels, groups = samples.labels, samples.groups
    if device == "gpu":  # a GPU operator takes GPU inputs
        soft, fills, boxes, labels, groups = (x.gpu() for x in (soft, fills, boxes, labels, groups))
    # The layout is declared: the GPU crop_mirror_normalize refuses an input without one.
    return fn.python_function(images, soft, fills, boxes, labels, groups,
                              function=_Swap(cfg, seed, batches_per_epoch, device, size, augment),
                              batch_processing=True, num_outputs=1, device=device, output_layouts="HWC")
