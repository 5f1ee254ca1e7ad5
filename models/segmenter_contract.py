"""The segmenter's ONNX contract, without torch: names, conventions, metadata keys and the default
input size. :mod:`dali_abs.models.segmenter` exports by it; :mod:`dali_abs.segmenter.inference`
and the cache stage check by it, and neither needs torch for that.
"""

from __future__ import annotations

from dali_abs.constants import MEAN, STD

KIND = "segmenter"
POLARITY = "1=foreground"
INPUT_CONVENTION = "float32 NCHW RGB 0..1"
OUTPUT_CONVENTION = "float32 [B,1,R,R] foreground probability (sigmoid inside the graph)"
NORMALIZATION = f"inside the graph: (x - mean) / std, mean={list(MEAN)}, std={list(STD)}"
INPUT_NAME = "image"
OUTPUT_NAME = "foreground"
OPSET = 17


def default_input_size(grid: int) -> int:
    """224 px for the reference's 16 x 16 grid (14-px patches), else 16 px per patch.

    The same for a backbone: at 224 px Lite0's stride-16 map is 14 x 14 and is resized to
    16 x 16 in the head; 256 px (map = grid) scored the same patch IoU on cub-birds-300
    (0.81 vs 0.81) for 1.3x the compute."""
    return 224 if grid == 16 else 16 * grid


def patch_size(input_size: int, grid: int) -> int:
    """Pixels per patch side; raises ValueError unless ``grid`` divides ``input_size``."""
    if grid < 1 or input_size < 1:
        raise ValueError(f"grid and input size must be positive, got grid={grid}, input_size={input_size}")
    if input_size % grid:
        raise ValueError(f"input size {input_size} px is not a multiple of the grid {grid}: "
                         f"patches must be whole pixels (try input size {grid * max(1, round(input_size / grid))})")
    return input_size // grid


def onnx_metadata(grid: int, input_size: int, extra: dict | None = None) -> dict[str, str]:
    """The ``dali_abs.*`` metadata of a segmenter ONNX file."""
    meta = {
        "dali_abs.kind": KIND,
        "dali_abs.grid": str(int(grid)),
        "dali_abs.input_size": str(int(input_size)),
        "dali_abs.patch_size": str(int(input_size) // int(grid)),
        "dali_abs.polarity": POLARITY,
        "dali_abs.input": INPUT_CONVENTION,
        "dali_abs.output": OUTPUT_CONVENTION,
        "dali_abs.normalization": NORMALIZATION,
    }
    for k, v in (extra or {}).items():
        meta[f"dali_abs.{k}"] = str(v)
    return meta
