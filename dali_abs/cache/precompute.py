"""``dali-abs precompute``: soft patch masks and fills for a whole dataset, resumable and sharded.

Per chunk of ``chunk_size`` images (dataset order): a header pre-pass routes each file
(DALI for plain RGB / grayscale JPEG, PNG and BMP; PIL for CMYK, 16-bit, RGBA, palette and
anything DALI may choke on; skip with a reason for unreadable, too small or too large
images); DALI decodes and resizes to the segmenter's input size S (``mixed`` decoding on a
GPU); the segmenter gives the R x R foreground probability (or, with ``masks=``, the patch
coverage of ground-truth pixel masks: :class:`GroundTruthMasks`); the inpainter fills the loose
mask cells at S x S; the fill crop is JPEG-encoded; the chunk is written atomically
(:func:`dali_abs.cache.format.write_chunk`). A rerun skips finished chunks. Chunk k belongs
to shard ``k % n``; ``merge`` (run by the last shard to finish, or ``dali-abs cache merge``)
writes ``manifest.json``.

Devices (``PrecomputeConfig.device``): DALI and onnxruntime use the GPU of
:func:`dali_abs.devices.local_device` (LOCAL_RANK under torchrun, from Python as from the CLI).
"cuda" raises when onnxruntime's CUDA provider or DALI's GPU decoder does not start; "auto"
uses what starts and warns once about what does not (:func:`decode_on_gpu`); nothing falls
back silently, and the summary's ``devices`` says where the work ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dali_abs.cache.format import (CHUNKS, DEFAULT_FILL_THRESHOLD, DEFAULT_TIGHT_THRESHOLD, FORMAT, FORMAT_VERSION,
                                   MANIFEST, PARTS, PLACEHOLDER_RING, PLAN, CacheError, bounding_box, chunk_name,
                                   encode_fill, fill_hole, fill_tile, part_name, quantize, read_chunk_record, read_json,
                                   sha256_file, threshold_mask, write_chunk, write_json)
from dali_abs.dataset import Dataset, Sample
from dali_abs.files import MAX_PIXELS
from dali_abs.segmenter.thresholds import Thresholds

STAGES = ("decode", "segmenter", "inpainter", "encode", "write")
MASK_STAGES = ("decode", "masks", "inpainter", "encode", "write")  # with ground-truth masks instead of a segmenter
DEFAULT_MASK_GRID = 16
MASK_ASPECT_TOLERANCE = 0.02  # a mask whose aspect ratio differs more from its image's is not that image's mask
DALI_FORMATS = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "L"), "BMP": ("RGB", "L")}


@dataclass(frozen=True)
class PrecomputeConfig:
    chunk_size: int = 256  # images per chunk file (the unit of resumption and sharding)
    batch_size: int = 32  # images per DALI / onnxruntime batch
    # loose mask: foreground probability above this is filled; None = the loose threshold the
    # segmenter records (chosen on its validation images), else DEFAULT_FILL_THRESHOLD
    fill_threshold: float | None = None
    quality: int = 90  # JPEG quality of the stored fill
    max_pixels: int = MAX_PIXELS  # larger images are skipped (reported) from their header, never decoded
    device: str = "auto"  # auto / cpu / cuda: onnxruntime provider and DALI decoder placement

    def check(self) -> None:
        if self.chunk_size < 1 or self.batch_size < 1:
            raise CacheError(f"chunk_size and batch_size must be positive, got {self.chunk_size}, {self.batch_size}")
        if self.fill_threshold is not None and not 0.0 <= self.fill_threshold < 1.0:
            raise CacheError(f"fill threshold must be in [0, 1), got {self.fill_threshold}")
        if not 1 <= self.quality <= 100:
            raise CacheError(f"JPEG quality must be 1..100, got {self.quality}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CacheError(f"device must be auto, cpu or cuda, got {self.device!r}")


def parse_shard(spec: str | None, env: dict | None = None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n); without a spec, torchrun's RANK / WORLD_SIZE when set, else (0, 1)."""
    env = os.environ if env is None else env
    if spec is None:
        if "WORLD_SIZE" in env and "RANK" in env:
            spec = f"{env['RANK']}/{env['WORLD_SIZE']}"
        else:
            return 0, 1
    try:
        i, n = (int(v) for v in str(spec).split("/"))
    except ValueError:
        raise CacheError(f"--shard must be i/n (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise CacheError(f"--shard {spec}: need 0 <= i < n")
    return i, n


class GroundTruthMasks:
    """Soft patch masks from ground-truth pixel masks in a folder, in place of the segmenter.

    ``GroundTruthMasks(folder, grid=16, input_size=None)``. A mask is a grayscale image at its
    image's size (or the same aspect ratio), 255 = foreground (values above 127 count;
    :func:`dali_abs.files.read_mask`), named ``<img_id>.png``, ``<img_filename with .png>`` or
    ``<image stem>.png`` under the folder (:func:`dali_abs.labels.find_mask_file`, as for
    ``dali-abs labels from-masks``).

    The soft value of a patch is the fraction of its pixels that are foreground
    (:func:`dali_abs.labels.patch_coverage` on the mask at its own resolution, patch edges at
    ``round(i * H / R)`` as everywhere else), stored like a segmenter's probability. The
    thresholds on it are fixed, not chosen (:attr:`thresholds`): fill (loose) 0.1 = at least a
    tenth of the patch is object, tight 0.5 = mostly object.
    ``grid`` (R) and ``input_size`` (S, the work size the images are decoded to for the
    inpainter and the fills are stored at; default as ``dali-abs segmenter train``: 224 for
    R = 16, else 16 px per patch) take the segmenter's roles. :meth:`prepare` finds every
    image's mask file and fingerprints them (path, size, mtime), so a resume with changed masks
    is refused like a changed model.
    """

    kind = "ground-truth masks"
    thresholds = Thresholds(tight=0.5, loose=DEFAULT_FILL_THRESHOLD,
                            tight_source="ground-truth coverage: 0.5 = the patch is mostly object",
                            loose_source="ground-truth coverage: 0.1 = a tenth of the patch is object")

    def __init__(self, path: str | os.PathLike, grid: int = DEFAULT_MASK_GRID, input_size: int | None = None):
        from dali_abs.models.segmenter_contract import default_input_size

        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise CacheError(f"--masks {self.path}: folder not found. Pass the folder that holds the pixel masks "
                             "(grayscale PNG, 255 = foreground, named <img_id>.png, <img_filename>.png or <stem>.png).")
        self.grid = int(grid)
        if self.grid < 1:
            raise CacheError(f"--grid must be positive, got {grid}")
        self.input_size = default_input_size(self.grid) if input_size is None else int(input_size)
        if self.input_size < self.grid or self.input_size % self.grid:
            raise CacheError(f"--input-size {self.input_size} is not a multiple of --grid {self.grid}: patches must "
                             f"be whole pixels (e.g. --input-size {default_input_size(self.grid)} "
                             f"for --grid {self.grid})")
        self.patch = self.input_size // self.grid
        self.files: list[Path | None] = []
        self.sha256: str | None = None

    def __repr__(self) -> str:
        return f"GroundTruthMasks({str(self.path)!r}, grid={self.grid}, input_size={self.input_size})"

    def prepare(self, ds: Dataset) -> None:
        """Find the mask file of every image (None when there is none) and fingerprint them all.

        Raises :class:`CacheError` when not one image has a mask (a wrong folder or naming),
        before anything is written; images without one are skipped with the reason later.
        """
        from dali_abs.errors import LabelsError
        from dali_abs.labels import find_mask_file

        h = hashlib.sha256()
        self.files = []
        for s in ds.samples:
            try:
                f = find_mask_file(self.path, s)
                st = f.stat()
                stamp = f"{self._rel(f)}\t{st.st_size}:{st.st_mtime_ns}"
            except (LabelsError, OSError):
                f, stamp = None, "missing"
            self.files.append(f)
            h.update(f"{s.id}\t{stamp}\n".encode())
        self.sha256 = h.hexdigest()
        if ds.samples and not any(self.files):
            raise CacheError(f"--masks {self.path}: no mask file for any of the {len(ds.samples)} images of "
                             f"{ds.root}; {self._missing_reason(ds.samples[0])}. Pass the folder that holds the "
                             "masks, named <img_id>.png, <img_filename with .png> or <image stem>.png.")

    def _rel(self, f: Path) -> str:
        try:
            return f.relative_to(self.path).as_posix()
        except ValueError:
            return str(f)

    def _missing_reason(self, s: Sample) -> str:
        from dali_abs.errors import LabelsError
        from dali_abs.labels import find_mask_file

        try:
            find_mask_file(self.path, s)
        except LabelsError as e:
            return str(e)
        return f"the mask file of image {s.id!r} was not there when the run started"

    def plan_entry(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256, "grid": self.grid,
                "input_size": self.input_size, "found": sum(f is not None for f in self.files),
                "missing": sum(f is None for f in self.files),
                "soft_value": "fraction of the patch's mask pixels that are foreground (value > 127)"}

    def coverage(self, index: int, s: Sample, image_size: tuple[int, int] | None) -> tuple[np.ndarray | None, str]:
        """(float32 [R, R] foreground fraction, mask path relative to the folder), or (None, reason)."""
        from dali_abs.errors import DaliAbsError
        from dali_abs.files import read_mask
        from dali_abs.labels import patch_coverage

        f = self.files[index] if index < len(self.files) else None
        if f is None:
            return None, (f"no ground-truth mask: {self._missing_reason(s)}. To include the image, add its mask "
                          "(grayscale PNG, 255 = foreground) and rebuild into a new --out")
        try:
            mask = read_mask(f)
        except Exception as e:  # PIL raises many types (decompression bomb, memory): skip with the reason, never crash
            why = str(e) if isinstance(e, DaliAbsError) else f"{f}: {type(e).__name__}: {e}"
            return None, f"unreadable ground-truth mask: {why}. Replace it with a grayscale PNG (255 = foreground)"
        h, w = mask.shape
        if min(h, w) < self.grid:
            return None, (f"ground-truth mask {f} is {w}x{h} px, smaller than the {self.grid} x {self.grid} grid; "
                          "use a smaller --grid or a mask at the image's size")
        if image_size is not None:
            iw, ih = image_size
            if abs((w / h) / (iw / ih) - 1.0) > MASK_ASPECT_TOLERANCE:
                return None, (f"ground-truth mask {f} is {w}x{h} px but its image is {iw}x{ih} px (another aspect "
                              "ratio): not this image's mask? Replace it with the mask at the image's size")
        return patch_coverage(mask, self.grid), self._rel(f)


class Timer:
    def __init__(self, stages: tuple[str, ...] = STAGES):
        self.seconds = dict.fromkeys(stages, 0.0)

    def add(self, stage: str, t0: float) -> float:
        t = time.perf_counter()
        self.seconds[stage] += t - t0
        return t


def make_plan(ds: Dataset, seg, inp, cfg: PrecomputeConfig) -> dict:
    """The settings of a run; ``seg`` is a :class:`~dali_abs.segmenter.inference.Segmenter` or a
    prepared :class:`GroundTruthMasks` (recorded as ``models.masks`` instead of ``models.segmenter``)."""
    n = len(ds.samples)
    if isinstance(seg, GroundTruthMasks):
        source = {"masks": seg.plan_entry()}
    else:
        source = {"segmenter": {"path": str(seg.path), "sha256": sha256_file(seg.path), "grid": seg.grid,
                                "input_size": seg.input_size}}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "dataset": {"root": str(ds.root), "layout": ds.layout, "fingerprint": ds.fingerprint(), "images": n,
                    "ignored": list(ds.ignored), **({"allow_outside": True} if ds.allow_outside else {})},
        "models": {
            **source,
            "inpainter": {"path": str(inp.path), "sha256": sha256_file(inp.path), "fill": inp.fill_name},
        },
        "grid": seg.grid, "work_size": seg.input_size,
        "thresholds": plan_thresholds(seg, cfg),
        "mask_encoding": "uint8 [R,R] round(255 * foreground probability), one deflated .masks.npz per chunk "
                         "(np.load(path)['masks'])",
        "fill_encoding": {"format": "jpeg", "quality": cfg.quality,
                          "huffman": "per fill the smaller: the standard tables (held once in the chunk record) "
                                     "or tables optimised for the fill (stored with it)",
                          "resolution": "work_size, or the source's where smaller",
                          "placeholder_ring": PLACEHOLDER_RING,
                          "placeholder": "a smooth continuation of the fill, more than placeholder_ring px "
                                         "from the loose cells (the inpainter's hole reaches that far)",
                          "region": "bounding box of the loose-mask cells, box in grid cells (r0, c0, r1, c1)",
                          "stored": "without the JPEG parts every fill of a chunk shares (held once in the chunk "
                                    "record's 'jpeg'); Cache.fill_bytes puts the JPEG back together"},
        "chunk_size": cfg.chunk_size, "chunks": (n + cfg.chunk_size - 1) // cfg.chunk_size,
        "max_pixels": cfg.max_pixels,
    }


