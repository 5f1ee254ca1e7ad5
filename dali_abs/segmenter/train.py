"""Training the patch segmenter from a few hundred patch labels (recipe after the reference).

- Labelled images are split 80/20 (seeded) into train and validation.
- Loss: per-patch binary cross-entropy with label smoothing (targets ``y*(1-e) + e/2``,
  e = 0.1), target 1 = foreground.
- Augmentation (training images only, :mod:`dali_abs.segmenter.augment`), drawn per sample as a
  parameter dict by ``generate_params`` and applied by the deterministic ``apply_params``
  (kornia style: the same dict replays the same transform): horizontal (and optionally
  vertical) flips, shifts by whole patches (the label grid shifts with the image; the
  uncovered border is black and labelled background), colour jitter (brightness, contrast,
  saturation, hue) and random grayscale.
- AdamW with a one-cycle learning rate (10% warm-up, cosine decay); early stopping on the validation **balanced** patch
  accuracy (mean of foreground and background recall), ties broken by the lower
  validation loss; the best weights are checkpointed beside the output
  (``<out>.ckpt.pt``) and exported to ONNX at the end.
- The tight (cut-out) and loose (fill) thresholds are chosen on the validation split by
  :func:`dali_abs.segmenter.thresholds.choose_thresholds` and recorded in the checkpoint and
  the ONNX metadata (``dali_abs.tight_threshold``, ``dali_abs.loose_threshold``).
- Deterministic on the CPU for a seed (same machine, same thread count).

With a pretrained ``backbone`` (e.g. ``lite0``) the backbone is frozen by default (its
BatchNorm in eval mode): its feature maps of ``views`` augmented views per training image
are computed once (:mod:`dali_abs.segmenter.features`) and only the head trains, on those,
with the same loss, schedule and early stopping. ``finetune=True`` trains the backbone
too (learning rate x ``BACKBONE_LR_SCALE``, BatchNorm still frozen) on freshly augmented
images every step: for a GPU.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch.nn import functional as F

from dali_abs.dataset import Dataset
from dali_abs.files import atomic_write_bytes
from dali_abs.models import segmenter as net
from dali_abs.models.segmenter_contract import default_input_size
from dali_abs.segmenter.augment import AugmentConfig, apply_params, generate_params
from dali_abs.segmenter.evaluate import confusion, scores
from dali_abs.segmenter.inference import SegmenterError, read_batch
from dali_abs.segmenter.thresholds import choose_thresholds, to_metadata
from dali_abs.threads import torch_threads


BACKBONE_LR_SCALE = 0.1  # --finetune: the pretrained backbone learns 10x slower than the head
DEFAULT_VIEWS = 4


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cpu" and "cuda" as given."""
    if device not in ("auto", "cpu", "cuda"):
        raise SegmenterError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SegmenterError("device 'cuda' asked for, but torch sees no GPU here; use --device cpu or auto")
    return device


def _check_labels(dataset: Dataset, labels: Mapping[str, np.ndarray], source: str) -> int:
    if not labels:
        raise SegmenterError(f"{source}: no labelled image")
    shapes = {np.asarray(g).shape for g in labels.values()}
    if len(shapes) != 1:
        raise SegmenterError(f"{source}: label grids of several shapes {sorted(shapes)}; one grid size per run")
    shape = shapes.pop()
    if len(shape) != 2 or shape[0] != shape[1]:
        raise SegmenterError(f"{source}: a label grid must be square (R, R), got shape {shape}")
    known = dataset.by_id()
    missing = [k for k in labels if k not in known]
    if missing:
        raise SegmenterError(f"{source}: {len(missing)} labelled image(s) are not in the dataset at "
                             f"{dataset.root}, e.g. {missing[0]!r}; label images of this dataset")
    return shape[0]


def _save_checkpoint(path: Path, model: torch.nn.Module, info: dict) -> None:
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), **info}, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_path(out_onnx: str | os.PathLike) -> Path:
    return Path(str(out_onnx) + ".ckpt.pt")


