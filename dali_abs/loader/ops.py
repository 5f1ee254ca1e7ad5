"""DALI operators for a user's own ``pipeline_def``: read the cache, swap backgrounds.

Use inside a pipeline, before your own crop / flip / normalise::

    from dali_abs.cache.format import open_cache
    from dali_abs.loader.ops import background_swap, cache_reader
    from dali_abs.swap import AugmentConfig, SwapConfig

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
from dali_abs.segmenter.thresholds import Thresholds
from dali_abs.swap.config import AugmentConfig, SwapConfig, SwapError

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

    And what the swap needs to know on the host, not data nodes: ``grid`` (R); ``epoch_size`` /
    ``pad_last_batch`` (this shard's images per epoch and how the reader ends an epoch), from which
    :func:`background_swap` counts epochs for a ``p_schedule``; ``fill_bytes`` / ``fill_device``
    (the fills undecoded, and where to decode them); ``thresholds``: the cache's recorded tight and
    loose thresholds (:attr:`~dali_abs.cache.format.Cache.thresholds`), which :func:`background_swap`
    uses where its ``SwapConfig`` leaves them None.
    """

    jpegs: object
    labels: object
    rows: object
    soft: object
    fills: object
    boxes: object
    groups: object
    grid: int = 0
    epoch_size: int = 0
    pad_last_batch: bool = False
    fill_bytes: object = None  # the fills' JPEG bytes, before decoding (background_swap decodes only those it reads)
    fill_device: str = "cpu"
    thresholds: Thresholds | None = None


def _blank_jpeg() -> np.ndarray:
    """The JPEG decoded in place of a fill nobody reads (8 x 8 gray)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, format="JPEG", quality=90)
    return np.frombuffer(buf.getvalue(), np.uint8)


class _CacheLookup:
    """Per batch: cache rows -> labels, soft masks, fill bytes, boxes, groups (host-side, NumPy)."""

    def __init__(self, cache: Cache, groups: np.ndarray):
        R = cache.grid
        self.cache = cache
        self.soft = cache.masks.astype(np.float32) / np.float32(255.0)
        self.boxes = cache.boxes.astype(np.float32) / np.float32(R)  # grid cells -> 0..1, (y0, x0, y1, x1)
        self.labels = cache.labels.astype(np.int64)
        self.groups = groups.astype(np.int32)
        self.blank = _blank_jpeg()

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
    shard, shards = int(reader_kwargs.get("shard_id", 0)), int(reader_kwargs.get("num_shards", 1))
    # DALI's shards: shard i of n reads rows [floor(i N / n), floor((i + 1) N / n))
    epoch_size = (len(rows) * (shard + 1)) // shards - (len(rows) * shard) // shards
    return CacheSamples(jpegs, labels, row_ids, soft, fills, boxes, grp, cache.grid, epoch_size,
                        bool(reader_kwargs.get("pad_last_batch", False)), fill_bytes, fill_device, cache.thresholds)


class _Epochs:
    """The epoch of the b-th batch a pipeline runs (0-based), from the reader's shape of an epoch:
    ``batches_per_epoch`` when given, else ``ceil(epoch_size / batch)`` batches with
    ``pad_last_batch`` (the reader pads the last batch and starts the next epoch afresh), else the
    epoch of the batch's first sample (the reader runs on into the next epoch mid-batch)."""

    def __init__(self, samples: CacheSamples, batches_per_epoch: int | None):
        self.fixed = None if batches_per_epoch is None else max(1, int(batches_per_epoch))
        self.size, self.padded = max(1, samples.epoch_size), samples.pad_last_batch

    def __call__(self, b: int, batch: int) -> int:
        if self.fixed is not None:
            return b // self.fixed
        if self.padded:
            return b // -(-self.size // batch)
        return (b * batch) // self.size


class _Sample:
    """The CPU side, per batch: draw the swap, crop and flip parameters (:func:`sample_params`)
    where the labels, groups, soft masks and boxes are, and pack them into one record per sample
    (:func:`pack_samples`): data the compositing op reads without a host copy. Given the fills'
    JPEG bytes too, it also passes on only those the batch's swaps read (the partners of swapped
    samples, with a fill that reads the tile), a blank for the rest: fewer fills to decode."""

    def __init__(self, cfg: SwapConfig, seed: int, size: tuple[int, int], augment, epochs: _Epochs):
        self.cfg, self.seed, self.size, self.augment, self.epochs = cfg, seed, size, augment, epochs
        self.batches = 0  # batches drawn so far: the random key, and through _Epochs the epoch
        self.blank = _blank_jpeg()

    def __call__(self, labels, groups, soft, boxes, fill_bytes=None):
        from dali_abs.swap import pack_samples, sample_params

        b, n = self.batches, len(labels)
        self.batches += 1
        rng = np.random.default_rng([self.seed, b])
        lab = np.stack(labels).reshape(-1).astype(np.int64)
        grp = np.stack(groups).reshape(-1).astype(np.int64)
        soft = np.stack(soft)
        params = sample_params(lab, rng, self.cfg, groups=grp if (grp >= 0).all() else None,
                               epoch=self.epochs(b, n), image_size=self.size, soft=soft, augment=self.augment)
        records = pack_samples(params, soft, np.stack(boxes), self.size).view(np.uint8).reshape(n, -1)
        records = [records[i] for i in range(n)]
        if fill_bytes is None:
            return records
        read = np.zeros(n, bool)
        if self.cfg.fill in ("cached", "mean"):
            read[params["partner"][params["swap"] == 1]] = True
        return records, [f if k else self.blank for f, k in zip(fill_bytes, read)]


