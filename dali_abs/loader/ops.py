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
from pathlib import Path
from typing import Sequence

import numpy as np

from dali_abs.cache.format import Cache
from dali_abs.errors import DaliAbsError
from dali_abs.segmenter.thresholds import Thresholds
from dali_abs.swap.config import AugmentConfig, Normalize, SwapConfig, SwapError

READER_NAME = "Reader"


class CacheSamples:
    """The data nodes :func:`cache_reader` returns (one entry per sample of a batch).

    - ``jpegs``: encoded source image bytes (decode with ``fn.decoders.image``).
    - ``rows``: int32 row of the sample in the cache arrays, shape (1,).
    - ``labels``: int64 class label, shape ().
    - ``soft``: float32 [R, R] foreground probability.
    - ``fills``: uint8 HWC fill tile, decoded on ``fill_device`` (its own size).
    - ``boxes``: float32 [4] ``(y0, x0, y1, x1)`` in 0..1 image coordinates covered by the fill.
    - ``groups``: int32 group (``y * n_places + place``; -1 without places), shape ().
    - ``fill_bytes``: the fills' JPEG bytes, before decoding.

    ``labels`` to ``fill_bytes`` come from one host lookup op (rows -> cache entries), made the
    first time one of them is used: the swap reads the entries by row itself, in its own op, so a
    pipeline that only swaps and returns the labels runs one Python op per batch, not two. After
    :func:`background_swap`, ``labels`` is the swap op's own output (the same values) unless it
    was used before.

    And what the swap needs to know on the host, not data nodes: ``grid`` (R); ``epoch_size`` /
    ``pad_last_batch`` (this shard's images per epoch and how the reader ends an epoch), from which
    :func:`background_swap` counts epochs for a ``p_schedule``; ``fill_device`` (where to decode
    fills); ``thresholds``: the cache's recorded tight and loose thresholds
    (:attr:`~dali_abs.cache.format.Cache.thresholds`), which :func:`background_swap` uses where its
    ``SwapConfig`` leaves them None; ``lookup``: the host-side table behind the lookup op.
    """

    _LOOKUP = ("labels", "soft", "fill_bytes", "boxes", "groups")

    def __init__(self, jpegs, rows, lookup: "_CacheLookup", grid: int, epoch_size: int, pad_last_batch: bool,
                 fill_device: str, thresholds: Thresholds | None):
        self.jpegs, self.rows, self.lookup, self.grid = jpegs, rows, lookup, grid
        self.epoch_size, self.pad_last_batch, self.fill_device, self.thresholds = (
            epoch_size, pad_last_batch, fill_device, thresholds)
        self._nodes: dict = {}

    def _node(self, name: str):
        if name not in self._nodes:
            from nvidia.dali import fn, types

            if name == "fills":
                self._nodes["fills"] = fn.decoders.image(self.fill_bytes, device=self.fill_device,
                                                         output_type=types.RGB)
            else:
                outs = fn.python_function(self.rows, function=self.lookup, batch_processing=True,
                                          num_outputs=len(self._LOOKUP))
                for k, node in zip(self._LOOKUP, outs):
                    self._nodes.setdefault(k, node)  # a label node the swap provided stays
        return self._nodes[name]

    def _provide(self, name: str, node) -> None:
        """Another op's node for ``name`` (the same values), used from now on if none was made yet."""
        self._nodes.setdefault(name, node)

    labels = property(lambda self: self._node("labels"))
    soft = property(lambda self: self._node("soft"))
    fills = property(lambda self: self._node("fills"))
    boxes = property(lambda self: self._node("boxes"))
    groups = property(lambda self: self._node("groups"))
    fill_bytes = property(lambda self: self._node("fill_bytes"))