def plan_thresholds(seg, cfg: PrecomputeConfig) -> dict:
    """The cache's thresholds: ``fill`` (loose; the fills are computed with it) from ``cfg`` when
    given, else the segmenter's recorded loose threshold; ``tight`` (the loader's default cut-out)
    the segmenter's recorded one; library defaults for a segmenter that records none; the fixed
    coverage cuts of :class:`GroundTruthMasks`. Each with its source."""
    rec = seg.thresholds
    if rec is None:
        why = (f"library default: segmenter {seg.path} records no thresholds (exported before they were "
               "chosen; retrain it, or pass your own)")
        rec = Thresholds(DEFAULT_TIGHT_THRESHOLD, DEFAULT_FILL_THRESHOLD, why, why)
    fill, fill_source = rec.loose, rec.loose_source
    if cfg.fill_threshold is not None:
        fill, fill_source = float(cfg.fill_threshold), "given to precompute (--fill-threshold)"
    return {"fill": fill, "tight": rec.tight, "fill_source": fill_source, "tight_source": rec.tight_source,
            "meaning": "foreground probability above the threshold; fill = loose mask (background probability "
                       "< 1 - fill), tight = cut-out alpha (the loader's default; SwapConfig(tight=...) overrides)"}


_PLAN_KEYS = ("format_version", "grid", "work_size", "thresholds", "mask_encoding", "fill_encoding", "chunk_size",
              "chunks", "max_pixels")


