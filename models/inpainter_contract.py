"""The inpainter's ONNX contract, without torch: input/output names, mask polarity, value range,
layout and the ``dali_abs.*`` metadata. :mod:`dali_abs.models.inpainter` exports by it;
:mod:`dali_abs.inpainter.inference` checks by it and :mod:`dali_abs.inpainter.wrap` writes
adapters by it, neither needing torch.
"""

from __future__ import annotations

KIND = "inpainter"
CONTRACT = "1"  # version of the contract below; bump on any incompatible change
IMAGE_NAME = "image"
MASK_NAME = "mask"
OUTPUT_NAME = "filled"
MASK_POLARITY = "1=fill"
RANGE = "0..1"
LAYOUT = "NCHW"
OPSET = 17
EMPTY_FILL = 0.5  # the colour of a hole with no context at all (mask all ones)

META_REQUIRED = {
    "dali_abs.kind": KIND,
    "dali_abs.contract": CONTRACT,
    "dali_abs.mask_polarity": MASK_POLARITY,
    "dali_abs.range": RANGE,
    "dali_abs.layout": LAYOUT,
}


def onnx_metadata(fill: str, extra: dict | None = None) -> dict[str, str]:
    """The ``dali_abs.*`` metadata of an inpainter ONNX file (``fill`` names the method)."""
    meta = dict(META_REQUIRED)
    meta.update({
        "dali_abs.fill": fill,
        "dali_abs.inputs": f"{IMAGE_NAME}: float32 [B,3,H,W] RGB 0..1; {MASK_NAME}: float32 [B,1,H,W] 1=fill",
        "dali_abs.output": f"{OUTPUT_NAME}: float32 [B,3,H,W] RGB 0..1, unchanged where mask = 0",
        "dali_abs.fixed_size": "none",
        "dali_abs.max_batch": "none",
        "dali_abs.empty_context": f"mask all ones gives {EMPTY_FILL} gray",
    })
    for k, v in (extra or {}).items():
        meta[k if k.startswith("dali_abs.") else f"dali_abs.{k}"] = str(v)
    return meta
