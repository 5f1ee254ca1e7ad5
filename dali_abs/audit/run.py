"""``audit(model, cache, data)``: the model's accuracy on each variant of the test images
(:mod:`dali_abs.audit.variants`), made on the fly by our loader's operators from the cache.

::

    from dali_abs.audit import audit

    report = audit(model, "cache", "data", size=224, device="gpu")   # a dict (JSON-ready)
    print(report["bg_gap"], report["accuracy"]["only_bg"])

One DALI pipeline reads each test image once (``cache_reader``, no shuffling, in
:func:`~dali_abs.audit.variants.reading_order`), decodes it once and composites the six variants
from it (``background_swap`` with each variant's :class:`~dali_abs.swap.config.SwapConfig` and
its own seed), uint8 HWC RGB 0..255 at ``size`` x ``size``; they are normalised with the model's
``mean`` / ``std`` (0..1 RGB units, timm's convention) into float32 NCHW and classified. The
variants depend on the cache, the dataset, the split, ``subset``, ``size``, ``batch_size``,
``seed`` and the thresholds only, never on the model: two models audited with the same settings
see the very same images (on the CPU; the GPU kernel composites the same parameters).

The report (all accuracies 0..1):

- ``accuracy``: per variant; ``bg_gap`` = ``mixed_same - mixed_rand`` (the Backgrounds
  Challenge's BG-gap: how much the right background helps), ``only_bg`` = accuracy on the clean
  backgrounds alone (``chance`` = 1 / classes is what a model that ignores them gets);
- ``per_class`` and (with places) ``per_group``: the same per class / per ``y * n_places +
  place`` group, with each one's image count ``n``;
- ``own_background``: per mixed variant, the images shown on their own clean background for lack
  of a partner in their batch (see :mod:`dali_abs.audit.variants`);
- the settings: model, cache, data, split, subset (``majority_groups``: which), images, size,
  mean, std, backdrop, thresholds, seed, batch size, device, seconds.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dali_abs.audit.models import as_classifier
from dali_abs.audit.variants import MIXED, VARIANTS, reading_order, variant_seed, variant_swaps
from dali_abs.cache.format import Cache
from dali_abs.constants import MEAN, STD
from dali_abs.dataset import Dataset
from dali_abs.errors import DaliAbsError
from dali_abs.loader.iterator import check_fresh, check_loose, check_overrides, open_inputs, split_rows

FORMAT = "dali-abs audit 1"
SUBSETS = ("auto", "all", "majority")
DEFAULT_SIZE = 224  # the input side when neither the user nor the model (a static ONNX H x W) says


@dataclass(frozen=True)
class AuditConfig:
    """Options of :func:`audit`, each documented once here."""

    split: str = "test"
    # "all": every image of the split; "majority": those of the majority groups (each class on the place
    # it stands on most in train), where the background still goes with the class, as in the Backgrounds
    # Challenge's test set (on a group-balanced test split mixed_same would be no closer to the class than
    # mixed_rand); "auto": "majority" for a dataset with places, else "all".
    subset: str = "auto"
    ids: tuple[str, ...] | None = None  # only these image ids of the split (after subset)
    size: int | None = None  # model input side in px; None: the ONNX model's static side, else 224
    mean: tuple[float, float, float] = MEAN  # the model's normalisation, RGB 0..1 units
    std: tuple[float, float, float] = STD
    backdrop: tuple[float, float, float] | None = None  # only_fg colour, RGB 0..255; None: mean * 255 (0 after normalising)
    tight: float | None = None  # None: the cache's recorded thresholds
    loose: float | None = None
    batch_size: int = 64
    seed: int = 0  # same seed (and settings), same variants
    device: str = "cpu"  # "cpu" or "gpu": where DALI decodes and composites
    num_threads: int = 2
    examples: int = 8  # images kept for the picture (report["examples"] is not JSON; popped by the CLI)


def _triple(name: str, v, lo: float, hi: float) -> tuple[float, float, float]:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        t = ()
    if len(t) != 3 or not all(lo <= x <= hi for x in t):
        raise DaliAbsError(f"{name} must be three numbers (R, G, B) in {lo:g}..{hi:g}, got {v!r}"
                           + ("; mean and std are in 0..1 RGB units (timm's convention): divide by 255"
                              if name in ("mean", "std") and len(t) == 3 and max(t) > 1 else ""))
    return t


def check_config(cfg: AuditConfig) -> AuditConfig:
    """``cfg`` checked (every bad value one :class:`DaliAbsError` with the value), triples as float tuples."""
    if cfg.subset not in SUBSETS:
        raise DaliAbsError(f"subset must be one of {', '.join(SUBSETS)}, got {cfg.subset!r}")
    if cfg.device not in ("cpu", "gpu"):
        raise DaliAbsError(f"device must be 'cpu' or 'gpu', got {cfg.device!r}")
    for name in ("batch_size", "num_threads"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DaliAbsError(f"{name} must be a positive integer, got {v!r}")
    if cfg.size is not None and (isinstance(cfg.size, bool) or not isinstance(cfg.size, (int, np.integer))
                                 or cfg.size < 8):
        raise DaliAbsError(f"size must be an input side of at least 8 px, got {cfg.size!r}")
    if isinstance(cfg.examples, bool) or not isinstance(cfg.examples, (int, np.integer)) or cfg.examples < 0:
        raise DaliAbsError(f"examples must be a count >= 0, got {cfg.examples!r}")
    mean, std = _triple("mean", cfg.mean, 0.0, 1.0), _triple("std", cfg.std, 0.0, 1.0)
    if min(std) <= 0:
        raise DaliAbsError(f"std must be positive, got {cfg.std!r}")
    backdrop = None if cfg.backdrop is None else _triple("backdrop", cfg.backdrop, 0.0, 255.0)
    return replace(cfg, mean=mean, std=std, backdrop=backdrop)


def _config(config: AuditConfig | None, overrides: dict, what: str = "audit") -> AuditConfig:
    """``config`` (default :class:`AuditConfig`) with the keyword ``overrides`` of ``what``, checked."""
    check_overrides(what, AuditConfig, overrides)
    return check_config(replace(config or AuditConfig(), **overrides))


def _open(cache, data) -> tuple[Cache, Dataset]:
    # an opened cache is used as its caller opened it (hashes=False is their choice, e.g. one just verified)
    cache, ds = open_inputs(cache, data, hashes=not isinstance(cache, Cache))
    check_fresh(cache, ds)
    return cache, ds


def audit_rows(cache: Cache, ds: Dataset, cfg: AuditConfig) -> tuple[list[int], dict]:
    """The cache rows the audit reads (before :func:`reading_order`) and what they are: ``subset``
    ("all" or "majority", ``auto`` resolved), ``majority_groups`` (their names, for "majority"),
    ``ids_given`` (how many ids restricted it, or None)."""
    subset = cfg.subset
    if subset == "auto":
        subset = "majority" if ds.has_groups else "all"
    ids = cfg.ids
    if ids is not None:
        split_rows(cache, ds, cfg.split, ids)  # ids outside the split are refused, whatever the subset
    what: dict = {"subset": subset}
    if subset == "majority":
        major = ds.majority_groups()  # a DatasetError naming the missing place column
        keep = {s.id for s in ds.split(cfg.split) if ds.group(s) in major}
        ids = tuple(sorted(keep if ids is None else keep & set(ids)))
        what["majority_groups"] = [ds.group_name(g) for g in sorted(major)]
        if not ids:
            raise DaliAbsError(f"{ds.root}: split {cfg.split!r} holds no image of the majority groups"
                               + (" among the ids given" if cfg.ids is not None else ""))
    what["ids_given"] = None if cfg.ids is None else len(cfg.ids)
    return split_rows(cache, ds, cfg.split, ids), what


def _pipeline(cache: Cache, ds: Dataset, rows: list[int], cfg: AuditConfig, size: int, swaps: dict,
              device_id: int | None):
    from nvidia.dali import fn, pipeline_def, types

    from dali_abs.loader.ops import READER_NAME, background_swap, cache_reader, swap_parameters

    gpu = cfg.device == "gpu"
    batch = min(cfg.batch_size, len(rows))

    @pipeline_def(batch_size=batch, num_threads=cfg.num_threads, device_id=device_id, seed=cfg.seed)
    def pipe():
        # in the given order (no shuffling): reading_order's batches are the batches
        s = cache_reader(cache, rows, data_root=ds.root, fill_device="mixed" if gpu else "cpu",
                         pad_last_batch=True, name=READER_NAME)
        images = fn.decoders.image(s.jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        outs = []
        for k, name in enumerate(VARIANTS):
            seed = variant_seed(cfg.seed, k)
            params = swap_parameters(s, swaps[name], size=size, seed=seed)
            outs += [background_swap(images, s, swaps[name], size=size, device=cfg.device, seed=seed, params=params),
                     params]
        return (*outs, s.rows)

    return pipe(), batch


def _partners(records, r: int) -> np.ndarray:
    """The ``partner`` field (batch index) of each packed parameter record (uint8 [N, record bytes])."""
    from dali_abs.swap.signature import sample_dtype

    rec = np.ascontiguousarray(records.cpu().numpy() if hasattr(records, "cpu") else records, np.uint8)
    return rec.reshape(-1).view(sample_dtype(r))["partner"].astype(np.int64)


def _example_picks(labels: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` positions (in reading order), taken round-robin over the classes: each class shown."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < k and any(by_class):
        for idx in by_class:
            if idx and len(out) < k:
                out.append(int(idx.pop(0)))
    return sorted(out)


def audit(model, cache: str | os.PathLike | Cache, data: str | os.PathLike | Dataset | None = None,
          config: AuditConfig | None = None, *, png: str | os.PathLike | None = None, progress: bool = False,
          **overrides) -> dict:
    """Audit ``model`` on the variants of the test images of ``cache`` (module docstring); returns the report.

    ``model``: a TorchScript / ONNX file, a ``torch.nn.Module`` (audited in eval mode, its mode
    restored after) or any callable taking float32 NCHW normalised images (a torch tensor on the
    loader's device, or on the module's) and returning logits ``[N, C]``.
    ``data``: the dataset folder (default: the one the cache was built from).
    ``config`` / ``overrides``: any :class:`AuditConfig` field, e.g. ``size=64, mean=(0, 0, 0),
    std=(1, 1, 1)`` for a model that takes 0..1 input. ``png``: also write the examples picture
    (:func:`dali_abs.audit.png.write_examples`). The report's ``examples`` (uint8 images and
    predictions of ``config.examples`` images, for the picture) is not JSON: :func:`to_json` drops it.
    """
    import torch

    cfg = _config(config, overrides)
    if png is not None and cfg.examples == 0:  # refused now, not after the whole audit
        raise DaliAbsError(f"png={str(png)!r} with examples=0: the picture shows the examples; give examples >= 1 "
                           "or no png")
    t0 = time.perf_counter()
    clf = as_classifier(model, cfg.device, cfg.num_threads)
    cache, ds = _open(cache, data)
    clf.classes = ds.n_classes
    size = cfg.size if cfg.size is not None else clf.size or DEFAULT_SIZE
    if clf.size is not None and size != clf.size:
        raise DaliAbsError(f"{clf.name}: the model takes {clf.size} x {clf.size} px input; size={size} given")
    rows, subset = audit_rows(cache, ds, cfg)
    labels = cache.labels[rows].astype(np.int64)
    order = reading_order(labels, min(cfg.batch_size, len(rows)), cfg.seed)
    rows = [rows[i] for i in order]
    labels = labels[order]
    backdrop = cfg.backdrop if cfg.backdrop is not None else tuple(round(m * 255.0, 1) for m in cfg.mean)
    swaps = variant_swaps(backdrop, cfg.tight, cfg.loose)
    check_loose(cache, swaps["only_bg"])
    th = cache.thresholds
    thresholds = {"tight": cfg.tight if cfg.tight is not None else (th.tight if th else None),
                  "loose": cfg.loose if cfg.loose is not None else (th.loose if th else None)}

    device_id = None
    if cfg.device == "gpu":
        from dali_abs.devices import gpu_loader_problems, local_device

        problems = gpu_loader_problems(swap=True)
        if problems:
            raise DaliAbsError("audit(device='gpu') cannot run here: " + "; ".join(problems) + ". Or use device='cpu'")
        device_id = local_device() or 0
    pipe, batch = _pipeline(cache, ds, rows, cfg, size, swaps, device_id)

    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator
    from tqdm import tqdm

    from dali_abs.loader.ops import READER_NAME

    names = [f"{v}{suffix}" for v in VARIANTS for suffix in ("", "_params")] + ["rows"]
    it = DALIGenericIterator([pipe], output_map=names, reader_name=READER_NAME,
                             last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
    where = torch.device("cuda", device_id) if cfg.device == "gpu" else torch.device("cpu")
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=where).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=where).view(1, 3, 1, 1)
    picks = set(_example_picks(labels, cfg.examples))
    kept: dict[int, dict] = {}
    preds = {v: np.empty(len(rows), np.int64) for v in VARIANTS}
    partner_rows = {v: np.empty(len(rows), np.int64) for v in MIXED}
    training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    pos = 0
    try:
        for b in tqdm(it, total=-(-len(rows) // batch), desc="audit", unit="batch", disable=not progress):
            out = b[0]
            got = np.asarray(out["rows"].cpu()).reshape(-1).astype(np.int64)
            n = len(got)
            if not np.array_equal(got, np.asarray(rows[pos:pos + n])):  # the order is the pairing: never assume it
                raise DaliAbsError(f"internal: the audit pipeline read rows out of order at image {pos}")
            for v in VARIANTS:
                u8 = out[v]  # uint8 [N, S, S, 3] HWC RGB
                x = (u8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
                preds[v][pos:pos + n] = clf(x)
                if v in MIXED:
                    # a partner among the last batch's padding is the last image: DALI pads by repeating it
                    partner_rows[v][pos:pos + n] = got[np.minimum(_partners(out[v + "_params"], cache.grid), n - 1)]
            for i in range(n):
                if pos + i in picks:
                    kept[pos + i] = {v: out[v][i].cpu().numpy().copy() for v in VARIANTS}
            pos += n
    finally:
        if training:
            model.train()
    if pos != len(rows):
        raise DaliAbsError(f"internal: the audit read {pos} of {len(rows)} images")
    report = {"format": FORMAT, "model": clf.name, "cache": str(Path(cache.root).resolve()), "data": str(ds.root),
              "split": cfg.split, **subset, "images": len(rows), "classes": ds.n_classes,
              "chance": 1.0 / ds.n_classes, "size": int(size), "mean": list(cfg.mean), "std": list(cfg.std),
              "backdrop": list(backdrop), "thresholds": thresholds, "seed": cfg.seed, "batch_size": batch,
              "device": cfg.device}
    by_id = ds.by_id()
    report.update(summarize(preds, labels, np.asarray(rows), partner_rows, cache, ds, by_id))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["examples"] = [
        {"id": cache.ids[rows[p]], "label": int(labels[p]), "images": kept[p],
         "pred": {v: int(preds[v][p]) for v in VARIANTS},
         "partner": {v: cache.ids[int(partner_rows[v][p])] for v in MIXED},
         "group": ds.group(by_id[cache.ids[rows[p]]]) if ds.has_groups else None}
        for p in sorted(kept)]
    if png is not None:
        from dali_abs.audit.png import write_examples

        report["png"] = str(write_examples(png, report, ds.classes))
    return report


def summarize(preds: dict, labels: np.ndarray, rows: np.ndarray, partner_rows: dict, cache: Cache,
              ds: Dataset, by_id: dict | None = None) -> dict:
    """The accuracy part of the report from the predictions (int per image, per variant), in reading order.
    ``by_id``: ``ds.by_id()`` where the caller has it already."""
    correct = {v: preds[v] == labels for v in VARIANTS}
    acc = {v: float(correct[v].mean()) for v in VARIANTS}
    out = {"accuracy": acc, "correct": {v: int(correct[v].sum()) for v in VARIANTS},
           "bg_gap": acc["mixed_same"] - acc["mixed_rand"], "only_bg": acc["only_bg"]}

    def table(keys: np.ndarray, name) -> dict:
        res = {}
        for k in np.unique(keys):
            m = keys == k
            res[name(int(k))] = {"n": int(m.sum()), **{v: float(correct[v][m].mean()) for v in VARIANTS}}
        return res

    out["per_class"] = table(labels, lambda k: ds.classes[k] if k < len(ds.classes) else str(k))
    if ds.has_groups:
        by_id = ds.by_id() if by_id is None else by_id
        groups = np.array([ds.group(by_id[cache.ids[r]]) for r in rows], np.int64)
        out["per_group"] = table(groups, ds.group_name)
    out["own_background"] = {v: int((partner_rows[v] == rows).sum()) for v in MIXED}
    return out


def to_json(report: dict) -> dict:
    """The report without its ``examples`` images (what ``--out`` writes and the hook keeps)."""
    return {k: v for k, v in report.items() if k != "examples"}


__all__ = ["AuditConfig", "audit", "audit_rows", "check_config", "summarize", "to_json"]