def _blank_jpeg() -> np.ndarray:
    """The JPEG decoded in place of a fill nobody reads (8 x 8 gray)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, format="JPEG", quality=90)
    return np.frombuffer(buf.getvalue(), np.uint8)


def _row_index(rows: Sequence[np.ndarray]) -> np.ndarray:
    """The cache rows of a batch (DALI hands over one int32 (1,) array per sample) as int64 (N,)."""
    return np.array([int(np.asarray(r).reshape(-1)[0]) for r in rows], np.int64)


class _CacheLookup:
    """Cache rows -> labels, soft masks, fill bytes, boxes, groups (host-side, NumPy): :meth:`take`
    for the swap's own op, and as a DALI op (``__call__``) for :class:`CacheSamples`' nodes."""

    def __init__(self, cache: Cache, groups: np.ndarray):
        R = cache.grid
        self.cache = cache
        self.soft = cache.masks.astype(np.float32) / np.float32(255.0)
        self.boxes = cache.boxes.astype(np.float32) / np.float32(R)  # grid cells -> 0..1, (y0, x0, y1, x1)
        self.labels = cache.labels.astype(np.int64)
        self.groups = groups.astype(np.int32)
        self.blank = _blank_jpeg()

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For cache rows ``idx``: labels int64 (N,), soft float32 (N,R,R), boxes float32 (N,4) (zeros
        where the image has no fill), groups int32 (N,), and bool (N,): the image has a fill."""
        has = self.cache.fill_spans[idx, 2] > 0
        boxes = self.boxes[idx]
        boxes[~has] = 0.0
        return self.labels[idx], self.soft[idx], boxes, self.groups[idx], has

    def fill_jpeg(self, row: int) -> np.ndarray:
        """The fill JPEG of cache row ``row`` as uint8 bytes (the blank where it has none)."""
        data = self.cache.fill_bytes(int(row))
        return self.blank if data is None else np.frombuffer(data, np.uint8)

    def __call__(self, rows: Sequence[np.ndarray]):
        idx = _row_index(rows)
        labels, soft, boxes, groups, _ = self.take(idx)
        return ([labels[i:i + 1].reshape(()) for i in range(len(labels))], list(soft),
                [self.fill_jpeg(i) for i in idx], list(boxes), [groups[i:i + 1].reshape(()) for i in range(len(groups))])


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
    from nvidia.dali import fn

    rows = list(range(len(cache))) if rows is None else [int(r) for r in rows]
    if not rows:
        raise DaliAbsError(f"{cache.root}: no cache rows to read")
    root = cache.data_root if data_root is None else Path(data_root)
    files = [str(root / cache.relpaths[r]) for r in rows]
    groups = np.full(len(cache), -1, np.int32) if groups is None else np.asarray(groups, np.int32)
    jpegs, row_ids = fn.readers.file(files=files, labels=rows, name=name, **reader_kwargs)
    shard, shards = int(reader_kwargs.get("shard_id", 0)), int(reader_kwargs.get("num_shards", 1))
    # DALI's shards: shard i of n reads rows [floor(i N / n), floor((i + 1) N / n))
    epoch_size = (len(rows) * (shard + 1)) // shards - (len(rows) * shard) // shards
    return CacheSamples(jpegs, row_ids, _CacheLookup(cache, groups), cache.grid, epoch_size,
                        bool(reader_kwargs.get("pad_last_batch", False)), fill_device, cache.thresholds)


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
    """The CPU side, per batch, from the batch's cache rows: look up labels, groups, soft masks and
    boxes (:meth:`_CacheLookup.take`), draw the swap, crop and flip parameters (:func:`sample_params`)
    and pack them into one record per sample (:func:`pack_samples`): data the compositing op reads
    without a host copy. ``fills``: also pass on the fills' JPEG bytes, only those the batch's swaps
    read (the partners of swapped samples, with a fill that reads the tile), a blank for the rest:
    fewer fills to decode. ``labels``: also the labels (int64, shape ()), as the lookup op gives them."""

    def __init__(self, cfg: SwapConfig, seed: int, size: tuple[int, int], augment, epochs: _Epochs,
                 lookup: _CacheLookup, *, fills: bool = False, labels: bool = False):
        self.cfg, self.seed, self.size, self.augment, self.epochs, self.lookup = cfg, seed, size, augment, epochs, lookup
        self.fills, self.labels = fills, labels
        self.batches = 0  # batches drawn so far: the random key, and through _Epochs the epoch

    def __call__(self, rows):
        from dali_abs.swap import pack_samples, sample_params

        b, n = self.batches, len(rows)
        self.batches += 1
        rng = np.random.default_rng([self.seed, b])
        idx = _row_index(rows)
        lab, soft, boxes, grp, has = self.lookup.take(idx)
        params = sample_params(lab, rng, self.cfg, groups=grp.astype(np.int64) if (grp >= 0).all() else None,
                               epoch=self.epochs(b, n), image_size=self.size, soft=soft, augment=self.augment)
        records = pack_samples(params, soft, boxes, self.size).view(np.uint8).reshape(n, -1)
        out = [[records[i] for i in range(n)]]
        if self.fills:
            read = np.zeros(n, bool)
            if self.cfg.fill in ("cached", "mean"):  # a backdrop reads no partner
                read[params["partner"][(params["swap"] == 1) & (params["backdrop"] == 0)]] = True
            blank = self.lookup.blank
            out.append([self.lookup.fill_jpeg(i) if k else blank for i, k in zip(idx, read & has)])
        if self.labels:
            out.append([lab[i:i + 1].reshape(()) for i in range(n)])
        return tuple(out) if len(out) > 1 else out[0]