def _mask_source(plan: dict) -> tuple[str, str | None, str | None]:
    """(what produced the soft masks, its path, its hash) of a plan: a segmenter or ground-truth masks."""
    models = plan.get("models", {})
    if "masks" in models:
        return "ground-truth masks", models["masks"].get("path"), models["masks"].get("sha256")
    seg = models.get("segmenter", {})
    return "segmenter", seg.get("path"), seg.get("sha256")


def plan_differences(old: dict, new: dict) -> list[str]:
    diffs = [k for k in _PLAN_KEYS if old.get(k) != new.get(k)]
    if old.get("dataset", {}).get("fingerprint") != new["dataset"]["fingerprint"]:
        diffs.append("dataset fingerprint (the dataset changed)")
    (old_kind, old_path, old_hash), (new_kind, new_path, new_hash) = _mask_source(old), _mask_source(new)
    if old_kind != new_kind:
        diffs.append(f"masks from the {old_kind} {old_path}, now from the {new_kind} {new_path}")
    elif old_hash != new_hash:
        diffs.append("segmenter model hash" if new_kind == "segmenter" else
                     "ground-truth mask files (added, removed or changed)")
    if old.get("models", {}).get("inpainter", {}).get("sha256") != new["models"]["inpainter"]["sha256"]:
        diffs.append("inpainter model hash")
    return diffs


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"file_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _jpeg_complete(path: Path) -> bool:
    """A JPEG that ends with its end-of-image marker (trailing padding tolerated)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        n = f.tell()
        f.seek(max(0, n - 1024))
        tail = f.read()
    return b"\xff\xd9" in tail


def prepass(s: Sample, patch: int, max_pixels: int) -> tuple[str, dict]:
    """("dali" | "pil" | "skip", info) from the file header only (no full decode)."""
    from dali_abs.files import ImageError, ImageTooLarge, open_image

    info = {"id": s.id, "path": s.relpath}
    try:
        info.update(_stat(s.path))
    except OSError as e:
        return "skip", {**info, "reason": f"cannot read file: {e}"}
    try:
        with open_image(s.path, max_pixels=max_pixels) as im:
            w, h = im.size
            fmt, mode = im.format, im.mode
    except ImageTooLarge as e:
        return "skip", {**info, "reason": e.reason}
    except ImageError as e:
        return "skip", {**info, "reason": f"not a readable image: {e.reason}"}
    except Exception as e:  # PIL raises many types for broken headers
        return "skip", {**info, "reason": f"not a readable image: {type(e).__name__}: {e}"}
    info.update({"size": [w, h], "format": fmt, "mode": mode})
    if min(w, h) < patch:
        return "skip", {**info, "reason": f"too small: {w}x{h} px, smaller than one patch ({patch} px)"}
    if fmt == "JPEG":  # libjpeg decodes damaged data with a warning naming no file: skip it (as data check does)
        from dali_abs.jpeg import jpeg_defect

        defect = jpeg_defect(s.path)
        if defect:
            return "skip", {**info, "reason": defect}
    ok_modes = DALI_FORMATS.get(fmt, ())
    if mode in ok_modes and (fmt != "JPEG" or _jpeg_complete(s.path)):
        return "dali", info
    return "pil", info


class GpuDecodeError(CacheError):
    """DALI's GPU (``mixed``) decoding failed where its CPU decoding works: the GPU, not the files."""