def train_segmenter(dataset: Dataset, labels: Mapping[str, np.ndarray] | str | os.PathLike,
                    out_onnx: str | os.PathLike, *, input_size: int | None = None, epochs: int = 60,
                    seed: int = 0, grid: int | None = None, batch_size: int = 32, lr: float = 3e-3,
                    weight_decay: float = 1e-4, patience: int = 20, val_fraction: float = 0.2,
                    label_smoothing: float = 0.1, width: int = 24, augment: AugmentConfig = AugmentConfig(),
                    backbone: str | None = None, backbone_weights: str | os.PathLike | None = None,
                    finetune: bool = False, views: int | None = None, device: str = "auto",
                    threads: int | None = None, progress: bool = True) -> dict:
    """Train on ``labels`` (``{image_id: bool (R,R)}``, 1 = foreground, or a labels.csv path),
    write the best model to ``out_onnx`` (and its weights to ``<out_onnx>.ckpt.pt``).

    ``backbone``: ``lite0`` or ``<library>:<name>`` (:mod:`dali_abs.models.backbones`) with
    ``backbone_weights``; frozen and trained on ``views`` (default :data:`DEFAULT_VIEWS`) cached
    views per image unless ``finetune``. ``device``: torch device for training (auto = cuda when available).

    Returns the run's metrics: validation patch accuracy, balanced accuracy and IoU of the
    best epoch, epochs run, image counts, the chosen ``thresholds`` (tight, loose and their
    validation precision / recall), seconds.
    """

    from dali_abs.labels import read_labels

    t0 = time.perf_counter()
    source = str(labels) if isinstance(labels, (str, os.PathLike)) else "labels"
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels, dataset)
    r = _check_labels(dataset, labels, source)
    if grid is not None and grid != r:
        raise SegmenterError(f"{source}: the labels use a {r} x {r} grid but a {grid} x {grid} grid was asked "
                             f"for; relabel with --grid {grid} or drop the grid option")
    if backbone:
        try:
            net.backbones.check(backbone)  # a missing extra fails here, before any image is read
        except ValueError as e:
            raise SegmenterError(str(e)) from None
    elif finetune:
        raise SegmenterError("--finetune needs a pretrained --backbone (e.g. lite0)")
    views = DEFAULT_VIEWS if views is None else int(views)
    if views < 1:
        raise SegmenterError(f"views must be at least 1, got {views}")
    dev = resolve_device(device)
    size = default_input_size(r) if input_size is None else int(input_size)
    try:
        patch = net.patch_size(size, r)
    except ValueError as e:
        raise SegmenterError(f"{source}: {e}") from None
    for name, v, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("patience", patience, 1)):
        if v < lo:
            raise SegmenterError(f"{name} must be at least {lo}, got {v}")
    if not 0.0 < val_fraction < 1.0:
        raise SegmenterError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= label_smoothing < 1.0:
        raise SegmenterError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if augment.max_shift >= r:
        raise SegmenterError(f"max_shift {augment.max_shift} patches must be smaller than the grid {r}")
    ids = list(labels)
    if len(ids) < 2:
        raise SegmenterError(f"{source}: need at least 2 labelled images (train and validation), got {len(ids)}")
    with torch_threads(threads):
        return _train(dataset, labels, out_onnx, ids, r, size, patch, t0, epochs=epochs, seed=seed,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                      val_fraction=val_fraction, label_smoothing=label_smoothing, width=width, augment=augment,
                      backbone=backbone, backbone_weights=backbone_weights, finetune=finetune, views=views,
                      device=dev, threads=threads, progress=progress)


