"""Where every composite pixel comes from, to measure the foreground leak: how much of the
partner's own object (the foreground that was to be removed) still shows in a composite's
background, and whether the smooth placeholder stored for the box cells outside the loose mask
is ever shown.

:func:`sources` composites a batch twice over with marker colours instead of pixels (the same
parameters, records and code path as the loader): the foregrounds in green, each partner's
image as its ground-truth object mask in red, each fill tile blue in its loose cells and magenta
in its placeholder cells. Every output pixel then says what it shows (:data:`SOURCES`): the
marker that gives it more than half its colour.
"""

from __future__ import annotations

import numpy as np

from dali_abs.swap.batch import batch
from dali_abs.swap.config import SwapConfig
from dali_abs.swap.dispatch import composite

FOREGROUND, CLEAN, FILL, GHOST, PLACEHOLDER = range(5)
SOURCES = ("foreground", "clean background", "fill", "partner's object", "placeholder")


def sources(objects: list, soft: np.ndarray, placeholders: list, box_cells, params: dict, cfg: SwapConfig,
            size) -> np.ndarray:
    """uint8 [N,H,W] source code (:data:`SOURCES`) of every pixel of the batch's composites.

    ``objects``: N bool [h_k, w_k] ground-truth object masks at the images' sizes (True = object);
    ``soft`` float32 [N,R,R]; ``placeholders``: N bool [th, tw], one per stored fill tile, True
    where it holds the placeholder (:meth:`dali_abs.cache.format.Cache.placeholder`; any array for
    an image without a fill); ``box_cells`` int [N,4] ``(r0, c0, r1, c1)``; ``params``:
    :func:`~dali_abs.swap.sampling.sample_params` of the batch on the ``size`` canvas. Only
    swapped samples are meaningful (the others show their own foreground everywhere). Hard
    alpha (``feather = 0``) is assumed.
    """
    n, r = soft.shape[0], soft.shape[1]
    green = [np.zeros(m.shape + (3,), np.uint8) for m in objects]
    for g in green:
        g[..., 1] = 255
    red = [np.dstack([m.astype(np.uint8) * 255, np.zeros(m.shape, np.uint8), np.zeros(m.shape, np.uint8)])
           for m in objects]
    tiles = []
    for ph in placeholders:
        t = np.zeros(np.shape(ph) + (3,), np.uint8)
        t[..., 2] = 255
        t[np.asarray(ph, bool), 0] = 255  # the placeholder: magenta
        tiles.append(t)
    # Samples 0..N-1 take their foreground from the green images, their background from the
    # partner's red copy N + partner; the copies composite nothing themselves.
    p2 = {key: np.concatenate([v, v]) for key, v in params.items()}
    p2["partner"] = np.concatenate([params["partner"] + n, np.arange(n, 2 * n)]).astype(np.int32)
    p2["swap"] = np.concatenate([params["swap"], np.zeros(n, np.uint8)])
    boxes = (np.asarray(box_cells, np.float32) / np.float32(r)).astype(np.float32)
    out = composite(batch(green + red, np.concatenate([soft, soft]), tiles + tiles, np.concatenate([boxes, boxes]),
                          p2, cfg, size))[:n].astype(np.int16)
    hi = out > 128  # more than half of a pixel from one marker
    code = np.full(out.shape[:3], CLEAN, np.uint8)
    code[hi[..., 2] & ~hi[..., 0]] = FILL
    code[hi[..., 2] & hi[..., 0]] = PLACEHOLDER
    code[hi[..., 0] & ~hi[..., 2]] = GHOST
    code[hi[..., 1]] = FOREGROUND
    return code


def fractions(code: np.ndarray) -> dict[str, np.ndarray]:
    """Per composite, as fractions of its background pixels (all but its foreground):
    ``leak`` the partner's object straight from the partner's image, ``placeholder`` the smooth
    placeholder of the stored tile, ``fill`` the fill."""
    bg = np.maximum((code != FOREGROUND).sum((1, 2)), 1)
    return {name: (code == c).sum((1, 2)) / bg for name, c in (("leak", GHOST), ("placeholder", PLACEHOLDER),
                                                                 ("fill", FILL))}