_PROBE_JPEG = None


def gpu_decode_problem(device_id: int) -> str | None:
    """Why DALI cannot decode a JPEG on GPU ``device_id`` here (one small pipeline), or None."""
    global _PROBE_JPEG
    import io

    from nvidia.dali import fn, pipeline_def, types
    from PIL import Image

    if _PROBE_JPEG is None:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (128, 64, 32)).save(buf, format="JPEG", quality=95)
        _PROBE_JPEG = np.frombuffer(buf.getvalue(), np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
    def probe():
        data = fn.external_source(source=lambda: [_PROBE_JPEG], batch=True)
        return fn.decoders.image(data, device="mixed", output_type=types.RGB)

    try:
        pipe = probe()
        pipe.build()
        (img,) = pipe.run()
        a = img.as_cpu().as_array()
    except Exception as e:  # DALI raises RuntimeError for every setup failure
        return f"DALI cannot decode on GPU {device_id}: {str(e).strip().splitlines()[0]}"
    if a.shape != (1, 16, 16, 3) or abs(float(a.mean()) - 75) > 8:
        return f"DALI's GPU decoder returned {a.shape} with mean {float(a.mean()):.1f} for a 16 x 16 test JPEG"
    return None


def _dali_decode(paths: list[Path], size: int, batch_size: int, gpu: bool, out: np.ndarray, done: np.ndarray,
                 device_id: int = 0) -> None:
    """Decode (RGB) and resize (bilinear, antialiased) ``paths`` with DALI into ``out[i]``, setting ``done[i]``.

    Raises on the first batch DALI cannot decode; the batches finished before it stay in ``out``.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def
    def pipe_def():
        data, labels = fn.readers.file(files=[str(p) for p in paths], labels=list(range(len(paths))), name="r")
        img = fn.decoders.image(data, device="mixed" if gpu else "cpu", output_type=types.RGB)
        img = fn.resize(img, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        return img, labels

    bs = min(batch_size, len(paths))
    pipe = pipe_def(batch_size=bs, num_threads=max(1, min(4, os.cpu_count() or 1)),
                    device_id=device_id if gpu else None, prefetch_queue_depth=1)
    try:
        pipe.build()
        for _ in range((len(paths) + bs - 1) // bs):
            imgs, labels = pipe.run()
            if gpu:
                imgs = imgs.as_cpu()
            for a, l in zip(imgs.as_array(), labels.as_array().reshape(-1)):
                if not done[l]:  # the last batch wraps around to the first files
                    out[l], done[l] = a, True
    finally:
        del pipe


def decode_with_dali(paths: list[Path], size: int, batch_size: int, gpu: bool,
                     device_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, size, size, 3] and a bool [n] of the images DALI decoded.

    A batch DALI fails on (a corrupt file it was given) is left to the caller (``done`` False):
    the rest is retried in a fresh pipeline, so one bad file costs at most a batch or two.
    With ``gpu``, a batch the GPU decoder fails on is tried once on the CPU decoder: when that
    reads it, the GPU is at fault and :class:`GpuDecodeError` is raised instead.
    """
    out = np.empty((len(paths), size, size, 3), np.uint8)
    done = np.zeros(len(paths), bool)
    given_up = np.zeros(len(paths), bool)
    while True:
        rest = np.nonzero(~done & ~given_up)[0]
        if rest.size == 0:
            return out, done
        sub_out = np.empty((rest.size, size, size, 3), np.uint8)
        sub_done = np.zeros(rest.size, bool)
        try:
            _dali_decode([paths[i] for i in rest], size, batch_size, gpu, sub_out, sub_done, device_id)
        except Exception as e:  # DALI raises RuntimeError naming no file: give up on the first unfinished batch
            pending = np.nonzero(~sub_done)[0]
            batch = rest[pending[:batch_size]]
            if gpu:
                _raise_if_gpu_at_fault([paths[i] for i in batch], size, batch_size, device_id, e)
            given_up[batch] = True
        out[rest[sub_done]] = sub_out[sub_done]
        done[rest[sub_done]] = True


def _raise_if_gpu_at_fault(paths: list[Path], size: int, batch_size: int, device_id: int, error: Exception) -> None:
    out = np.empty((len(paths), size, size, 3), np.uint8)
    done = np.zeros(len(paths), bool)
    try:
        _dali_decode(paths, size, batch_size, False, out, done)
    except Exception:  # the CPU decoder fails too: a bad file, the caller's business
        return
    raise GpuDecodeError(f"DALI's GPU decoder (device {device_id}) failed on {len(paths)} image(s) that its CPU decoder "
                         f"reads (first: {paths[0]}): {str(error).strip().splitlines()[0]}")


def _pil_decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    from dali_abs.files import read_rgb

    img = read_rgb(path, max_pixels=sys.maxsize)  # the header pre-pass applied --max-pixels already
    if img.shape[:2] != (size, size):
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img


class Worker:
    """Processes chunks with one segmenter (or :class:`GroundTruthMasks`) and one inpainter session."""

    def __init__(self, ds: Dataset, seg, inp, cfg: PrecomputeConfig, root: Path, gpu: bool, device_id: int = 0):
        self.ds, self.seg, self.inp, self.cfg, self.root, self.gpu = ds, seg, inp, cfg, root, gpu
        self.device_id = device_id
        self.gt = isinstance(seg, GroundTruthMasks)
        self.timer = Timer(MASK_STAGES if self.gt else STAGES)

    def route(self, samples: list[tuple[int, Sample]]) -> tuple[list[tuple[str, dict, Sample]], list[dict]]:
        """Header pre-pass: ([(route, info, sample)] to decode, [skipped info with reason])."""
        skipped, routes = [], []
        for idx, s in samples:
            route, info = prepass(s, self.seg.patch, self.cfg.max_pixels)
            info = {"index": idx, **info, "label": s.label, "split": s.split}
            if route == "skip":
                skipped.append(info)
            else:
                routes.append((route, info, s))
        return routes, skipped

    def read_masks(self, routes: list[tuple[str, dict, Sample]]) -> tuple[list, dict[int, np.ndarray], list[dict]]:
        """Ground-truth masks of the routed images: (routes that have one, {index: coverage}, skipped)."""
        keep, soft, skipped = [], {}, []
        for r in routes:
            info, s = r[1], r[2]
            cov, what = self.seg.coverage(info["index"], s, info.get("size"))
            if cov is None:
                skipped.append({**info, "reason": what})
            else:
                info["mask_file"] = what
                soft[info["index"]] = cov
                keep.append(r)
        return keep, soft, skipped

    def decode(self, routes: list[tuple[str, dict, Sample]]) -> tuple[list[dict], np.ndarray, list[dict]]:
        S = self.seg.input_size
        skipped = []
        dali_items = [(i, r) for i, r in enumerate(routes) if r[0] == "dali"]
        images = np.empty((len(routes), S, S, 3), np.uint8)
        ok = np.ones(len(routes), bool)
        pil_rows = [i for i, r in enumerate(routes) if r[0] == "pil"]
        if dali_items:
            arr, ok_dali = self.decode_dali([r[2].path for _, r in dali_items], S)
            for (i, r), a, good in zip(dali_items, arr, ok_dali):
                if good:
                    images[i] = a
                else:  # DALI failed on its batch: PIL decodes it or names the error
                    routes[i] = ("pil", r[1], r[2])
                    pil_rows.append(i)
        for i in pil_rows:
            try:
                images[i] = _pil_decode(routes[i][2].path, S)
            except Exception as e:
                ok[i] = False
                skipped.append({**routes[i][1], "reason": f"cannot decode: {e}"})
        for i, r in enumerate(routes):
            r[1]["decoder"] = r[0]
        entries = [routes[i][1] for i in range(len(routes)) if ok[i]]
        return entries, images[ok], skipped

    def decode_dali(self, paths: list[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`decode_with_dali` on the GPU when asked; a GPU that fails raises for device
        "cuda" and, for "auto", warns once and decodes on the CPU from then on."""
        try:
            return decode_with_dali(paths, size, self.cfg.batch_size, self.gpu, self.device_id)
        except GpuDecodeError as e:
            if self.cfg.device == "cuda":
                raise CacheError(f"{e}. Use --device cpu (device='cpu'), or fix the GPU setup") from None
            _warn_cpu_decode(str(e))
            self.gpu = False
            return decode_with_dali(paths, size, self.cfg.batch_size, False)

    def process(self, k: int, samples: list[tuple[int, Sample]]) -> dict:
        t = time.perf_counter()
        routes, skipped = self.route(samples)
        soft = None
        if self.gt:  # read the masks first: an image without one is not decoded
            t = self.timer.add("decode", t)
            routes, soft, no_mask = self.read_masks(routes)
            skipped += no_mask
            t = self.timer.add("masks", t)
        entries, images, bad = self.decode(routes)
        skipped = sorted(skipped + bad, key=lambda d: d["index"])
        x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        t = self.timer.add("decode", t)
        R = self.seg.grid
        if soft is not None:
            prob = np.stack([soft[e["index"]] for e in entries]) if entries else np.zeros((0, R, R), np.float32)
            masks = quantize(prob)
            t = self.timer.add("masks", t)
        else:
            with _naming_chunk(k, entries):
                prob = self.seg.predict(x) if len(x) else np.zeros((0, 1, R, R), np.float32)
            masks = quantize(prob[:, 0])
            t = self.timer.add("segmenter", t)
        loose = threshold_mask(masks, self.cfg.fill_threshold)
        hole = np.stack([fill_hole(cells, R, self.seg.input_size, e["size"][::-1]) for e, cells in zip(entries, loose)]) \
            if entries else np.zeros((0, 1, self.seg.input_size, self.seg.input_size), np.float32)
        with _naming_chunk(k, entries):
            filled = self.inp.fill(x, hole) if len(x) else x
        filled_u8 = np.clip(np.rint(filled * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        t = self.timer.add("inpainter", t)
        fills = []
        for e, cells, img in zip(entries, loose, filled_u8):
            r0, c0, r1, c1 = bounding_box(cells)
            e["box"] = [r0, c0, r1, c1]
            if r1 > r0:
                tile = fill_tile(img, cells, (r0, c0, r1, c1), R, e["size"][::-1])
                fills.append(encode_fill(tile, self.cfg.quality))
            else:
                fills.append(None)
        t = self.timer.add("encode", t)
        rec = write_chunk(self.root, k, entries, masks, fills, skipped)
        self.timer.add("write", t)
        return rec


def _warn_cpu_decode(why: str) -> None:
    import warnings

    warnings.warn(f"precompute decodes on the CPU: {why}", RuntimeWarning, stacklevel=3)


def decode_on_gpu(device: str) -> tuple[bool, int | None]:
    """(decode with DALI on the GPU?, CUDA device ordinal) for PrecomputeConfig.device: "cuda"
    must work (raises with the reason), "auto" uses the GPU when it works (warns once when a
    device is there but decoding on it fails), "cpu" never."""
    from dali_abs.devices import cuda_device_count, local_device

    if device == "cpu":
        return False, None
    device_id = local_device()
    if device_id is None:
        if device == "cuda":
            raise CacheError(f"device 'cuda', but CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides "
                             "every GPU; unset it, or use --device cpu")
        return False, None
    count, why = cuda_device_count()
    if count == 0:
        if device == "cuda":
            raise CacheError(f"device 'cuda', but there is no CUDA device here: {why}. Use --device cpu")
        return False, None
    problem = gpu_decode_problem(device_id)
    if problem is not None:
        if device == "cuda":
            raise CacheError(f"device 'cuda': {problem}. Use --device cpu, or fix the GPU setup")
        _warn_cpu_decode(problem)
        return False, None
    return True, device_id


@contextlib.contextmanager
def _naming_chunk(k: int, entries: list[dict]):
    """A model output error, re-raised naming the chunk and its images; nothing of the chunk is written."""
    from dali_abs.probe import ModelOutputError

    try:
        yield
    except ModelOutputError as e:
        ids = [entries[i]["path"] for i in e.bad[:5] if i < len(entries)]
        raise CacheError(f"chunk {k} ({chunk_name(k)}): {e}, e.g. for {', '.join(ids)}. Nothing of this chunk "
                         "was written (finished chunks stay). Fix or replace the model, then rerun into a new "
                         "--out folder.") from None


def _load_models(segmenter, inpainter, device: str, batch_size: int, masks=None):
    from dali_abs.inpainter.inference import Inpainter

    if masks is not None:
        seg = masks if isinstance(masks, GroundTruthMasks) else GroundTruthMasks(masks)
    else:
        from dali_abs.segmenter.inference import Segmenter

        seg = Segmenter(segmenter, device=device, batch_size=batch_size)
    inp = Inpainter(inpainter, device=device, batch_size=batch_size)
    return seg, inp


def precompute(ds: Dataset, segmenter, inpainter, out: str | os.PathLike, cfg: PrecomputeConfig = PrecomputeConfig(),
               shard: tuple[int, int] = (0, 1), progress: bool = True, merge_when_done: bool = True,
               masks: GroundTruthMasks | str | os.PathLike | None = None) -> dict:
    """Compute (or finish) this shard's chunks of the cache at ``out``; merge when every chunk is done.

    The soft masks come from ``segmenter`` (an ONNX file) or, with ``segmenter=None``, from
    ground-truth pixel masks: ``masks`` is a :class:`GroundTruthMasks` (grid and work size of your
    choice) or a folder (16 x 16 grid at 224 px). Exactly one of the two.
    The models (and the masks folder) are checked before anything is written.
    Returns a summary: images processed now / already done, skipped, seconds, images/s,
    time per stage, and whether the cache is complete (``manifest`` path).
    """
    from tqdm import tqdm

    cfg.check()
    if (segmenter is None) == (masks is None):
        raise CacheError("give exactly one source of the soft masks: a segmenter ONNX file (--segmenter seg.onnx) "
                         "or a folder of ground-truth pixel masks (--masks DIR)"
                         + (", not both" if masks is not None else ""))
    t_start = time.perf_counter()
    # refuses a wrong model or masks folder before any work
    seg, inp = _load_models(segmenter, inpainter, cfg.device, cfg.batch_size, masks)
    gpu, device_id = decode_on_gpu(cfg.device)  # the device LOCAL_RANK points at, as for onnxruntime
    root = ds.check_output(out, "--out")
    if isinstance(seg, GroundTruthMasks):
        seg.prepare(ds)  # finds every image's mask file; refuses a folder with none before anything is written
    plan = make_plan(ds, seg, inp, cfg)
    cfg = replace(cfg, fill_threshold=plan["thresholds"]["fill"])  # the fills use the recorded threshold
    old_path = root / PLAN
    if old_path.is_file():
        old = read_json(old_path, "cache plan")
        diffs = plan_differences(old, plan)
        version = old.get("format_version")
        if type(version) is int and version != FORMAT_VERSION:  # whatever else differs, no chunk can be added
            raise CacheError(f"{root}: written by cache format {version}; this version writes format "
                             f"{FORMAT_VERSION}: use a new --out or delete {root}")
        if diffs:
            raise CacheError(f"{root}: holds a cache made with other settings ({'; '.join(diffs)}). "
                             "Use a new --out folder, or delete this one to rebuild.")
    else:
        write_json(old_path, plan)
    (root / CHUNKS).mkdir(parents=True, exist_ok=True)
    i, n = shard
    mine = [k for k in range(plan["chunks"]) if k % n == i]
    worker = Worker(ds, seg, inp, cfg, root, gpu, device_id or 0)
    cs = cfg.chunk_size
    todo, already = [], 0
    for k in mine:  # temp files a killed run left for this shard's chunks (other shards' are theirs)
        for tmp in (root / CHUNKS).glob(f".{chunk_name(k)}.*"):
            tmp.unlink(missing_ok=True)
    for k in mine:
        rec = read_chunk_record(root, k)
        if rec is not None and _chunk_files_ok(root, rec):
            already += len(rec["entries"]) + len(rec["skipped"])
        else:
            todo.append(k)
    n_todo = sum(len(ds.samples[k * cs:(k + 1) * cs]) for k in todo)
    done = skipped = 0
    t0 = time.perf_counter()
    with tqdm(total=n_todo, desc=f"precompute {i}/{n}" if n > 1 else "precompute", unit="img",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for k in todo:
            samples = list(enumerate(ds.samples[k * cs:(k + 1) * cs], start=k * cs))
            rec = worker.process(k, samples)
            done += len(samples)
            skipped += len(rec["skipped"])
            bar.update(len(samples))
    seconds = time.perf_counter() - t0
    write_json(root / PARTS / part_name(i, n), {"shard": i, "shards": n, "chunks": mine})
    summary = {"out": str(root), "shard": f"{i}/{n}", "images_total": len(ds.samples), "processed": done,
               "already_done": already, "skipped_now": skipped, "seconds": round(seconds, 3),
               "images_per_s": round(done / seconds, 2) if done and seconds > 0 else None,
               "stage_seconds": {k: round(v, 3) for k, v in worker.timer.seconds.items()},
               "setup_seconds": round(t0 - t_start, 3),
               # where the work ran: DALI's decoder (a GPU fallback is warned about) and onnxruntime's providers
               "devices": {"decode": f"gpu {worker.device_id}" if worker.gpu else "cpu",
                           **{name: m.providers[0] for name, m in (("segmenter", seg), ("inpainter", inp))
                              if getattr(m, "providers", None)}},
               "thresholds": plan["thresholds"], "complete": False, "manifest": None}
    if merge_when_done and all(read_chunk_record(root, k) is not None for k in range(plan["chunks"])):
        manifest = merge(root)
        summary.update(complete=True, manifest=str(root / MANIFEST), counts=manifest["counts"])
    return summary


def _chunk_files_ok(root: Path, rec: dict) -> bool:
    """Cheap check that a finished chunk's data files are those its record names."""
    for key in ("fills", "masks"):
        p = root / CHUNKS / rec[key]
        if not p.is_file() or p.stat().st_size != rec[f"{key}_bytes"]:
            return False
    return True


def merge(root: str | os.PathLike, sources: list[str | os.PathLike] = ()) -> dict:
    """Join the chunks of every shard into ``manifest.json``; returns the manifest.

    ``sources``: other cache folders (e.g. one per node without a shared file system) whose
    chunk files are copied in first; their plan must equal this one's.
    """
    root = Path(root)
    plan = read_json(root / PLAN, "cache plan (is this a cache folder?)")
    for src in map(Path, sources):
        other = read_json(src / PLAN, "cache plan")
        diffs = plan_differences(plan, other)
        if diffs:
            raise CacheError(f"{src}: made with other settings than {root} ({'; '.join(diffs)}); cannot merge")
        for f in sorted((src / CHUNKS).glob("c*.json")):
            if (root / CHUNKS / f.name).is_file():
                continue
            (root / CHUNKS).mkdir(parents=True, exist_ok=True)
            rec = read_json(f, "chunk record")
            for name in (rec["fills"], rec["masks"], f.name):  # the record last: it marks the chunk finished
                tmp = root / CHUNKS / f".{name}.merge.tmp"
                shutil.copyfile(src / CHUNKS / name, tmp)
                os.replace(tmp, root / CHUNKS / name)
    records, missing = [], []
    for k in range(plan["chunks"]):
        rec = read_chunk_record(root, k)
        (missing.append(k) if rec is None else records.append(rec))
    if missing:
        parts = sorted(p.name for p in (root / PARTS).glob("shard-*.json")) if (root / PARTS).is_dir() else []
        raise CacheError(f"{root}: {len(missing)} of {plan['chunks']} chunks are not finished (first: "
                         f"{', '.join(map(str, missing[:5]))}); finished shard parts: {parts or 'none'}. "
                         "Run (or rerun) the missing shards with the same arguments, then merge again.")
    seen: dict[int, int] = {}
    skipped, cached, filled, src_bytes, chunks = [], 0, 0, 0, []
    fill_bytes = mask_bytes = rec_bytes = 0
    for rec in records:
        k = rec["chunk"]
        for e in rec["entries"] + rec["skipped"]:
            if e["index"] in seen:
                raise CacheError(f"{root}: image {e['id']!r} appears in chunks {seen[e['index']]} and {k}")
            seen[e["index"]] = k
        cached += len(rec["entries"])
        filled += sum(1 for e in rec["entries"] if e["fill"])
        src_bytes += sum(e["file_bytes"] for e in rec["entries"])
        skipped += [{"id": e["id"], "path": e["path"], "reason": e["reason"]} for e in rec["skipped"]]
        rpath = root / CHUNKS / f"{chunk_name(k)}.json"
        rb = rpath.stat().st_size
        fill_bytes, mask_bytes = fill_bytes + rec["fills_bytes"], mask_bytes + rec["masks_bytes"]
        rec_bytes += rb
        chunks.append({"chunk": k, "images": len(rec["entries"]), "skipped": len(rec["skipped"]),
                       "fills_sha256": rec["fills_sha256"], "masks_sha256": rec["masks_sha256"],
                       "record_sha256": sha256_file(rpath)})
    n = plan["dataset"]["images"]
    if len(seen) != n:
        raise CacheError(f"{root}: chunks hold {len(seen)} images, the plan {n}")
    total = fill_bytes + mask_bytes + rec_bytes
    manifest = {**plan,
                "counts": {"images": n, "cached": cached, "skipped": len(skipped), "filled": filled},
                "bytes": {"total": total, "fills": fill_bytes, "masks": mask_bytes, "records": rec_bytes,
                          "per_image": round(total / cached, 1) if cached else None,
                          "data_per_image": round((fill_bytes + mask_bytes) / cached, 1) if cached else None,
                          "source_per_image": round(src_bytes / cached, 1) if cached else None,
                          "ratio_to_source": round(total / src_bytes, 4) if src_bytes else None},
                "skipped": skipped, "ignored": plan["dataset"].get("ignored", []), "chunk_files": chunks}
    write_json(root / MANIFEST, manifest)
    return manifest


def config_dict(cfg: PrecomputeConfig) -> dict:
    return asdict(cfg)