def _train(dataset, labels, out_onnx, ids, r, size, patch, t0, *, epochs, seed, batch_size, lr, weight_decay,
           patience, val_fraction, label_smoothing, width, augment, backbone, backbone_weights, finetune, views, device,
           threads, progress) -> dict:
    from tqdm import tqdm

    # 80/20 split of the labelled images, seeded.
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
    val_ids = [ids[i] for i in sorted(order[:n_val])]
    train_ids = [ids[i] for i in sorted(order[n_val:])]
    by_id = dataset.by_id()

    def load(which: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        u8 = read_batch([by_id[k].path for k in which], size, patch)
        x = torch.from_numpy(u8).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(np.stack([np.asarray(labels[k], bool) for k in which])).float().unsqueeze(1)
        return x, y

    xtr, ytr = load(train_ids)
    xva, yva = load(val_ids)
    xva_f = xva.float() / 255.0

    torch.manual_seed(seed)
    try:
        model = net.build_model(r, size, width=width, backbone=backbone, backbone_weights=backbone_weights)
    except ValueError as e:
        raise SegmenterError(str(e)) from None
    model.to(device)
    cache, val_maps = None, None
    if backbone and not finetune:
        from dali_abs.segmenter import features

        model.features.requires_grad_(False)
        runner = features.BackboneRunner(model, "auto" if device == "cuda" else "cpu", threads)
        view_gen = torch.Generator().manual_seed(seed + 1)
        cache = features.build_cache(runner, xtr, ytr, views, view_gen, augment, patch, progress)
        val_maps = features.compute_maps(runner, xva_f)
        del runner
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    elif backbone:
        head = [p for n, p in model.named_parameters() if not n.startswith("features.")]
        groups = [{"params": head}, {"params": list(model.features.parameters()), "lr": lr * BACKBONE_LR_SCALE}]
    else:
        groups = [{"params": list(model.parameters())}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_ids) / batch_size)
    total_steps = epochs * steps_per_epoch
    # OneCycleLR divides by its warm-up length (pct_start * total - 1): keep that above one step,
    # and use a constant rate for runs too short to have a cycle at all.
    if total_steps >= 4:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g.get("lr", lr) for g in groups],
                                                    total_steps=total_steps,
                                                    pct_start=max(0.1, 2.5 / total_steps), anneal_strategy="cos")
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    gen = torch.Generator().manual_seed(seed)
    eps = label_smoothing
    ckpt = checkpoint_path(out_onnx)
    arch = backbone or f"PatchCNN(width={width})"
    info = {"grid": r, "input_size": size, "width": width, "backbone": backbone, "seed": seed, "arch": arch,
            "label_smoothing": label_smoothing, "finetune": bool(finetune), "views": views if cache else None}

    best = (-1.0, math.inf)
    best_state, best_epoch, best_val = None, -1, {}
    history = []
    bar = tqdm(range(epochs), desc="segmenter", unit="epoch", disable=not progress)
    stale = 0
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(train_ids), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2 and len(perm) > 1:  # BatchNorm needs 2+ samples; the last one is dropped
                continue
            if cache is not None:  # frozen backbone: a random cached view of each image
                maps, yb = cache.batch(idx, torch.randint(cache.views, (len(idx),), generator=gen))
                logits = model.head_logits(tuple(m.to(device) for m in maps))
            else:
                params = generate_params(len(idx), gen, augment)
                xb, yb = apply_params(xtr[idx].float() / 255.0, ytr[idx], params, patch)
                logits = model(xb.to(device))
            yb = yb.to(device)
            loss = F.binary_cross_entropy_with_logits(logits, yb * (1 - eps) + eps / 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        model.eval()
        with torch.no_grad():
            if cache is not None:
                vlog = torch.cat([model.head_logits(tuple(m[i:i + 64].float().to(device) for m in val_maps))
                                  for i in range(0, len(xva_f), 64)]).cpu()
            else:
                vlog = torch.cat([model(xva_f[i:i + 64].to(device)).cpu() for i in range(0, len(xva_f), 64)])
            vloss = float(F.binary_cross_entropy_with_logits(vlog, yva * (1 - eps) + eps / 2))
        s = scores(confusion(vlog.numpy() >= 0.0, yva.numpy() >= 0.5))
        bal = s["balanced_accuracy"] if s["balanced_accuracy"] is not None else 0.0
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": vloss,
                        "val_balanced_accuracy": bal, "val_patch_iou": s["iou"]})
        if (bal, -vloss) > (best[0], -best[1]):
            best, best_epoch, stale = (bal, vloss), epoch + 1, 0
            best_val = {"val_patch_accuracy": s["accuracy"], "val_balanced_accuracy": bal,
                        "val_patch_iou": s["iou"], "val_loss": vloss}
            # A frozen backbone never changes: keep only the head's tensors (the backbone's are 14 MB).
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                          if cache is None or not k.startswith("features.")}
            _save_checkpoint(ckpt, model, {**info, "epoch": best_epoch, **best_val})
        else:
            stale += 1
        bar.set_postfix(loss=f"{total / max(seen, 1):.4f}", val_bal_acc=f"{bal:.3f}", best=f"{best[0]:.3f}")
        if stale >= patience:
            break
    bar.close()
    model.cpu().load_state_dict(best_state, strict=cache is None)
    th = _choose_thresholds(model, xva_f, yva, label_smoothing, len(val_ids))
    _save_checkpoint(ckpt, model, {**info, "epoch": best_epoch, **best_val, "thresholds": to_metadata(th)})
    net.export_onnx(model, out_onnx, r, size, {"arch": arch, "train_images": len(train_ids),
                                               "val_images": len(val_ids), "seed": seed,
                                               "best_epoch": best_epoch, **to_metadata(th),
                                               **backbone_metadata(info)},
                    label_smoothing=label_smoothing)
    return {"out": str(out_onnx), "checkpoint": str(ckpt), "grid": r, "input_size": size, "arch": arch,
            "train_images": len(train_ids), "val_images": len(val_ids), "epochs_run": len(history),
            "best_epoch": best_epoch, **best_val, "final_train_loss": history[-1]["train_loss"],
            "thresholds": {"tight": th.tight, "loose": th.loose, **th.stats},
            "seconds": round(time.perf_counter() - t0, 2), "augment": asdict(augment),
            "backbone": backbone, "finetune": bool(finetune), "views": info["views"],
            "feature_cache_mb": round(cache.nbytes / 2**20, 1) if cache is not None else None}


