"""The audit over training: BG-gap and only-bg accuracy every k epochs, ERM vs dali-abs, on the built-in benchmark.

    python benchmarks/audit_curve.py [--epochs 20] [--every 2] [--seed 0] [--out docs/audit-curve.png]

Builds what ``benchmarks/robustness.py`` builds at rho = 1.0 (no training image breaks the
correlation; the segmenter on 200 majority labels, the push-pull fill, the cache), then trains the
same SmallCNN twice through our DALI loader (64 px): plain ERM (no swap) and dali-abs (every image
swapped, the cache's chosen thresholds). An :class:`dali_abs.audit.AuditHook` audits each model before
training and every ``--every`` epochs on the majority groups' test images (the same variants every
time), and the script plots BG-gap (mixed_same - mixed_rand), only-bg and original accuracy over the
epochs to ``--out``; the curves go to stdout as one JSON object. About 8 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustness as rb  # noqa: E402  the benchmark's dataset, segmenter and cache

from dali_abs.audit import AuditHook  # noqa: E402
from dali_abs.loader.iterator import create_loader  # noqa: E402
from dali_abs.models.classifier import SmallCNN  # noqa: E402
from dali_abs.training import evaluate, fit  # noqa: E402

RUNS = (("ERM", None, (200, 60, 40)), ("dali-abs", rb.CHOSEN, (30, 100, 200)))
PANELS = (("bg_gap", "BG-gap (mixed-same - mixed-rand)"), ("only_bg", "only-bg accuracy"),
          ("original", "accuracy on the originals"))


def _plot(path: Path, curves: dict, epochs: int, note: str) -> None:
    """Three panels (BG-gap, only-bg, original accuracy) of one line per run over the epochs, PIL only."""
    from PIL import Image, ImageDraw

    from dali_abs.files import write_image
    from dali_abs.preview import font

    pw, ph, ml, mt, mb = 360, 260, 52, 34, 40
    im = Image.new("RGB", (len(PANELS) * (pw + ml) + 20, ph + mt + mb + 36), (255, 255, 255))
    d = ImageDraw.Draw(im)
    f, small = font(13), font(11)
    for k, (key, title) in enumerate(PANELS):
        x0, y0 = 10 + k * (pw + ml) + ml, mt
        lo, hi = (-0.2, 1.0) if key == "bg_gap" else (0.0, 1.0)
        X = lambda e: x0 + pw * e / max(epochs, 1)  # noqa: E731
        Y = lambda v: y0 + ph * (hi - v) / (hi - lo)  # noqa: E731
        d.text((x0, 8), title, fill=(0, 0, 0), font=f)
        for v in np.arange(lo, hi + 1e-9, 0.2):
            d.line([(x0, Y(v)), (x0 + pw, Y(v))], fill=(225, 225, 225) if abs(v) > 1e-9 else (140, 140, 140))
            d.text((x0 - 36, Y(v) - 7), f"{v:+.1f}" if key == "bg_gap" else f"{v:.1f}", fill=(60, 60, 60), font=small)
        for e in range(0, epochs + 1, max(1, epochs // 5)):
            d.line([(X(e), y0 + ph), (X(e), y0 + ph + 4)], fill=(0, 0, 0))
            d.text((X(e) - 6, y0 + ph + 6), str(e), fill=(60, 60, 60), font=small)
        d.rectangle([x0, y0, x0 + pw, y0 + ph], outline=(0, 0, 0))
        d.text((x0 + pw // 2 - 20, y0 + ph + 20), "epoch", fill=(0, 0, 0), font=small)
        for name, _, colour in RUNS:
            pts = [(X(r["epoch"]), Y(r[key] if key in r else r["accuracy"][key])) for r in curves[name]]
            d.line(pts, fill=colour, width=3)
            for p in pts:
                d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
    lx = 10 + ml
    for name, _, colour in RUNS:
        d.line([(lx, ph + mt + mb + 18), (lx + 24, ph + mt + mb + 18)], fill=colour, width=3)
        d.text((lx + 30, ph + mt + mb + 11), name, fill=(0, 0, 0), font=f)
        lx += 130
    d.text((lx + 20, ph + mt + mb + 12), note, fill=(90, 90, 90), font=small)
    write_image(path, np.asarray(im))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--every", type=int, default=2, help="audit every k epochs (and before training)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64, help="classifier input side (default 64)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/audit-curve.png")
    ap.add_argument("--workdir", default=None,
                    help="keep the dataset, cache and the final models (TorchScript erm.pt, dali-abs.pt) here "
                         "(a new or empty folder; default: a temporary one, deleted)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    build_args = argparse.Namespace(data=None, threads=args.threads, thresholds="chosen", skip_gt_masks=True,
                                    skip_learned_fill=True, methods=["erm", "pushpull"])
    curves, final = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ds, caches = rb.build(work, 1.0, build_args, all_rows=False)
        cache = caches["push-pull"]
        print(f"built dataset, segmenter and cache in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for name, swap, _ in RUNS:
            torch.manual_seed(args.seed)
            hook = AuditHook(cache, ds, every=args.every, size=args.size, device=args.device)
            loader = create_loader(cache, ds, batch_size=64, size=args.size, device=args.device, swap=swap,
                                   seed=args.seed, num_threads=2)
            model = SmallCNN(ds.n_classes)
            hook(model, 0)
            fit(model, lambda e: ((b[0]["images"].float().cpu(), b[0]["labels"].cpu()) for b in loader), args.epochs,
                on_epoch=hook)
            curves[name] = [{"epoch": r["epoch"], "bg_gap": r["bg_gap"], "only_bg": r["only_bg"],
                             "accuracy": r["accuracy"]} for r in hook.history]
            if args.workdir:
                torch.jit.script(model.eval()).save(str(work / f"{name.lower()}.pt"))
            score = evaluate(model, ds, "test", args.size)
            final[name] = {"worst_group_acc": score["worst_group_acc"], "avg_acc": score["avg_acc"]}
            last = hook.history[-1]
            print(f"{name}: epoch {last['epoch']} BG-gap {last['bg_gap']:+.3f} only-bg {last['only_bg']:.3f}, "
                  f"worst-group {score['worst_group_acc']:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
        images = hook.history[-1]["images"]
    seconds = time.perf_counter() - t0
    note = (f"built-in benchmark rho = 1, {images} majority-group test images, SmallCNN {args.size} px, seed "
            f"{args.seed}; {args.device.upper()}")
    _plot(Path(args.out), curves, args.epochs, note)
    print(f"\n{'epoch':>5}" + "".join(f"{n + ' ' + k:>22}" for n, _, _ in RUNS for k in ("BG-gap", "only-bg")))
    for i, r in enumerate(curves[RUNS[0][0]]):
        print(f"{r['epoch']:>5}" + "".join(f"{curves[n][i][k]:>22.3f}" for n, _, _ in RUNS for k in ("bg_gap", "only_bg")))
    print(f"(wrote {args.out}; {seconds:.0f} s)")
    print(json.dumps({"benchmark": "audit_curve", "epochs": args.epochs, "every": args.every, "seed": args.seed,
                      "size": args.size, "device": args.device, "seconds": round(seconds), "final": final,
                      "curves": curves}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
