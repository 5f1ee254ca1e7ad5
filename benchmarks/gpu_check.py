"""GPU check for a machine with an NVIDIA GPU, in one call (a few minutes at most).

0. The stack as found: torch (build, ``torch.cuda.is_available()``), CuPy (devices, CUDA runtime
   and driver versions, NVRTC), onnxruntime (package, the CUDA version it was built for, its
   providers, whether its CUDA provider can start), DALI, and the device the rule of
   :mod:`dali_abs.devices` picks; then the checks ``create_loader(device="gpu")`` makes.
1. the GPU backend (``dali_abs.swap.gpu``: composite.cu through CuPy) against the NumPy twin
   (``dali_abs.swap.twin``) on random batches, for every fill mode, the Waterbirds jitter and a
   feathered edge, each on one-size images and on a ragged batch with random resized crops and
   flips: fraction of pixels that differ, and that differ by more than 1 LSB;
2. kernel time of the compositing kernel alone and of the whole ``dali_abs.swap.gpu.composite`` call, and the
   effective bandwidth (bytes read + written / kernel time: images read twice — foreground and
   background — plus soft masks, fill tiles and the output) against a device-to-device copy
   (CuPy array copy) of the same number of bytes; a CuPy -> torch DLPack hand-over on the GPU;
3. the CPU loader's compositing (the kernel text compiled for the host) on this machine's CPU,
   for reference: 128 px images to 224 px, batch 64;
4. onnxruntime: the exported segmenter (untrained default network, 16 x 16 at 224 px) and the
   push-pull fill on the CUDA provider against the CPU provider (max abs difference) and
   their images/s on each, with the provider each session actually runs;
5. where DALI is installed: precompute of a small built-in dataset (the decoder and providers
   it ran on), then the GPU loader (``create_loader(device="gpu")``, swap p = 1) against a plain
   GPU DALI pipeline (mixed decode, random resized crop, flip, normalise), images/s side by side;
6. ``pytest -m gpu`` (in this process) on the loader tests.

1-2 need only CuPy with a device and NVRTC (no DALI, no torch CUDA). Everything that cannot
run prints ``skipped: <what>: <why>`` (with what to install), and a part that breaks prints
``failed: <what>: <error>`` instead of stopping the rest. Prints a table last; writes every
number to ``--out``. Runs from an installed package or from a plain clone (no install):

    python benchmarks/gpu_check.py --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Random batches come with no cache, so SwapConfig's thresholds (None = the cache's) are given:
# the paper's 0.5 / 0.1, and 0.67 / 0.1 on Waterbirds.
PAPER = dict(tight=0.5, loose=0.1)
PAPER_WB = dict(tight=0.67, loose=0.1)


def import_dali_abs() -> str:
    """Import dali_abs installed, or else from this clone (models/ lives at its top)."""
    try:
        import dali_abs.models  # noqa: F401

        return "installed package"
    except ImportError:
        for name in [m for m in sys.modules if m == "dali_abs" or m.startswith("dali_abs.")]:
            del sys.modules[name]
        sys.path.insert(0, str(ROOT))
        import dali_abs

        dali_abs.__path__.append(str(ROOT))  # dali_abs.models -> models/
        import dali_abs.models  # noqa: F401

        return f"the clone at {ROOT} (not installed)"


def ragged(rng, images, fills):
    """The same batch as DALI may hand it over: every image and tile of its own size."""
    sizes = rng.integers(images.shape[1] // 2, images.shape[1] + 1, (len(images), 2))
    imgs = [rng.integers(0, 256, (int(a), int(b), 3), dtype=np.uint8) for a, b in sizes]
    tiles = [np.ascontiguousarray(t[: int(rng.integers(2, t.shape[0] + 1)), : int(rng.integers(2, t.shape[1] + 1))])
             for t in fills]
    return imgs, tiles


def time_gpu(fn, repeats: int) -> float:
    """Median seconds of fn() on the current stream (CUDA events), after one warm-up call."""
    import cupy

    fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def _rate(fn, n_images: int, seconds: float = 3.0) -> float:
    fn()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        fn()
        k += 1
    return n_images * k / (time.perf_counter() - t0)


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: " + " ".join(str(e).split())


def _version(module: str) -> str | None:
    try:
        return __import__(module, fromlist=["__version__"]).__version__
    except Exception:  # noqa: BLE001 - absent or broken: reported as such
        return None


def environment(res, rows, origin: str) -> dict:
    """What is installed and what it can do; returns the problems by part (None: it can run)."""
    from dali_abs import devices, runtime

    env: dict = {"python": platform.python_version(), "numpy": np.__version__, "dali_abs_from": origin,
                 "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                 "LOCAL_RANK": os.environ.get("LOCAL_RANK")}
    count, why = devices.cuda_device_count()
    env["driver_devices"] = count if count else why
    env["local_device"] = devices.local_device()
    try:
        import torch

        env["torch"] = {"version": torch.__version__, "cuda_build": torch.version.cuda,
                        "cuda_available": torch.cuda.is_available(),
                        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    except ImportError as e:
        env["torch"] = f"not installed ({e})"
    try:
        import cupy

        info = {"version": cupy.__version__}
        for key, call in (("runtime", cupy.cuda.runtime.runtimeGetVersion),
                          ("driver", cupy.cuda.runtime.driverGetVersion),
                          ("devices", cupy.cuda.runtime.getDeviceCount)):
            try:
                info[key] = call()
            except Exception as e:  # noqa: BLE001
                info[key] = _one_line(e)
        try:
            from cupy.cuda import nvrtc

            info["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
        except Exception as e:  # noqa: BLE001
            info["nvrtc"] = _one_line(e)
        env["cupy"] = info
    except Exception as e:  # noqa: BLE001
        env["cupy"] = f"does not import ({type(e).__name__}: {e})"
    try:
        import onnxruntime as ort

        package, version, cuda = runtime._build_info()
        env["onnxruntime"] = {"package": package, "version": version, "built_for_cuda": cuda,
                              "providers": ort.get_available_providers()}
    except ImportError as e:
        env["onnxruntime"] = f"not installed ({e})"
    env["dali"] = _version("nvidia.dali") or "not installed"
    problems = {"cupy": devices.cupy_problem(), "torch": devices.torch_problem(),
                "onnxruntime_cuda": runtime.cuda_problem() if isinstance(env["onnxruntime"], dict) else
                env["onnxruntime"],
                "dali": None if env["dali"] != "not installed" else
                "DALI is not installed (pip install nvidia-dali-cuda120, or the README's GPU install)"}
    env["problems"] = problems
    res["environment"] = env
    print(json.dumps(env, indent=2, default=str), flush=True)
    t = env["torch"]
    rows.append(("torch", f"{t['version']}, CUDA build {t['cuda_build']}, cuda.is_available() {t['cuda_available']}"
                 if isinstance(t, dict) else t))
    c = env["cupy"]
    rows.append(("CuPy", f"{c['version']}, runtime {c.get('runtime')}, driver {c.get('driver')}, NVRTC {c.get('nvrtc')}"
                 if isinstance(c, dict) else c))
    o = env["onnxruntime"]
    rows.append(("onnxruntime", f"{o['package']} {o['version']} (built for CUDA {o['built_for_cuda']}): "
                 + ("CUDA provider can start" if problems["onnxruntime_cuda"] is None else "CUDA provider cannot start")
                 if isinstance(o, dict) else o))
    rows.append(("DALI", env["dali"]))
    for part, problem in problems.items():
        if problem:
            print(f"problem: {part}: {problem}", flush=True)
    return problems


def check_onnxruntime(res, rows, skip, rng, problems) -> None:
    import tempfile

    if problems["onnxruntime_cuda"]:
        skip("onnxruntime CUDA provider parity/speed", problems["onnxruntime_cuda"])
        return
    from dali_abs.inpainter.inference import Inpainter
    from dali_abs.models import inpainter as inet
    from dali_abs.models import segmenter as snet
    from dali_abs.segmenter.inference import Segmenter

    with tempfile.TemporaryDirectory() as tmp:
        seg_path, fill_path = Path(tmp) / "seg.onnx", Path(tmp) / "fill.onnx"
        snet.export_onnx(snet.PatchCNN(16, 224).eval(), seg_path, 16, 224, label_smoothing=0.1)
        inet.export_onnx(inet.build("pushpull"), fill_path, "pushpull")
        x = rng.random((64, 3, 224, 224), dtype=np.float32)
        m = (rng.random((64, 1, 224, 224)) < 0.3).astype(np.float32)
        # device="cuda" raises unless the session really runs on CUDAExecutionProvider
        seg_cpu, seg_gpu = Segmenter(seg_path, device="cpu"), Segmenter(seg_path, device="cuda")
        inp_cpu, inp_gpu = Inpainter(fill_path, device="cpu"), Inpainter(fill_path, device="cuda")
        res["onnxruntime_providers_in_use"] = {"segmenter": seg_gpu.providers, "inpainter": inp_gpu.providers}
        for name, a, b, call in (("segmenter", seg_cpu, seg_gpu, lambda s: s.predict(x)),
                                 ("push-pull", inp_cpu, inp_gpu, lambda s: s.fill(x, m))):
            err = float(np.abs(call(a) - call(b)).max())
            cpu_ips, gpu_ips = _rate(lambda: call(a), 64, 2.0), _rate(lambda: call(b), 64, 2.0)
            res["parity"][f"onnxruntime {name}"] = {"max_abs": err}
            res["timing"][f"onnxruntime {name} img/s"] = {"cpu": cpu_ips, "cuda": gpu_ips}
            rows.append((f"onnxruntime {name} {b.providers[0]} vs CPU", f"max abs diff {err:.1e}; "
                                                                        f"{gpu_ips:,.0f} vs {cpu_ips:,.0f} img/s at 224 px"))


def check_dali_loader(res, rows, skip, rng, problems) -> None:
    import tempfile

    missing = [problems[k] for k in ("dali", "torch", "cupy") if problems[k]]
    if missing:
        skip("precompute on the GPU and DALI GPU loader throughput", "; ".join(missing))
        return
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    from dali_abs.cache.precompute import PrecomputeConfig, precompute
    from dali_abs.dataset import load_dataset
    from dali_abs.devices import local_device
    from dali_abs.loader.iterator import create_loader
    from dali_abs.models import inpainter as inet
    from dali_abs.models import segmenter as snet
    from dali_abs.synthetic import SyntheticConfig, make_dataset
    from dali_abs.constants import MEAN, STD

    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", SyntheticConfig(size=224, train=1024, val=16, test=16), progress=False)
        ds = load_dataset(data)
        seg, fill = Path(tmp) / "seg.onnx", Path(tmp) / "fill.onnx"
        snet.export_onnx(snet.PatchCNN(16, 224).eval(), seg, 16, 224, label_smoothing=0.1)
        inet.export_onnx(inet.build("pushpull"), fill, "pushpull")
        cache = Path(tmp) / "cache"
        summary = precompute(ds, seg, fill, cache, PrecomputeConfig(device="auto"), progress=False)
        res["precompute"] = {k: summary.get(k) for k in ("devices", "images_per_s", "stage_seconds")}
        rows.append(("precompute 1,056 images (auto)", f"{summary['images_per_s']} img/s on {summary.get('devices')}"))
        files = [str(s.path) for s in ds.split("train")]

        @pipeline_def(batch_size=128, num_threads=4, device_id=local_device() or 0, seed=0)
        def plain():
            jpegs, labels = fn.readers.file(files=files, labels=[0] * len(files), random_shuffle=True, name="Reader")
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
            images = fn.random_resized_crop(images, size=[224, 224], random_area=[0.7, 1.0], antialias=False)
            images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(), dtype=types.FLOAT,
                                              mean=[m * 255 for m in MEAN], std=[s * 255 for s in STD],
                                              output_layout="CHW")
            return images, labels.gpu()

        loaders = {"plain GPU DALI": DALIGenericIterator([plain()], ["images", "labels"], reader_name="Reader",
                                                         auto_reset=True),
                   "dali-abs GPU loader": create_loader(cache, ds, batch_size=128, size=224, device="gpu",
                                                        num_threads=4)}
        rates = {}
        for name, loader in loaders.items():
            it = iter(loader)
            first = next(it)
            assert first[0]["images"].is_cuda, f"{name}: images not on the GPU"

            def step():
                nonlocal it
                try:
                    next(it)
                except StopIteration:
                    it = iter(loader)
                    next(it)

            rates[name] = _rate(step, 128, 5.0)
        res["timing"]["dali_loader_img_per_s"] = rates
        ratio = rates["dali-abs GPU loader"] / rates["plain GPU DALI"]
        rows.append(("DALI GPU loader vs plain GPU pipeline",
                     f"{rates['dali-abs GPU loader']:,.0f} vs {rates['plain GPU DALI']:,.0f} img/s ({ratio:.2f}x)"))


def run_gpu_tests(res, rows, skip) -> None:
    """``pytest -m gpu`` on the loader tests, in this process (so a clone without install works)."""
    try:
        import pytest
    except ImportError as e:
        skip("pytest -m gpu", f"pytest is not installed ({e})")
        return
    counts: dict[str, int] = {}

    class Count:
        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                counts[report.outcome] = counts.get(report.outcome, 0) + 1

    code = pytest.main(["-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", f"--rootdir={ROOT}",
                        str(ROOT / "tests" / "test_swap_gpu.py"), str(ROOT / "tests" / "test_loader.py")],
                       plugins=[Count()])
    res["pytest_gpu"] = {"exit_code": int(code), **counts}
    rows.append(("pytest -m gpu", f"exit {int(code)}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))))


def check_cupy(res, rows, skip, rng, args) -> None:
    """1-2: kernel parity, kernel time and bandwidth, the hand-over to torch."""
    import cupy

    from dali_abs import swap
    from dali_abs.swap import FILLS, AugmentConfig, SwapConfig, sample_params
    from dali_abs.swap import gpu as comp
    from dali_abs.swap.testing import random_batch
    from dali_abs.swap.twin import composite as twin

    dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    res["device"] = dev["name"].decode() if isinstance(dev["name"], bytes) else str(dev["name"])
    rows.append(("device", f"{res['device']} (compute capability {cupy.cuda.Device().compute_capability})"))
    r = args.grid

    # 1. parity
    cases = {m: SwapConfig(fill=m, **PAPER) for m in FILLS}
    cases["waterbirds-cached"] = SwapConfig.waterbirds(p=0.8, **PAPER_WB)
    cases["feather-cached"] = SwapConfig(feather=2.0, **PAPER)
    cases["waterbirds-patches-feather"] = SwapConfig.waterbirds(fill="patches", feather=1.5, **PAPER_WB)
    worst = 0.0
    for name, c in [(k, v) for k, v in cases.items()] + [(f"{k} ragged+crop", v) for k, v in cases.items()]:
        images, soft, fills, boxes = random_batch(rng, 32, 160, 144, r, 96)
        aug = None
        if name.endswith("ragged+crop"):
            images, fills = ragged(rng, images, fills)
            aug = AugmentConfig()
        prm = sample_params(np.arange(32) % 3, rng, c, image_size=(160, 144), soft=soft, augment=aug)
        want = twin(swap.batch(images, soft, fills, boxes, prm, c, size=(160, 144)))
        dev = swap.batch([cupy.asarray(a) for a in images], soft, [cupy.asarray(a) for a in fills], boxes, prm, c,
                         size=(160, 144))
        got = cupy.asnumpy(comp.composite(dev))
        d = np.abs(want.astype(np.int16) - got.astype(np.int16))
        res["parity"][name] = {"differ": float((d > 0).any(-1).mean()), "over_1_lsb": float((d > 1).any(-1).mean()),
                               "max_abs": int(d.max())}
        worst = max(worst, res["parity"][name]["differ"])
        rows.append((f"parity {name}", f"differ {res['parity'][name]['differ']:.2e}, "
                                       f">1 LSB {res['parity'][name]['over_1_lsb']:.2e}"))
    res["parity_worst_differ"] = worst

    # 2. timing and bandwidth
    n, h = args.batch, args.size
    images, soft, fills, boxes = random_batch(rng, n, h, h, r, args.tile)
    cfg = SwapConfig(**PAPER)
    prm = sample_params(np.arange(n) % 2, rng, cfg, image_size=(h, h), soft=soft, augment=AugmentConfig())
    di, df = cupy.asarray(images), cupy.asarray(fills)
    out = cupy.empty_like(di)
    # as the loader's GPU op gets it: device images, tiles and one device record per sample
    rec = cupy.asarray(swap.pack_samples(prm, soft, boxes, (h, h)).view(np.uint8).reshape(n, -1))
    b = swap.batch_of_records(list(di), list(df), list(rec), cfg, (h, h), r)
    launch, _ = comp.prepare(b, out=out)
    t_kernel = time_gpu(launch, args.repeats)
    t_call = time_gpu(lambda: comp.composite(b, out=out), args.repeats)
    nbytes = 2 * images.nbytes + soft.nbytes + fills.nbytes + images.nbytes
    src = cupy.empty(nbytes // 2, cupy.uint8)
    dst = cupy.empty_like(src)
    t_copy = time_gpu(lambda: cupy.copyto(dst, src), args.repeats)  # reads + writes nbytes in all
    bw, bw_copy = nbytes / t_kernel / 1e9, nbytes / t_copy / 1e9
    res["timing"].update(batch=n, size=h, kernel_s=t_kernel, call_s=t_call, copy_s=t_copy, bytes=nbytes,
                         kernel_gb_s=bw, copy_gb_s=bw_copy, kernel_img_per_s=n / t_kernel, call_img_per_s=n / t_call)
    rows += [(f"kernel {h} px batch {n}", f"{t_kernel * 1e3:.3f} ms ({n / t_kernel:,.0f} img/s)"),
             ("the GPU op's call (checks + refs upload + launch)", f"{t_call * 1e3:.3f} ms ({n / t_call:,.0f} img/s)"),
             ("effective bandwidth kernel / D2D copy", f"{bw:.0f} / {bw_copy:.0f} GB/s ({bw / bw_copy:.0%})")]

    # the hand-over DALI's PyTorch iterator relies on: CUDA memory read by torch
    try:
        import torch

        if torch.cuda.is_available():
            t = torch.from_dlpack(out)
            same = bool(t.is_cuda and torch.equal(t[:2].cpu(), torch.from_numpy(cupy.asnumpy(out[:2]))))
            res["torch_dlpack_from_cupy"] = same
            rows.append(("torch.from_dlpack(CuPy output)", "same bytes on the GPU" if same else "DIFFERENT"))
        else:
            skip("torch <- CuPy DLPack", f"torch {torch.__version__} has no CUDA here")
    except ImportError as e:
        skip("torch <- CuPy DLPack", f"torch unavailable ({e})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.json", help="JSON file for every number (gpu_check.json)")
    p.add_argument("--batch", type=int, default=256, help="batch size for the timing (256)")
    p.add_argument("--size", type=int, default=224, help="image side for the timing (224)")
    p.add_argument("--grid", type=int, default=16, help="patch grid R (16)")
    p.add_argument("--tile", type=int, default=128, help="fill tile side F (128)")
    p.add_argument("--repeats", type=int, default=50, help="timed repetitions (50)")
    p.add_argument("--no-pytest", action="store_true", help="skip part 7 (pytest -m gpu)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    origin = import_dali_abs()
    res: dict = {"args": vars(args), "skipped": {}, "parity": {}, "timing": {}}
    rows: list[tuple[str, str]] = []

    def skip(what: str, why: str):
        res["skipped"][what] = why
        print(f"skipped: {what}: {why}", flush=True)

    def part(name: str, fn, *a) -> None:
        try:
            fn(*a)
        except Exception as e:  # noqa: BLE001 - report and go on: the other parts still count
            res.setdefault("failed", {})[name] = f"{type(e).__name__}: {e}"
            print(f"failed: {name}: {type(e).__name__}: {e}", flush=True)

    rng = np.random.default_rng(args.seed)
    problems = environment(res, rows, origin)

    def cpu_reference():  # 3. the CPU loader's compositing (always possible)
        from dali_abs import swap
        from dali_abs.swap import AugmentConfig, SwapConfig, sample_params
        from dali_abs.swap.cpu import composite_host
        from dali_abs.swap.testing import random_batch

        n, h, f = 64, 128, 64
        images, soft, fills, boxes = random_batch(rng, n, h, h, args.grid, f)
        cfg = SwapConfig(**PAPER)
        prm = sample_params(np.arange(n) % 2, rng, cfg, image_size=(224, 224), soft=soft, augment=AugmentConfig())
        ips = _rate(lambda: composite_host(swap.batch(images, soft, fills, boxes, prm, cfg, size=224)), n, 2.0)
        res["timing"]["composite_host_128_to_224px_b64_img_per_s"] = ips
        rows.append((f"composite_host 128 -> 224 px, batch 64 ({os.cpu_count()} CPU cores)", f"{ips:,.0f} img/s"))

    part("composite_host (CPU)", cpu_reference)
    if problems["cupy"]:
        for what in ("GPU backend parity", "kernel timing and bandwidth"):
            skip(what, problems["cupy"])
    else:
        part("CuPy kernels", check_cupy, res, rows, skip, rng, args)
    part("onnxruntime CUDA provider parity/speed", check_onnxruntime, res, rows, skip, rng, problems)
    part("precompute and DALI GPU loader", check_dali_loader, res, rows, skip, rng, problems)
    if args.no_pytest:
        skip("pytest -m gpu", "--no-pytest")
    else:
        part("pytest -m gpu", run_gpu_tests, res, rows, skip)

    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2, default=str)
    width = max(len(a) for a, _ in rows)
    print(f"\n{'check':<{width}}  result")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    for what, why in res["skipped"].items():
        print(f"skipped  {what}: {why}")
    for what, why in res.get("failed", {}).items():
        print(f"FAILED   {what}: {why}")
    print(f"(full numbers in {args.out})")
    return 1 if res.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