def backbone_metadata(info: Mapping) -> dict[str, str]:
    """ONNX metadata of the backbone (``dali_abs.backbone``, ``dali_abs.backbone_training``) from
    checkpoint info: "none" for the default network; training "frozen" or "finetune"."""
    if not info.get("backbone"):
        return {"backbone": "none", "backbone_training": "none"}
    return {"backbone": info["backbone"], "backbone_training": "finetune" if info.get("finetune") else "frozen"}


def _choose_thresholds(model, xva, yva, label_smoothing: float, n_val: int):
    """Tight and loose thresholds from the best model's foreground probability on the validation split."""
    model.eval()
    with torch.no_grad():
        prob = torch.cat([net.probability(model(xva[i:i + 64]), label_smoothing) for i in range(0, len(xva), 64)])
    return choose_thresholds(prob.numpy(), yva.numpy() >= 0.5, source=f"{n_val} validation images")


def load_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a ``.ckpt.pt`` written by :func:`train_segmenter`; (model, info)."""
    path = Path(path)
    if not path.is_file():
        raise SegmenterError(f"{path}: checkpoint not found")
    fix = "pass the <out>.ckpt.pt file written by `dali-abs segmenter train`"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise SegmenterError(f"{path}: not a segmenter checkpoint (torch.load cannot read it); {fix}") from None
    if not isinstance(ck, dict) or not {"state_dict", "grid", "input_size"} <= set(ck):
        raise SegmenterError(f"{path}: not a segmenter checkpoint (needs keys state_dict, grid, input_size); {fix}")
    info = {k: v for k, v in ck.items() if k != "state_dict"}
    grid, size = int(ck["grid"]), int(ck["input_size"])
    try:
        # The checkpoint holds every weight: the backbone is built without loading any file.
        model = net.build_model(grid, size, width=int(ck.get("width", 24)), backbone=ck.get("backbone"),
                                pretrained=False)
    except ValueError as e:
        raise SegmenterError(f"{path}: {e}") from None
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        raise SegmenterError(f"{path}: weights do not fit the network ({e})") from None
    model.eval()
    return model, info
