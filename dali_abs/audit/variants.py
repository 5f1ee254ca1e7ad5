"""The audit's variants of a test image, after the Backgrounds Challenge (Xiao et al., MadryLab,
ImageNet-9), each one swap of the loader's (:class:`~dali_abs.swap.config.SwapConfig`), made on the
fly from the cache:

==============  ==============================================================================
``original``    the image itself (``p = 0``: only resized, by the same kernel as the others)
``only_fg``     the object (its tight cut-out) on a constant backdrop, where it was
``only_bg``     the sample's own clean background: its image with the object's loose cells
                filled from the cache, nothing pasted
``mixed_same``  the object on the clean background of another image of the same class
``mixed_rand``  the object on the clean background of another image, any class
``mixed_next``  the object on the clean background of an image of the next class
==============  ==============================================================================

The object stays where it was (no translation, scale or rotation), and the tight and loose
thresholds are the cache's unless given. Backgrounds are paired inside the batch, as the loader
pairs them; :func:`reading_order` lays the test images out so that every batch holds each class it
holds at least twice (pairs of the same class, never split across batches where it can be
avoided), so ``mixed_same`` finds another image of the class. Where a batch still holds no other
image of the class (a class with one test image, or a pair split by an odd batch size),
``mixed_same`` shows the object on **its own** clean background; ``mixed_next`` where the batch
holds only the sample's class (the next class present in the batch: class y + 1 when the batch
holds it); ``mixed_rand`` in a batch of one. The report counts these (``own_background``).
"""

from __future__ import annotations

import numpy as np

from dali_abs.swap.config import SwapConfig

VARIANTS = ("original", "only_fg", "only_bg", "mixed_same", "mixed_rand", "mixed_next")
MIXED = ("mixed_same", "mixed_rand", "mixed_next")  # the object on another image's background


def variant_swaps(backdrop: tuple[float, float, float], tight: float | None = None,
                  loose: float | None = None) -> dict[str, SwapConfig]:
    """The swap of each variant (:data:`VARIANTS`). ``backdrop``: the only-fg colour, RGB 0..255;
    ``tight`` / ``loose``: None = the cache's recorded thresholds."""
    base = dict(translate=0.0, tight=tight, loose=loose)  # the object stays where it was
    return {
        "original": SwapConfig(p=0.0, **base),
        "only_fg": SwapConfig(background="own", backdrop=tuple(backdrop), **base),
        "only_bg": SwapConfig(background="own", foreground=False, **base),
        "mixed_same": SwapConfig(background="same_class", exclude_self=True, **base),
        "mixed_rand": SwapConfig(background="uniform", exclude_self=True, **base),
        "mixed_next": SwapConfig(background="next_class", **base),
    }


def variant_seed(seed: int, k: int) -> int:
    """The draws' seed of variant ``k`` (an index into :data:`VARIANTS`): each variant its own stream."""
    return int(np.random.SeedSequence([int(seed), 17, int(k)]).generate_state(1)[0] >> 1)


def reading_order(labels: np.ndarray, batch_size: int, seed: int) -> np.ndarray:
    """A permutation of the samples (``labels``: int class of each) to read them in, for in-batch pairing.

    Each class's samples, shuffled, go in pairs (a class with an odd count ends in a triple, one of
    a single sample stays single); the pairs are shuffled and packed into batches of ``batch_size``
    without splitting one, except where a batch could not be filled otherwise. Same labels, batch
    size and seed, same order.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0xA0D17])
    groups: list[list[int]] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c)).tolist()
        cut = [idx[i:i + 2] for i in range(0, len(idx) - len(idx) % 2, 2)]
        if len(idx) % 2:
            if cut:
                cut[-1].append(idx[-1])
            else:
                cut = [idx]
        groups += cut
    pending = [groups[i] for i in rng.permutation(len(groups))]
    order: list[int] = []
    while pending:
        cap = batch_size
        while cap > 0 and pending:
            fits = [k for k, g in enumerate(pending[:64]) if len(g) <= cap]
            good = [k for k in fits if cap - len(pending[k]) != 1 or len(pending[k]) == 1]
            if good or fits:
                g = pending.pop((good or fits)[0])
            else:  # nothing fits whole: split the next group across the batch boundary
                g, pending[0] = pending[0][:cap], pending[0][cap:]
            order += g
            cap -= len(g)
    return np.asarray(order, np.int64)
