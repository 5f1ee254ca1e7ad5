"""``dali-abs inpainter export | train | wrap | eval``: the inpainter stage."""

from __future__ import annotations

import argparse

from dali_abs.cli_args import add_dataset_arguments, add_json_argument, dataset_from_args, print_json


def _export(args: argparse.Namespace) -> int:
    from dali_abs.inpainter.inference import Inpainter
    from dali_abs.models import inpainter as net

    net.export_onnx(net.build(args.kind), args.out, args.kind)
    Inpainter(args.out, device="cpu")  # proves the file loads and passes the contract check
    res = {"out": str(args.out), "fill": args.kind}
    print_json(res) if args.json else print(f"wrote {args.out} ({args.kind} fill, dynamic B, H, W)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dali_abs.inpainter.train import train_from_dataset

    ds = dataset_from_args(args)
    res = train_from_dataset(ds, args.out, segmenter=args.segmenter, gt_masks=args.gt_masks, split=args.split,
                             size=args.size, threshold=args.threshold, margin=args.margin, limit=args.limit,
                             device=args.device, progress=not args.json, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, width=args.width, seed=args.seed,
                             threads=args.threads)
    if args.json:
        print_json(res)
    else:
        print(f"wrote {res['out']} (learned fill, {res['train_images']} images at {res['size'][0]} px, "
              f"{res['epochs']} epochs, {res['seconds']:.0f} s; regions from {res['regions']})")
        if "val_l1" in res:
            print(f"held-out hole L1 {res['val_l1']:.4f} (push-pull {res['val_l1_pushpull']:.4f}), "
                  f"texture ratio {res['val_texture_ratio']:.2f} (push-pull {res['val_texture_ratio_pushpull']:.2f})")
    return 0


def _wrap(args: argparse.Namespace) -> int:
    from dali_abs.inpainter.wrap import wrap

    res = wrap(args.model, args.spec, args.out)
    if args.json:
        print_json(res)
    else:
        s = res["spec"]
        print(f"wrote {res['out']}: {args.model} under spec {s['name']!r} "
              f"({'fixed ' + str(s['fixed_size']) + ' px, resized' if s['fixed_size'] else 'any size'}; "
              f"{'one image per call' if res['max_batch'] == 1 else 'batched'})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from dali_abs.inpainter.evaluate import evaluate, throughput

    ds = dataset_from_args(args)
    res = evaluate(ds, args.model, split=args.split, dilate=args.dilate, device=args.device,
                   batch_size=args.batch_size, limit=args.limit, progress=not args.json)
    if args.speed:
        res["throughput"] = throughput(args.model, size=args.speed_size, batch_size=args.batch_size,
                                       device=args.device)
    if args.json:
        print_json(res)
    else:
        print(f"{res['model']} ({res['fill']}), {res['images']} {res['split']} images, holes = masks dilated "
              f"{res['dilate']} px ({res['hole_fraction']:.1%} of pixels)")
        print(f"  MAE {res['mae']:.4f} ({res['mae'] * 255:.1f} / 255)   PSNR {res['psnr']:.2f} dB   "
              f"texture ratio {res['texture_ratio']:.3f} (1.0 = right, ~0 = blur)")
        if args.speed:
            t = res["throughput"]
            print(f"  {t['images_per_s']:.1f} images/s at {t['size']} px (batch {t['batch_size']}, {t['providers'][0]})")
    return 0


def register(subparsers) -> None:
    inp = subparsers.add_parser("inpainter", help="fill the foreground hole to make clean backgrounds")
    sub = inp.add_subparsers(dest="inpainter_command", required=True, metavar="SUB")

    p = sub.add_parser("export", help="write a parameter-free fill (push-pull or mean colour) as ONNX",
                       description="Write a parameter-free fill under the dali-abs contract: image float32 "
                                   "[B,3,H,W] RGB 0..1, mask float32 [B,1,H,W] 1 = fill -> filled [B,3,H,W].")
    p.add_argument("--kind", choices=("pushpull", "mean"), default="pushpull",
                   help="pushpull (default: the recommended fast fill) or mean (mean colour, a baseline)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    add_json_argument(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("train", help="train the learned fill on DATA (self-supervised, background only)",
                       description="Train the learned fill (a small U-Net predicting a residual over push-pull) "
                                   "on holes shaped like foreground masks cut out of background regions, so it "
                                   "never sees the objects. Regions come from --segmenter (recommended) or the "
                                   "manifest's mask_filename column (--gt-masks).")
    add_dataset_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--segmenter", help="dali-abs segmenter ONNX: background = foreground probability < --threshold")
    src.add_argument("--gt-masks", action="store_true",
                     help="use the ground-truth pixel masks of metadata.csv's mask_filename column instead")
    p.add_argument("--out", required=True, help="ONNX file to write (weights also to OUT.ckpt.pt)")
    p.add_argument("--split", default="train", help="split to train on (default train)")
    p.add_argument("--size", type=int, default=128, help="training side in px; images are resized (default 128)")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="foreground probability below which a pixel is background (default 0.1, the complement "
                        "of the paper's loose mask)")
    p.add_argument("--margin", type=int, default=2, help="px kept between background and objects (default 2)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3, one-cycle)")
    p.add_argument("--width", type=int, default=8, help="channels of the first U-Net level (default 8)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images of the split only")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="segmenter device (default auto)")
    add_json_argument(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("wrap", help="adapt a foreign inpainter ONNX (LaMa, MI-GAN, AOT-GAN, ...) to the contract",
                       description="Write one ONNX file: adapter nodes to the foreign model's names, dtypes, "
                                   "ranges, mask polarity and fixed size, the foreign graph, and adapter nodes back "
                                   "(0..1 float, original size, composited). Specs: lama (512 fixed, output "
                                   "0..255), migan (uint8, mask 255 = keep, any size), aotgan (512 fixed, 0..1), "
                                   "or a JSON file with the ForeignSpec fields.")
    p.add_argument("model", metavar="MODEL.onnx", help="the foreign inpainter")
    p.add_argument("--spec", required=True, help="lama, migan, aotgan or a spec JSON file")
    p.add_argument("--out", required=True, help="ONNX file to write")
    add_json_argument(p)
    p.set_defaults(func=_wrap)

    p = sub.add_parser("eval", help="score a fill against the true clean backgrounds (built-in benchmark)",
                       description="MAE, PSNR and texture ratio inside the dilated object masks against the true "
                                   "background (needs metadata.csv columns mask_filename and background_filename).")
    add_dataset_arguments(p)
    p.add_argument("--model", required=True, help="inpainter ONNX (ours or wrapped)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--dilate", type=int, default=2, help="px the masks are dilated by to form the hole (default 2)")
    p.add_argument("--limit", type=int, default=None, help="score the first N images of the split only")
    p.add_argument("--batch-size", type=int, default=16, help="images per onnxruntime call (default 16)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="default auto")
    p.add_argument("--speed", action="store_true", help="also time images/s on random images (--speed-size px)")
    p.add_argument("--speed-size", type=int, default=224, help="side for --speed (default 224)")
    add_json_argument(p)
    p.set_defaults(func=_eval)
