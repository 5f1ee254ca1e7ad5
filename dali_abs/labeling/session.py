"""State of a labelling session: which images, in which order, the labels so far, predictions.

Every label change is written at once (atomically, via :func:`dali_abs.labels.write_labels`)
to the labels file, in the format of :mod:`dali_abs.labels`; the file is the only state that
survives a restart. On start the file is read back: images labelled there come first in
the order and the session resumes at the first unlabelled image.

Image order (``order``):

- ``majority`` (default): ``count`` training images drawn at random (seeded) from the
  majority groups, as the paper does; falls back to ``random`` for datasets without places.
- ``random``: ``count`` training images drawn at random (seeded).
- ``uncertain``: the ``count`` training images the current segmenter is least sure about
  (mean ``|p - 0.5|`` over patches, ascending). Needs a model; re-ranked after a retrain.

torch and onnxruntime are imported only when a model is loaded or a retrain starts.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np

from dali_abs.dataset import Dataset, Sample
from dali_abs.errors import DaliAbsError, LabelsError
from dali_abs.files import read_text, remove_stale_temps
from dali_abs.labels import decode_grid, encode_grid, read_labels, select_for_labelling, write_labels

ORDERS = ("majority", "random", "uncertain")
DEFAULT_GRID = 16
MAX_GRID = 256


class RequestError(DaliAbsError, ValueError):
    """A request the session refuses; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _read_existing(path: Path, dataset: Dataset) -> dict[str, np.ndarray]:
    """Labels already in ``path``; a missing file or one with only the header means none."""
    if not path.exists():
        return {}
    if not path.is_file():
        raise LabelsError(f"{path}: not a file; pass a labels.csv path to --out")
    lines = [ln for ln in read_text(path, LabelsError).splitlines() if ln.strip()]
    if len(lines) <= 1 and (not lines or lines[0].replace(" ", "") == "image_id,grid,mask"):
        return {}
    return read_labels(path, dataset)


def default_retrain_path(out: Path) -> Path:
    """``labels.csv`` -> ``labels.seg.onnx`` beside it."""
    return out.with_name(out.stem + ".seg.onnx")


