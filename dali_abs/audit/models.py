"""The classifier under audit, whatever it is: a TorchScript file, an ONNX file, a ``torch.nn.Module``
or any callable, behind one call.

A :class:`Classifier` takes float32 NCHW images **normalised with the model's own mean and std**
(``(x / 255 - mean) / std`` of RGB 0..255, as timm and torchvision define them) and returns the
predicted class per image, int64 ``[N]`` on the host. The model must return logits (or scores)
``[N, C]`` with C at least the dataset's classes and its class ``k`` the dataset's label ``k``;
anything else is a :class:`~dali_abs.errors.DaliAbsError` naming the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dali_abs.errors import DaliAbsError

SUFFIXES = {".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".jit": "torchscript",
            ".onnx": "onnx"}


class Classifier:
    """``classifier(images) -> int64 [N]`` predictions; ``images`` float32 NCHW torch tensor (normalised).

    ``name``: how errors and the report name the model. ``size``: the input side the model fixes
    (an ONNX graph with a static H x W), else None. ``device``: where the model wants its input
    (a torch device string); the audit moves the batches there.
    """

    def __init__(self, fn, name: str, size: int | None = None, device: str | None = None, batch: int | None = None):
        self.fn, self.name, self.size, self.device, self.batch = fn, name, size, device, batch
        self.classes = 0  # the dataset's class count, set by the audit: fewer logit columns are refused

    def __call__(self, images) -> np.ndarray:
        import torch

        if self.device is not None and images.device != torch.device(self.device):
            images = images.to(self.device)
        if self.batch is None or len(images) == self.batch:
            return self._check(self.fn(images), len(images))
        # a graph with a fixed batch: run it in slices of that batch, the last padded with its last image
        out = []
        for i in range(0, len(images), self.batch):
            x = images[i:i + self.batch]
            k = len(x)
            if k < self.batch:
                x = torch.cat([x, x[-1:].expand(self.batch - k, *x.shape[1:])])
            out.append(self._check(self.fn(x), self.batch)[:k])
        return np.concatenate(out)

    def _check(self, logits, n: int) -> np.ndarray:
        if isinstance(logits, (tuple, list)) and logits:
            logits = logits[0]
        if hasattr(logits, "detach"):
            logits = logits.detach().float().cpu().numpy()
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[0] != n:
            raise DaliAbsError(f"{self.name}: the model must return logits [N, C] for a batch of N = {n} images; "
                               f"it returned shape {tuple(logits.shape)}")
        if logits.shape[1] < self.classes:
            raise DaliAbsError(f"{self.name}: the model returns {logits.shape[1]} logits per image, but the dataset has "
                               f"{self.classes} classes (label k must be the model's class k)")
        if not np.isfinite(logits).all():
            raise DaliAbsError(f"{self.name}: the model returned NaN or infinite logits "
                               f"({int((~np.isfinite(logits)).any(1).sum())} of {n} images)")
        return logits.argmax(1).astype(np.int64)


def as_classifier(model, device: str = "cpu", threads: int | None = None) -> Classifier:
    """``model``: a :class:`Classifier`, a path to a TorchScript (``.pt``, ``.pth``, ``.ts``, ``.jit``)
    or ONNX (``.onnx``) file, a ``torch.nn.Module`` or a callable taking the images tensor.
    ``device``: the loader's, "cpu" or "gpu" (a file is loaded there; a module stays where its
    parameters are and gets its input there)."""
    if isinstance(model, Classifier):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_classifier(model, device, threads)
    import torch

    if isinstance(model, torch.nn.Module):
        param = next(iter(model.parameters()), None)
        param = next(iter(model.buffers()), None) if param is None else param
        where = str(param.device) if param is not None else _torch_device(device)

        def run(x, m=model):
            with torch.no_grad():
                return m(x)

        return Classifier(run, type(model).__name__, device=where)
    if callable(model):
        def call(x, m=model):
            with torch.no_grad():
                return m(x)

        return Classifier(call, getattr(model, "__name__", type(model).__name__), device=_torch_device(device))
    raise DaliAbsError(f"model must be a TorchScript or ONNX file, a torch.nn.Module or a callable; got "
                       f"{type(model).__name__}")


def _torch_device(device: str) -> str:
    return "cuda" if device == "gpu" else "cpu"


def load_classifier(path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> Classifier:
    """A :class:`Classifier` from a TorchScript or ONNX file (by its suffix). A missing file, an
    unknown suffix or a file that does not load is one :class:`DaliAbsError` naming it."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DaliAbsError(f"--model {path}: unknown model file type {path.suffix or '(none)'!r}; give a TorchScript "
                           f"(.pt, saved with torch.jit.save) or ONNX (.onnx) classifier")
    if not path.is_file():
        raise DaliAbsError(f"--model {path}: file not found")
    return _onnx(path, device, threads) if kind == "onnx" else _torchscript(path, device)


def _torchscript(path: Path, device: str) -> Classifier:
    import torch

    where = _torch_device(device)
    try:
        m = torch.jit.load(str(path), map_location=where)
    except Exception as e:  # torch raises RuntimeError / ValueError / its own for a file that is not TorchScript
        hint = (" (a state dict or pickled module: export it with torch.jit.script(model).save(path) or to ONNX)"
                if path.suffix.lower() in (".pt", ".pth") else "")
        raise DaliAbsError(f"--model {path}: not a TorchScript model{hint}: {_one_line(e)}") from None
    m.eval()

    def run(x):
        with torch.no_grad():
            try:
                return m(x)
            except Exception as e:  # the interpreter re-raises whatever failed inside as RuntimeError
                # its message is the TorchScript traceback, the failed operation's own error on the last line
                reason = (str(e).strip().splitlines() or [""])[-1]
                raise DaliAbsError(f"--model {path}: forward failed on a batch of shape {tuple(x.shape)} (its input "
                                   f"size? pass --size): {_one_line(reason)}") from None

    return Classifier(run, str(path), device=where)


def _onnx(path: Path, device: str, threads: int | None) -> Classifier:
    from dali_abs.runtime import create_session

    try:
        sess = create_session(path, "auto" if device == "gpu" else "cpu", threads)  # gpu: CUDA where it starts
    except DaliAbsError as e:
        raise DaliAbsError(f"--model {_one_line(e)}") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise DaliAbsError(f"--model {path}: an ONNX classifier takes one float32 NCHW input; this one takes "
                           + ", ".join(f"{i.name} {i.shape}" for i in inputs))
    shape = inputs[0].shape
    if isinstance(shape[1], int) and shape[1] != 3:
        raise DaliAbsError(f"--model {path}: input {inputs[0].name} has {shape[1]} channels; the audit feeds RGB "
                           "NCHW (3 channels)")
    if inputs[0].type != "tensor(float)":
        raise DaliAbsError(f"--model {path}: input {inputs[0].name} is {inputs[0].type}; the audit feeds "
                           "tensor(float) (float32 NCHW, normalised)")
    h, w = shape[2], shape[3]
    size = h if isinstance(h, int) and isinstance(w, int) and h == w else None
    batch = shape[0] if isinstance(shape[0], int) else None
    name, out = inputs[0].name, sess.get_outputs()[0].name

    def run(x):
        try:
            return sess.run([out], {name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})[0]
        except Exception as e:  # onnxruntime's own exception types
            raise DaliAbsError(f"--model {path}: onnxruntime failed on a batch of shape {tuple(x.shape)}: "
                               f"{_one_line(e)}") from None

    return Classifier(run, str(path), size=size, device="cpu", batch=batch)


def _one_line(e: Exception | str) -> str:
    return " ".join(str(e).split())[:400]
