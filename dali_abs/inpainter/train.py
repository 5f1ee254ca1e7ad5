"""Self-supervised training of the learned fill (:class:`dali_abs.models.inpainter.ResidualUNet`).

The network never sees an object: training holes are cut only out of **background
regions** (bool per pixel, True = background), and everything outside them (the objects,
plus a margin) is also masked in the input, without loss. Holes have the shapes of real
foreground masks (the non-background regions of other images), randomly flipped,
transposed, shifted and dilated. The loss, inside ``hole & background`` only:

- L1 between the fill and the true pixels,
- L1 between their horizontal/vertical differences (edges in the right places),
- a texture term: per image, the difference between the mean gradient magnitude of the
  fill and of the truth inside the hole (an L1-trained fill is a blur; this term is the
  eval's texture statistic, so it pulls the texture ratio towards 1).

Core: :func:`train_inpainter` takes images and background regions as arrays. Builders of
the regions: :func:`regions_from_masks` (ground-truth or any pixel masks) and
:func:`regions_from_segmenter` (a dali-abs segmenter ONNX: foreground probability per patch,
upsampled bilinearly, background where it is below ``threshold``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from dali_abs.inpainter.inference import InpainterError
from dali_abs.models import inpainter as net
from dali_abs.threads import torch_threads


def load_images(paths: Sequence[str | os.PathLike], size: int, progress: bool = False) -> np.ndarray:
    """uint8 NHWC RGB images resized (bilinear) to ``size`` x ``size``."""
    from PIL import Image
    from tqdm import tqdm

    from dali_abs.files import read_rgb

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(tqdm(paths, desc="reading images", unit="img", disable=not progress)):
        img = read_rgb(p)
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        out[i] = img
    return out


def dilate(masks: torch.Tensor, px: int) -> torch.Tensor:
    """Binary dilation of float/bool [N,1,H,W] masks by a (2 px + 1) square."""
    if px <= 0:
        return masks.float()
    return F.max_pool2d(masks.float(), 2 * px + 1, stride=1, padding=px)


def regions_from_masks(fg_masks: np.ndarray, margin: int = 2) -> np.ndarray:
    """Background regions (bool [N,H,W], True = background) from foreground masks, ``margin`` px away."""
    fg = torch.from_numpy(np.asarray(fg_masks, bool)).unsqueeze(1)
    return (dilate(fg, margin)[:, 0] < 0.5).numpy()


def read_gt_masks(root: str | os.PathLike, samples, size: int | None, column: str = "mask_filename") -> np.ndarray:
    """bool [N,size,size] foreground masks from the manifest column ``column`` (paths relative to
    the dataset ``root``; resized nearest to ``size``, or kept at the image's size when None)."""
    from PIL import Image

    from dali_abs.files import read_mask

    out = []
    for s in samples:
        rel = s.extra.get(column)
        if not rel:
            raise InpainterError(f"image {s.id} ({s.relpath}): metadata.csv has no {column!r} value; the ground-truth "
                                 "route needs pixel masks (the built-in benchmark has them). Use --segmenter instead.")
        m = read_mask(Path(root) / rel)
        if size is not None and m.shape != (size, size):
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
        out.append(m)
    return np.stack(out) if size is not None else out


def regions_from_segmenter(segmenter, paths: Sequence[str | os.PathLike], size: int, threshold: float = 0.1,
                           margin: int = 0, batch: int = 64, progress: bool = False) -> np.ndarray:
    """Background regions (bool [N,size,size]) from a :class:`~dali_abs.segmenter.inference.Segmenter`:
    foreground probability upsampled bilinearly to ``size``, background where ``< threshold``
    (default 0.1: the complement of the paper's loose mask), then ``margin`` px away from the rest."""
    from tqdm import tqdm

    if not 0.0 < threshold <= 1.0:
        raise InpainterError(f"threshold must be in (0, 1], got {threshold}")
    paths = list(paths)
    out = np.empty((len(paths), size, size), bool)
    for i in tqdm(range(0, len(paths), batch), desc="segmenting", unit="batch", disable=not progress):
        prob = torch.from_numpy(segmenter.predict_files(paths[i:i + batch]))
        up = F.interpolate(prob, size=(size, size), mode="bilinear", align_corners=False)
        fg = up >= threshold
        out[i:i + len(prob)] = (dilate(fg, margin)[:, 0] < 0.5).numpy()
    return out


def random_holes(pool: torch.Tensor, n: int, gen: torch.Generator, max_dilate: int = 3) -> torch.Tensor:
    """``n`` hole masks [n,1,H,W] (float, 1 = hole) drawn from ``pool`` (bool [M,H,W]): random pick,
    flips, transpose (square only), cyclic shift, dilation by 0..``max_dilate`` px."""
    M, H, W = pool.shape
    idx = torch.randint(0, M, (n,), generator=gen)
    h = pool[idx].unsqueeze(1).float()
    flips = torch.rand(n, 3, generator=gen) < 0.5
    out = []
    for k in range(n):
        t = h[k:k + 1]
        if flips[k, 0]:
            t = t.flip(3)
        if flips[k, 1]:
            t = t.flip(2)
        if flips[k, 2] and H == W:
            t = t.transpose(2, 3)
        dy = int(torch.randint(-H // 3, H // 3 + 1, (1,), generator=gen))
        dx = int(torch.randint(-W // 3, W // 3 + 1, (1,), generator=gen))
        t = torch.roll(t, (dy, dx), (2, 3))
        d = int(torch.randint(0, max_dilate + 1, (1,), generator=gen))
        out.append(dilate(t, d))
    return torch.cat(out)


def gradient_magnitude(x: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: (sum of |grad| over pixels whose right and lower neighbours are also in ``region``,
    count of those pixels). |grad| = sqrt(dx^2 + dy^2) per channel, channels averaged."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    r = region[:, :, :-1, :-1] * region[:, :, :-1, 1:] * region[:, :, 1:, :-1]
    mag = torch.sqrt(dx * dx + dy * dy + 1e-8).mean(1, keepdim=True)
    return (mag * r).sum((1, 2, 3)), r.sum((1, 2, 3))


def fill_loss(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor, w_grad: float,
              w_texture: float) -> tuple[torch.Tensor, dict]:
    """The training loss inside ``region`` (float [B,1,H,W]); returns (loss, parts)."""
    n = region.sum().clamp_min(1.0) * 3
    l1 = ((pred - target).abs() * region).sum() / n
    dxp, dxt = pred[..., 1:] - pred[..., :-1], target[..., 1:] - target[..., :-1]
    dyp, dyt = pred[..., 1:, :] - pred[..., :-1, :], target[..., 1:, :] - target[..., :-1, :]
    rx, ry = region[..., 1:] * region[..., :-1], region[..., 1:, :] * region[..., :-1, :]
    lg = (((dxp - dxt).abs() * rx).sum() / (rx.sum().clamp_min(1.0) * 3)
          + ((dyp - dyt).abs() * ry).sum() / (ry.sum().clamp_min(1.0) * 3))
    gp, cnt = gradient_magnitude(pred, region)
    gt, _ = gradient_magnitude(target, region)
    ok = cnt > 16
    lt = ((gp - gt).abs() / cnt.clamp_min(1.0))[ok].mean() if ok.any() else pred.sum() * 0
    loss = l1 + w_grad * lg + w_texture * lt
    return loss, {"l1": float(l1.detach()), "grad": float(lg.detach()), "texture": float(lt.detach())}


def checkpoint_path(out_onnx: str | os.PathLike) -> Path:
    return Path(str(out_onnx) + ".ckpt.pt")


def train_inpainter(images: np.ndarray, background: np.ndarray, out_onnx: str | os.PathLike, *,
                    holes: np.ndarray | None = None, epochs: int = 10, batch_size: int = 16, lr: float = 3e-3,
                    width: int = 8, seed: int = 0, w_grad: float = 0.5, w_texture: float = 0.3,
                    crop: int | None = 96, val_fraction: float = 0.1, threads: int | None = None,
                    progress: bool = True,
                    extra_metadata: dict | None = None) -> dict:
    """Train the learned fill and export it to ``out_onnx`` (weights also to ``<out_onnx>.ckpt.pt``).

    ``images``: uint8 [N,H,W,3] RGB; ``background``: bool [N,H,W], True = background (the
    only pixels ever used as targets); ``holes``: bool [M,H,W] hole shapes (default: the
    non-background regions of ``images``, i.e. foreground-shaped holes). Each training sample
    is a random ``crop`` x ``crop`` window (None: whole images) of the flipped image, its hole
    drawn at full size first. A ``val_fraction``
    of the images is held out: the returned dict has their hole L1 for the learned fill and
    for push-pull (``val_l1``, ``val_l1_pushpull``) and the texture ratios.
    """
    t0 = time.perf_counter()
    images = np.asarray(images)
    background = np.asarray(background, bool)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise InpainterError(f"images must be uint8 [N,H,W,3] RGB, got {images.dtype} {list(images.shape)}")
    if background.shape != images.shape[:3]:
        raise InpainterError(f"background regions {list(background.shape)} do not match images "
                             f"{list(images.shape[:3])}")
    N, H, W = background.shape
    if N < 2:
        raise InpainterError(f"need at least 2 images to train the fill, got {N}")
    if min(H, W) < 16:
        raise InpainterError(f"images of {W}x{H} px are too small to train on; use at least 16 px")
    frac = background.mean(axis=(1, 2))
    if float(frac.mean()) < 0.05:
        raise InpainterError(f"only {frac.mean():.1%} of the pixels are background: nothing to learn from. "
                             "Check the segmenter (or its --threshold) and the masks.")
    for name, v, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("width", width, 2)):
        if v < lo:
            raise InpainterError(f"{name} must be at least {lo}, got {v}")
    if not 0.0 <= val_fraction < 1.0:
        raise InpainterError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if crop is not None and crop < 16:
        raise InpainterError(f"crop must be at least 16 px (or None for whole images), got {crop}")
    pool = torch.from_numpy(~background if holes is None else np.asarray(holes, bool))
    if pool.ndim != 3 or tuple(pool.shape[1:]) != (H, W):
        raise InpainterError(f"holes must be bool [M,{H},{W}], got {list(pool.shape)}")
    pool = pool[pool.flatten(1).float().mean(1).gt(0.002)]  # drop empty shapes
    if len(pool) == 0:
        raise InpainterError("no hole shapes: every image is all background; pass holes= explicitly")
    with torch_threads(threads):
        return _train(images, background, pool, out_onnx, epochs, batch_size, lr, width, seed, w_grad, w_texture,
                      crop, val_fraction, progress, extra_metadata, t0)


def _train(images, background, pool, out_onnx, epochs, batch_size, lr, width, seed, w_grad, w_texture, crop,
           val_fraction, progress, extra_metadata, t0) -> dict:
    from tqdm import tqdm

    N, H, W = background.shape
    rng = np.random.default_rng(seed)
    order = rng.permutation(N)
    n_val = int(round(val_fraction * N)) if N >= 10 else 0
    val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8, converted per batch
    bg_all = torch.from_numpy(background).unsqueeze(1)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = net.ResidualUNet(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    steps_per_epoch = max(1, len(tr_idx) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15, anneal_strategy="cos")

    def batch_inputs(idx, g):
        x = x_all[idx].float() / 255.0
        bg = bg_all[idx].float()
        f = torch.rand(len(idx), 2, generator=g) < 0.5  # flips of image and its regions together
        x = torch.where(f[:, 0, None, None, None], x.flip(3), x)
        bg = torch.where(f[:, 0, None, None, None], bg.flip(3), bg)
        x = torch.where(f[:, 1, None, None, None], x.flip(2), x)
        bg = torch.where(f[:, 1, None, None, None], bg.flip(2), bg)
        hole = random_holes(pool, len(idx), g)
        fill_mask = torch.maximum(hole, 1.0 - bg)  # the hole plus everything that is not background
        region = hole * bg  # scored pixels: known background under the hole
        if crop and crop < min(H, W):  # one random window per sample (4/3 fewer pixels at 96 of 128)
            oy = torch.randint(0, H - crop + 1, (len(idx),), generator=g).tolist()
            ox = torch.randint(0, W - crop + 1, (len(idx),), generator=g).tolist()
            x, fill_mask, region = (torch.stack([t[k, :, a:a + crop, b:b + crop] for k, (a, b) in enumerate(zip(oy, ox))])
                                    for t in (x, fill_mask, region))
        return x, fill_mask, region

    # fixed validation batches (same holes every epoch)
    val_batches = []
    vg = torch.Generator().manual_seed(seed + 1)
    for i in range(0, len(val_idx), 32):
        idx = torch.from_numpy(val_idx[i:i + 32])
        val_batches.append(_val_inputs(x_all, bg_all, pool, idx, vg))

    def validate():
        model.eval()
        tot = {"l1": 0.0, "l1_pp": 0.0, "n": 0.0, "g": 0.0, "g_pp": 0.0, "g_true": 0.0}
        with torch.no_grad():
            for x, fm, reg in val_batches:
                pred = model.raw(x, fm)
                pp = model.pushpull.fill(x, fm).clamp(0, 1)
                n = float(reg.sum()) * 3
                tot["l1"] += float(((pred - x).abs() * reg).sum())
                tot["l1_pp"] += float(((pp - x).abs() * reg).sum())
                tot["n"] += n
                for key, t in (("g", pred), ("g_pp", pp), ("g_true", x)):
                    tot[key] += float(gradient_magnitude(t, reg)[0].sum())
        model.train()
        if not tot["n"]:
            return {}
        return {"val_l1": tot["l1"] / tot["n"], "val_l1_pushpull": tot["l1_pp"] / tot["n"],
                "val_texture_ratio": tot["g"] / max(tot["g_true"], 1e-8),
                "val_texture_ratio_pushpull": tot["g_pp"] / max(tot["g_true"], 1e-8)}

    ckpt = checkpoint_path(out_onnx)
    history = []
    bar = tqdm(total=epochs * steps_per_epoch, desc="inpainter", unit="step", disable=not progress)
    model.train()
    for epoch in range(epochs):
        perm = torch.from_numpy(tr_idx)[torch.randperm(len(tr_idx), generator=gen)]
        sums, seen = {"loss": 0.0, "l1": 0.0, "texture": 0.0}, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            x, fm, reg = batch_inputs(idx, gen)
            pred = model.raw(x, fm)
            loss, parts = fill_loss(pred, x, reg, w_grad, w_texture)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            sums["loss"] += float(loss.detach())
            sums["l1"] += parts["l1"]
            sums["texture"] += parts["texture"]
            seen += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{sums['loss'] / seen:.4f}", l1=f"{sums['l1'] / seen:.4f}")
        rec = {"epoch": epoch + 1, **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()}, **validate()}
        history.append(rec)
    bar.close()
    model.eval()
    info = {"width": width, "seed": seed, "epochs": epochs, "size": [H, W]}
    import io

    from dali_abs.files import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), **info}, buf)
    atomic_write_bytes(ckpt, buf.getvalue())
    meta = {"dali_abs.arch": f"ResidualUNet(width={width}) over push-pull", "dali_abs.train_images": len(tr_idx),
            "dali_abs.train_size": f"{H}x{W}", "dali_abs.seed": seed, "dali_abs.epochs": epochs}
    meta.update(extra_metadata or {})
    net.export_onnx(model, out_onnx, "learned", meta)
    last = history[-1]
    return {"out": str(out_onnx), "checkpoint": str(ckpt), "fill": "learned", "width": width,
            "train_images": int(len(tr_idx)), "val_images": int(len(val_idx)), "size": [H, W],
            "epochs": epochs, **{k: v for k, v in last.items() if k.startswith("val_")},
            "final_train_loss": last["train_loss"], "seconds": round(time.perf_counter() - t0, 2),
            "history": history}


def _val_inputs(x_all, bg_all, pool, idx, gen):
    x = x_all[idx].float() / 255.0
    bg = bg_all[idx].float()
    hole = random_holes(pool, len(idx), gen)
    return x, torch.maximum(hole, 1.0 - bg), hole * bg


def load_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network of a ``.ckpt.pt`` written by :func:`train_inpainter`; (model, info)."""
    path = Path(path)
    if not path.is_file():
        raise InpainterError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        model = net.ResidualUNet(int(ck["width"]))
        model.load_state_dict(ck["state_dict"])
    except Exception as e:
        raise InpainterError(f"{path}: not an inpainter checkpoint ({type(e).__name__}: {e})") from None
    model.eval()
    return model, {k: v for k, v in ck.items() if k != "state_dict"}


def train_from_dataset(dataset, out_onnx: str | os.PathLike, *, segmenter: str | os.PathLike | None = None,
                       gt_masks: bool = False, split: str = "train", size: int = 128, threshold: float = 0.1,
                       margin: int = 2, limit: int | None = None, device: str = "auto", progress: bool = True,
                       **kwargs) -> dict:
    """Read ``split`` of ``dataset`` at ``size`` px, build background regions with a segmenter ONNX
    (``segmenter=``) or the manifest's ground-truth masks (``gt_masks=True``), and train."""
    if (segmenter is None) == (not gt_masks):
        raise InpainterError("give exactly one source of background regions: --segmenter SEG.onnx or --gt-masks")
    if size < 16:
        raise InpainterError(f"size must be at least 16 px, got {size}")
    samples = dataset.split(split)
    if limit is not None:
        if limit < 2:
            raise InpainterError(f"limit must be at least 2, got {limit}")
        samples = samples[:limit]
    images = load_images([s.path for s in samples], size, progress)
    if segmenter is not None:
        from dali_abs.segmenter.inference import Segmenter

        seg = Segmenter(segmenter, device=device)
        bg = regions_from_segmenter(seg, [s.path for s in samples], size, threshold, margin, progress=progress)
        source = f"segmenter {Path(segmenter).name} (threshold {threshold}, margin {margin})"
    else:
        bg = regions_from_masks(read_gt_masks(dataset.root, samples, size), margin)
        source = f"ground-truth masks (margin {margin})"
    res = train_inpainter(images, bg, out_onnx, progress=progress,
                          extra_metadata={"dali_abs.regions": source}, **kwargs)
    res["regions"] = source
    res["background_fraction"] = float(bg.mean())
    return res