class LabelSession:
    """Thread-safe labelling state behind the web server (see the module docstring)."""

    def __init__(self, dataset: Dataset, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
                 count: int = 200, order: str = "majority", grid: int | None = None, seed: int = 0,
                 device: str = "auto", retrain_epochs: int = 15, retrain_out: str | os.PathLike | None = None,
                 input_size: int | None = None, threads: int | None = None, backbone: str | None = None,
                 backbone_weights: str | os.PathLike | None = None):
        if order not in ORDERS:
            raise LabelsError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
        if count < 1:
            raise LabelsError(f"--count must be positive, got {count}")
        if retrain_epochs < 1:
            raise LabelsError(f"--retrain-epochs must be positive, got {retrain_epochs}")
        self.dataset = dataset
        dataset.check_output(out, "--out")
        self.out = Path(out)
        self.device = device
        self.seed = seed
        self.retrain_epochs = retrain_epochs
        self.retrain_out = Path(retrain_out) if retrain_out else default_retrain_path(self.out)
        dataset.check_output(self.retrain_out, "--retrain-out")
        self.threads = threads
        self.backbone = backbone or None
        self.backbone_weights = backbone_weights
        if self.backbone:  # a missing extra or weights file fails at start, not at the first retrain
            from dali_abs.models.backbones import check

            try:
                check(self.backbone)
            except ValueError as e:
                raise LabelsError(f"--backbone: {e}") from None
            if backbone_weights is not None and not Path(backbone_weights).is_file():
                raise LabelsError(f"{backbone_weights}: backbone weights file not found")
        self.notes: list[str] = []
        self._lock = threading.RLock()
        self._by_id = dataset.by_id()
        stale = remove_stale_temps(self.out)  # left by a server killed mid-write (kill -9)
        if stale:
            self.notes.append(f"removed {len(stale)} unfinished temporary file(s) of {self.out.name} that a killed "
                              f"session left: {', '.join(p.name for p in stale)}")
        self.labels: dict[str, np.ndarray] = _read_existing(self.out, dataset)

        self._model = None  # (Segmenter, version, {image_id: probabilities}) or None
        self.model_path: Path | None = None
        self.model_version = 0
        if model is not None:
            self._load_model(Path(model))
        file_grid = next(iter(self.labels.values())).shape[0] if self.labels else None
        model_grid = self.segmenter.grid if self.segmenter is not None else None
        if grid is not None and not 1 <= grid <= MAX_GRID:
            raise LabelsError(f"--grid must be in 1..{MAX_GRID}, got {grid}")
        for name, g in (("--model", model_grid), ("--grid", grid)):
            if g is not None and file_grid is not None and g != file_grid:
                raise LabelsError(f"{self.out} holds {file_grid} x {file_grid} labels but {name} asks for "
                                  f"{g} x {g}; use another --out file or {'a model of that grid' if name == '--model' else f'--grid {file_grid}'}")
        if grid is not None and model_grid is not None and grid != model_grid:
            raise LabelsError(f"--grid {grid} differs from the model's {model_grid} x {model_grid} grid; "
                              "drop --grid (the model's grid is used)")
        self.grid = file_grid or model_grid or grid or DEFAULT_GRID
        self.input_size = input_size or (self.segmenter.input_size if self.segmenter is not None else None)

        if order == "uncertain" and self.segmenter is None:
            raise LabelsError("--order uncertain needs a segmenter: pass --model seg.onnx")
        if order == "majority" and not dataset.has_groups:
            self.notes.append(f"{dataset.root} has no place column, so no groups: drawing images at random "
                              "from the training split instead of from the majority groups")
            order = "random"
        self.order_mode = order
        pool = self._pool()
        if count > len(pool):
            self.notes.append(f"--count {count} is more than the {len(pool)} candidate images; labelling all of them")
            count = len(pool)
        self.target = count
        self.ids: list[str] = []
        self._rebuild_order()

        self.retrain_state: dict = {"state": "idle"}
        self._retrain_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ order
    def _pool(self) -> list[Sample]:
        if self.order_mode == "majority":
            return select_for_labelling(self.dataset, None, True, self.seed)
        return self.dataset.split("train")

    def _uncertainty(self, samples: list[Sample]) -> np.ndarray:
        """Mean |p - 0.5| per image under the current model (lower = less sure)."""
        probs = self._predict_many([s.id for s in samples])
        return np.array([float(np.abs(probs[s.id] - 0.5).mean()) for s in samples])

    def _rebuild_order(self) -> None:
        """Labelled images first (file order), then unlabelled candidates up to the target."""
        need = max(0, self.target - len(self.labels))
        pool = [s for s in self._pool() if s.id not in self.labels]
        if self.order_mode == "uncertain":
            scores = self._uncertainty(pool)
            chosen = [pool[i] for i in np.argsort(scores, kind="stable")[:need]]
        else:
            # The same seeded draw as `dali-abs labels from-masks`, so a restart shows the same images.
            n_pool = len(self._pool())
            drawn = select_for_labelling(self.dataset, None if self.target >= n_pool else self.target,
                                         self.order_mode == "majority", self.seed)
            chosen = [s for s in drawn if s.id not in self.labels]
            if len(chosen) < need:  # labels of other images used up part of the draw: top up in pool order
                have = {s.id for s in chosen}
                chosen += [s for s in pool if s.id not in have][:need - len(chosen)]
            chosen = chosen[:need]
        with self._lock:
            self.ids = list(self.labels) + [s.id for s in chosen if s.id not in self.labels]
            self._index = {k: i for i, k in enumerate(self.ids)}

    # ------------------------------------------------------------------ model
    def _load_model(self, path: Path) -> None:
        from dali_abs.segmenter.inference import Segmenter

        seg = Segmenter(path, device=self.device)
        with self._lock:
            self.model_path = path
            self.model_version += 1
            self._model = (seg, self.model_version, {})  # swapped as one: no stale predictions

    @property
    def segmenter(self):
        m = getattr(self, "_model", None)
        return m[0] if m else None

    def _predict_many(self, ids: list[str], batch: int = 64) -> dict[str, np.ndarray]:
        seg, _, cache = self._model
        todo = [k for k in ids if k not in cache]
        for i in range(0, len(todo), batch):
            part = todo[i:i + batch]
            probs = seg.predict_files([self._by_id[k].path for k in part])[:, 0]
            for k, p in zip(part, probs):
                cache[k] = p
        return {k: cache[k] for k in ids}

    # ------------------------------------------------------------------ API
    def check_id(self, image_id: str) -> str:
        if image_id not in self._index:
            raise RequestError(f"unknown image id {image_id!r} (not in this labelling session)", 404)
        return image_id

    def first_unlabelled(self) -> int:
        for i, k in enumerate(self.ids):
            if k not in self.labels:
                return i
        return max(0, len(self.ids) - 1)

    def counter(self) -> dict:
        return {"labelled": len(self.labels), "target": self.target}

    def state(self) -> dict:
        with self._lock:
            return {
                "grid": self.grid, "target": self.target, "labelled": len(self.labels),
                "current": self.first_unlabelled(), "order": self.order_mode, "out": str(self.out),
                "ids": list(self.ids), "is_labelled": [k in self.labels for k in self.ids],
                "has_model": self.segmenter is not None,
                "model": str(self.model_path) if self.model_path else None,
                "model_version": self.model_version, "retrain": dict(self.retrain_state),
            }

    def image_bytes(self, index: int) -> tuple[bytes, str]:
        """The image at ``index`` of the session order, re-encoded (EXIF orientation dropped,
        so the browser shows exactly the pixels the segmenter sees): JPEG for JPEG files, else PNG."""
        from PIL import Image

        from dali_abs.files import read_rgb

        with self._lock:
            if not 0 <= index < len(self.ids):
                raise RequestError(f"image index {index} out of range 0..{len(self.ids) - 1}", 404)
            sample = self._by_id[self.ids[index]]
        rgb = read_rgb(sample.path)
        buf = io.BytesIO()
        if sample.path.suffix.lower() in (".jpg", ".jpeg"):
            Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
            return buf.getvalue(), "image/jpeg"
        Image.fromarray(rgb).save(buf, format="PNG")
        return buf.getvalue(), "image/png"

    def get_label(self, image_id: str) -> dict:
        with self._lock:
            self.check_id(image_id)
            g = self.labels.get(image_id)
            return {"id": image_id, "index": self._index[image_id], "grid": self.grid,
                    "labelled": g is not None, "mask": encode_grid(g) if g is not None else None}

    def set_label(self, image_id: str, body) -> dict:
        if not isinstance(body, dict):
            raise RequestError("body must be a JSON object {\"grid\": R, \"mask\": \"0101...\"}")
        grid, mask = body.get("grid"), body.get("mask")
        if not isinstance(grid, int) or isinstance(grid, bool):
            raise RequestError(f"grid must be an integer, got {grid!r}")
        if grid != self.grid:
            raise RequestError(f"grid {grid} differs from this session's {self.grid} x {self.grid} grid")
        if not isinstance(mask, str):
            raise RequestError("mask must be a string of R*R characters 0/1 (row-major, 1 = foreground)")
        try:
            g = decode_grid(mask, grid, "mask")
        except LabelsError as e:
            raise RequestError(str(e)) from None
        with self._lock:
            self.check_id(image_id)
            self.labels[image_id] = g
            self._save()
            return {"id": image_id, "saved": True, **self.counter()}

    def delete_label(self, image_id: str) -> dict:
        with self._lock:
            self.check_id(image_id)
            if self.labels.pop(image_id, None) is not None:
                self._save()
            return {"id": image_id, "deleted": True, **self.counter()}

    def _save(self) -> None:
        # Labels in session order, then any others the file held (none today: all are in the order).
        ordered = {k: self.labels[k] for k in self.ids if k in self.labels}
        ordered.update({k: v for k, v in self.labels.items() if k not in ordered})
        write_labels(self.out, ordered)

    def prediction(self, image_id: str) -> dict:
        with self._lock:
            self.check_id(image_id)
            if self._model is None:
                raise RequestError("no segmenter loaded: start with --model seg.onnx or run a retrain", 404)
            version = self._model[1]
        p = self._predict_many([image_id])[image_id]
        return {"id": image_id, "grid": int(p.shape[0]), "model_version": version,
                "probabilities": [round(float(v), 3) for v in p.ravel()]}

    # ------------------------------------------------------------------ retrain
    def start_retrain(self) -> dict:
        with self._lock:
            if self.retrain_state.get("state") == "running":
                raise RequestError("a retrain is already running", 409)
            if len(self.labels) < 2:
                raise RequestError(f"retraining needs at least 2 labelled images, have {len(self.labels)}", 409)
            labels = {k: v.copy() for k, v in self.labels.items()}
            self.retrain_state = {"state": "running", "started": time.time(), "images": len(labels)}
            self._retrain_thread = threading.Thread(target=self._retrain, args=(labels,), daemon=True,
                                                    name="dali-abs-retrain")
            self._retrain_thread.start()
            return dict(self.retrain_state)

    def _retrain(self, labels: dict[str, np.ndarray]) -> None:
        try:
            from dali_abs.segmenter.train import default_input_size, train_segmenter

            size = self.input_size or default_input_size(self.grid)
            res = train_segmenter(self.dataset, labels, self.retrain_out, input_size=size,
                                  epochs=self.retrain_epochs, seed=self.seed, threads=self.threads,
                                  backbone=self.backbone, backbone_weights=self.backbone_weights, progress=False)
            self._load_model(self.retrain_out)
            if self.order_mode == "uncertain":
                self._rebuild_order()  # predicts outside the lock; swaps the order under it
            with self._lock:
                self.retrain_state = {"state": "done", "finished": time.time(), "images": len(labels),
                                      "model": str(self.retrain_out), "model_version": self.model_version,
                                      "val_balanced_accuracy": res.get("val_balanced_accuracy")}
        except Exception as e:  # reported to the page; the session keeps running
            with self._lock:
                self.retrain_state = {"state": "failed", "finished": time.time(), "error": f"{type(e).__name__}: {e}"}

    def wait_retrain(self, timeout: float | None = None) -> dict:
        t = self._retrain_thread
        if t is not None:
            t.join(timeout)
        return dict(self.retrain_state)