class _Composite:
    """The compositing op, the same call on the CPU and on the GPU: one :class:`~dali_abs.swap.Batch`
    of the decoded images, the fill tiles and the records, composited where they are. ``normalize``
    (host batches): also normalised to float CHW in the same pass (:func:`dali_abs.swap.cpu.composite`),
    which on the CPU costs a fraction of a crop_mirror_normalize op after it."""

    def __init__(self, cfg: SwapConfig, size: tuple[int, int], grid: int, normalize: Normalize | None = None):
        self.cfg, self.size, self.grid, self.normalize = cfg, size, grid, normalize
        # the host outputs, reused: DALI copies a Python op's outputs before it runs again, and a
        # fresh 5-20 MB array per batch costs its page faults each time
        self.out = self.norm_out = None

    def __call__(self, images, fills, records):
        from dali_abs.swap import batch_of_records, composite

        b = batch_of_records(list(images), list(fills), list(records), self.cfg, self.size, self.grid)
        if b.on_gpu:
            out = composite(b)
        else:
            if self.out is None or self.out.shape[0] != b.n:
                self.out = np.empty((b.n, b.h, b.w, 3), np.uint8)
                self.norm_out = None if self.normalize is None else np.empty(
                    (b.n, 3, b.h, b.w), np.dtype(self.normalize.dtype))
            out = composite(b, out=self.out, normalize=self.normalize, normalized=self.norm_out)
        return [out[i] for i in range(out.shape[0])]


def normalize_node(images, norm: Normalize, mirror=0):
    """DALI's ``crop_mirror_normalize`` with the values of ``norm`` (float CHW out): the one place
    a :class:`~dali_abs.swap.config.Normalize` becomes that op's arguments."""
    from nvidia.dali import fn, types

    return fn.crop_mirror_normalize(images, mirror=mirror, mean=list(norm.mean), std=list(norm.std),
                                    dtype=types.FLOAT16 if norm.dtype == "float16" else types.FLOAT,
                                    output_layout="CHW")


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

    Drawn per batch from the cache entries of ``samples.rows`` (labels, groups, soft masks, boxes) with the random key
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
    return fn.python_function(samples.rows, function=_Sample(cfg, seed, hw, augment, _Epochs(samples, batches_per_epoch),
                                                             samples.lookup), batch_processing=True, num_outputs=1)


def background_swap(images, samples: CacheSamples, cfg: SwapConfig = SwapConfig(), *, size=None,
                    augment: AugmentConfig | None = None, device: str = "cpu", seed: int = 0,
                    batches_per_epoch: int | None = None, params=None, normalize: Normalize | None = None):
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
    layout "HWC"; with ``normalize`` (a :class:`~dali_abs.swap.config.Normalize`) float CHW
    instead, the same bytes as ``crop_mirror_normalize`` after it (on the CPU done in the same op;
    on the GPU by that op).
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
    if normalize is not None and not isinstance(normalize, Normalize):
        raise DaliAbsError(f"normalize must be None or a Normalize, got {type(normalize).__name__}")
    cfg = swap_thresholds(cfg, samples.thresholds)
    if params is None:
        # one op draws the parameters, picks the fills they read and gives the labels (the lookup op
        # is then left out of a pipeline that uses no other entry)
        params, read, labels = fn.python_function(
            samples.rows, function=_Sample(cfg, seed, hw, augment, _Epochs(samples, batches_per_epoch), samples.lookup,
                                           fills=True, labels=True), batch_processing=True, num_outputs=3)
        samples._provide("labels", labels)
        fills = fn.decoders.image(read, device=samples.fill_device, output_type=types.RGB)
    else:
        fills = samples.fills
    if device == "gpu":  # a GPU operator takes GPU inputs: DALI copies the records over, in its own stream
        fills, params = fills.gpu(), params.gpu()
    host_norm = normalize if device == "cpu" else None
    # The layout is declared: the GPU crop_mirror_normalize refuses an input without one.
    out = fn.python_function(images, fills, params, function=_Composite(cfg, hw, samples.grid, host_norm),
                             batch_processing=True, num_outputs=1, device=device,
                             output_layouts="CHW" if host_norm is not None else "HWC")
    return normalize_node(out, normalize) if normalize is not None and host_norm is None else out