class _Composite:
    """The compositing op, the same call on the CPU and on the GPU: one :class:`~dali_abs.swap.Batch`
    of the decoded images, the fill tiles and the records, composited where they are."""

    def __init__(self, cfg: SwapConfig, size: tuple[int, int], grid: int):
        self.cfg, self.size, self.grid = cfg, size, grid

    def __call__(self, images, fills, records):
        from dali_abs.swap import batch_of_records, composite

        out = composite(batch_of_records(list(images), list(fills), list(records), self.cfg, self.size, self.grid))
        return [out[i] for i in range(out.shape[0])]


def _canvas_size(size) -> tuple[int, int]:
    sides = [size] if isinstance(size, (int, np.integer)) else list(size) if isinstance(size, (tuple, list)) else []
    if len(sides) not in (1, 2) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                           for v in sides):
        raise DaliAbsError(f"size must be a positive int S or a pair (H, W) of them, got {size!r}")
    return (int(sides[0]), int(sides[-1]))


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


def swap_parameters(samples: CacheSamples, cfg: SwapConfig = SwapConfig(), *, size, augment=None, seed: int = 0,
                    batches_per_epoch: int | None = None):
    """The CPU data node of the swap's per-sample parameter records (uint8, one record each).

    Drawn per batch from ``samples`` (labels, groups, soft masks, boxes) with the random key
    ``(seed, batch index)`` on an ``size`` canvas (S or (H, W)); ``augment`` adds the random
    resized crop and flip. The epoch a ``p_schedule`` follows is counted from the reader
    (``batches_per_epoch`` overrides it). :func:`background_swap` calls this; call it yourself to
    hand the same parameters to more than one compositing op. ``cfg.tight`` / ``cfg.loose``
    left None are the cache's recorded thresholds (:func:`swap_thresholds`).
    """
    from nvidia.dali import fn

    if not isinstance(cfg, SwapConfig):
        raise DaliAbsError(f"cfg must be a SwapConfig, got {type(cfg).__name__}")
    cfg = swap_thresholds(cfg, samples.thresholds)
    hw = _canvas_size(size)
    return fn.python_function(samples.labels, samples.groups, samples.soft, samples.boxes,
                              function=_Sample(cfg, seed, hw, augment, _Epochs(samples, batches_per_epoch)),
                              batch_processing=True, num_outputs=1)


def background_swap(images, samples: CacheSamples, cfg: SwapConfig = SwapConfig(), *, size=None,
                    augment: AugmentConfig | None = None, device: str = "cpu", seed: int = 0,
                    batches_per_epoch: int | None = None, params=None):
    """Composite each sample's foreground onto a clean background of another sample of the batch.

    ``images``: data node of uint8 HWC RGB of any sizes, on ``device`` ("cpu" or "gpu").
    ``size``: output side S (or (H, W)): the canvas the parameters are drawn on, on the CPU side
    of the pipeline before any image is decoded, so it must be given. ``augment``: also apply the
    random resized crop and flip of an :class:`~dali_abs.swap.config.AugmentConfig` in the same
    pass (None: the whole image, unmirrored). A ``p_schedule`` follows the reader's epochs
    (``batches_per_epoch`` overrides the count). ``seed``: under data parallelism give every shard
    its own (:func:`dali_abs.loader.iterator.augment_seed`), or all ranks draw the same swaps.
    ``params``: records of :func:`swap_parameters` to use instead of drawing new ones.
    ``cfg.tight`` / ``cfg.loose`` left None are the cache's recorded thresholds
    (:func:`swap_thresholds`). Returns a data node of uint8 HWC RGB, S x S, on ``device``, with
    layout "HWC".
    """
    from nvidia.dali import fn, types

    if device not in ("cpu", "gpu"):
        raise DaliAbsError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if size is None:
        raise DaliAbsError("background_swap needs size=S (or (H, W)): the output canvas, on which the swap, crop "
                           "and flip parameters are drawn before the images are decoded")
    hw = _canvas_size(size)
    if not isinstance(cfg, SwapConfig):
        raise DaliAbsError(f"cfg must be a SwapConfig, got {type(cfg).__name__}")
    cfg = swap_thresholds(cfg, samples.thresholds)
    if params is None and samples.fill_bytes is not None:
        params, read = fn.python_function(
            samples.labels, samples.groups, samples.soft, samples.boxes, samples.fill_bytes,
            function=_Sample(cfg, seed, hw, augment, _Epochs(samples, batches_per_epoch)), batch_processing=True,
            num_outputs=2)
        fills = fn.decoders.image(read, device=samples.fill_device, output_type=types.RGB)
    else:
        if params is None:
            params = swap_parameters(samples, cfg, size=hw, augment=augment, seed=seed,
                                     batches_per_epoch=batches_per_epoch)
        fills = samples.fills
    if device == "gpu":  # a GPU operator takes GPU inputs: DALI copies the records over, in its own stream
        fills, params = fills.gpu(), params.gpu()
    # The layout is declared: the GPU crop_mirror_normalize refuses an input without one.
    return fn.python_function(images, fills, params, function=_Composite(cfg, hw, samples.grid),
                              batch_processing=True, num_outputs=1, device=device, output_layouts="HWC")
