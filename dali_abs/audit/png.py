"""The audit's picture: example test images in each variant, with what the model predicted.

One row per example image (the classes taken in turn), one column per variant
(:data:`~dali_abs.audit.variants.VARIANTS`); each tile is the variant exactly as the model saw it
(uint8 HWC RGB, before normalising, enlarged for viewing) with the prediction on a band along its
bottom edge: green where it is the image's class, red where not. The first column names the image,
its class and (with places) its group; the header row the variants with their accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dali_abs.audit.variants import VARIANTS
from dali_abs.files import write_image

RIGHT, WRONG = (20, 130, 40), (190, 30, 30)


def _tile(img: np.ndarray, side: int, text: str, ok: bool, font_size: int) -> np.ndarray:
    from PIL import Image

    from dali_abs.preview import caption

    im = Image.fromarray(np.ascontiguousarray(img, np.uint8))
    if im.size != (side, side):
        im = im.resize((side, side), Image.NEAREST if im.width * 2 <= side else Image.BILINEAR)
    return caption(np.asarray(im), text, font_size, fill=RIGHT if ok else WRONG, pad=6)


def _label(lines: Sequence[str], w: int, h: int, font_size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    from dali_abs.preview import font

    im = Image.new("RGB", (w, h), (240, 240, 240))
    draw = ImageDraw.Draw(im)
    f = font(font_size)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * (font_size + 4)), line, fill=(20, 20, 20), font=f)
    return np.asarray(im)


def write_examples(path: str | os.PathLike, report: dict, classes: Sequence[str], side: int = 128,
                   gap: int = 3) -> Path:
    """Write the PNG of ``report["examples"]`` (from :func:`dali_abs.audit.audit`) to ``path``; returns it.

    ``classes``: the dataset's class names (label k -> name); ``side``: tile side in px.
    """
    ex = report.get("examples") or []
    if not ex:
        raise ValueError("the report holds no examples (audit(..., examples=0)?)")
    fs = max(10, side // 11)
    name = lambda k: classes[k] if 0 <= k < len(classes) else f"class {k}"  # noqa: E731
    head = 2 * (fs + 4) + 12
    label_w = side + 20
    canvas = np.full((head + len(ex) * (side + gap) + gap, label_w + len(VARIANTS) * (side + gap) + gap, 3), 255,
                     np.uint8)
    acc = report.get("accuracy", {})
    for j, v in enumerate(VARIANTS):
        x = label_w + gap + j * (side + gap)
        canvas[gap:head - gap, x:x + side] = _label([v.replace("_", "-"), f"acc {acc[v]:.3f}" if v in acc else ""],
                                                    side, head - 2 * gap, fs)
    canvas[gap:head - gap, gap:label_w] = _label(
        [f"BG-gap {report['bg_gap']:+.3f}" if "bg_gap" in report else "", f"n = {report.get('images', '?')}"],
        label_w - gap, head - 2 * gap, fs)
    for i, e in enumerate(ex):
        y = head + i * (side + gap)
        lines = [str(e["id"])[:14], f"class {name(e['label'])}"[:16]]
        if e.get("group") is not None and "per_group" in report:
            lines.append(f"group {e['group']}")
        canvas[y:y + side, gap:label_w] = _label(lines, label_w - gap, side, fs)
        for j, v in enumerate(VARIANTS):
            x = label_w + gap + j * (side + gap)
            p = e["pred"][v]
            canvas[y:y + side, x:x + side] = _tile(e["images"][v], side, f"-> {name(p)}"[:18], p == e["label"], fs)
    path = Path(path)
    write_image(path, canvas)
    return path
