"""Which object goes on which place in which split: a pure function of counts, settings and seed.

Photos are named by integer keys. A split receives a share of the photos of every class (and,
with a places folder, of every place) by :func:`assign_splits`; no photo serves two splits.
:func:`plan_split` then pairs the split's objects with its places:

- **train**: class ``y`` gets a share of the composites proportional to its object photos;
  ``round((1 - rho) * n_y)`` of them stand on the other places (in turn), the rest on place ``y``.
  rho = 1 gives no conflicting sample at all.
- **val / test**: the same count for every group (class, place).

Objects of a class are used in a shuffled cycle and photos of a place least-used first, so
their use counts differ by at most one. An object pasted several times (``--train`` above the
number of object photos) stands on a new place each time while its place has one it has not
stood on; that can leave a place used once more than the rule above. In habitat mode (objects
and places are the same photos) an object is never pasted onto its own photo, and among the
least-used places it takes the one whose filled hole it hides best (a ``cost`` of the pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dali_abs.dataset import SPLITS
from dali_abs.photobench.config import PhotoBenchError

_SPLIT_TAG, _PAIR_TAG, _SLOT_TAG, _PLACE_TAG, _PASTE_TAG = 11, 12, 13, 14, 16


@dataclass(frozen=True)
class Composite:
    split: str
    y: int
    place: int
    obj: int  # key of the object photo
    bg: int  # key of the place photo
    scale: float = 1.0  # the object's size factor, drawn from --object-scale
    at: tuple[float, float] = (0.0, 0.0)  # two draws in [0, 1) that pick where a scaled object goes


def shares(n: int, fractions) -> list[int]:
    """``n`` split into integer parts by ``fractions`` (largest remainder; ties to the earlier part)."""
    raw = [n * f for f in fractions]
    out = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[: n - sum(out)]:
        out[i] += 1
    return out


def assign_splits(strata: dict[int, list[int]], fractions, seed: int, tag: int = 0) -> dict[int, str]:
    """``{key: split}`` with each stratum's keys shuffled and cut by ``fractions`` (train, val, test).
    ``tag`` tells independent draws with the same seed apart (object photos 0, a places folder 1)."""
    out: dict[int, str] = {}
    for s in sorted(strata):
        keys = list(strata[s])
        perm = np.random.default_rng([seed, _SPLIT_TAG, tag, s]).permutation(len(keys))
        counts = shares(len(keys), fractions)
        bounds = np.cumsum([0] + counts)
        for si, split in enumerate(SPLITS):
            for i in perm[bounds[si]:bounds[si + 1]]:
                out[keys[i]] = split
    return out


def slots(split: str, n_objects: dict[int, int], n: int | None, n_places: int, rho: float) -> dict[int, list[int]]:
    """The place of every composite of each class, in plan order (before shuffling).

    ``n_objects``: object photos per class in the split; ``n``: composites asked (None = one
    per object photo). Val/test are rounded down to a multiple of the group count.
    """
    classes = sorted(n_objects)
    total = sum(n_objects.values()) if n is None else n
    out: dict[int, list[int]] = {}
    if split == "train":
        per_class = shares(total, [n_objects[y] / max(1, sum(n_objects.values())) for y in classes])
        for y, n_y in zip(classes, per_class):
            n_conflict = int(round((1.0 - rho) * n_y))
            others = [p for p in range(n_places) if p != y]
            out[y] = [y] * (n_y - n_conflict) + [others[i % len(others)] for i in range(n_conflict)]
    else:
        per_group = total // (len(classes) * n_places)
        for y in classes:
            out[y] = [p for p in range(n_places) for _ in range(per_group)]
    return out


def plan_split(split: str, objects: dict[int, list[int]], places: dict[int, list[int]], n: int | None,
               rho: float, seed: int, same_photos: bool,
               cost: Callable[[int, np.ndarray, float, tuple[float, float]], np.ndarray] | None = None,
               window: int = 64, object_scale: tuple[float, float] = (1.0, 1.0)) -> list[Composite]:
    """Composites of one split. ``objects``: class -> object keys; ``places``: place -> place keys
    (both of this split only). ``same_photos``: keys name the same photos in both (habitat mode).
    Each composite draws its object's scale uniformly from ``object_scale`` (lo, hi) and two
    numbers ``at`` in [0, 1) for its position, from the seed and its place in the plan.

    Each composite takes one of the least-used photos of its place that its object has not
    stood on yet in this split (any, once it has stood on all of them). Among the first
    ``window`` of those in shuffled order it takes the one of lowest ``cost(object_key,
    place_keys, scale, at)`` (an array, one value per place key; ties: the earlier), or simply
    the first when ``cost`` is None.
    """
    si = SPLITS.index(split)
    plan_slots = slots(split, {y: len(k) for y, k in objects.items()}, n, len(places), rho)
    place_order = {p: [keys[i] for i in np.random.default_rng([seed, _PLACE_TAG, si, p]).permutation(len(keys))]
                   for p, keys in places.items()}
    uses = {p: np.zeros(len(keys), np.int64) for p, keys in place_order.items()}
    paired: dict[int, set[int]] = {}  # object key -> place keys it already stands on in this split
    out: list[Composite] = []
    lo, hi = object_scale
    for y in sorted(plan_slots):
        want = plan_slots[y]
        if not want:
            continue
        draws = np.random.default_rng([seed, _PASTE_TAG, si, y]).random((len(want), 3))
        objs = objects[y]
        obj_order = [objs[i] for i in np.random.default_rng([seed, _PAIR_TAG, si, y]).permutation(len(objs))]
        order = np.random.default_rng([seed, _SLOT_TAG, si, y]).permutation(len(want))
        for j, k in enumerate(order):
            p = want[k]
            o = obj_order[j % len(obj_order)]
            scale = lo if hi == lo else float(lo + (hi - lo) * draws[j, 0])
            at = (float(draws[j, 1]), float(draws[j, 2]))
            pool, used = place_order[p], uses[p]
            allowed = np.ones(len(pool), bool)
            if same_photos:
                allowed &= np.asarray(pool) != o
                if not allowed.any():
                    raise PhotoBenchError(f"{split}: place {p} has one photo, the object's own; it needs another photo "
                                          "of that class to paste on (add photos or change --split-fractions)")
            fresh = allowed & ~np.isin(pool, list(paired.get(o, ())))
            if fresh.any():  # a repeated (object, place) pair only once the object has stood on every place
                allowed = fresh
            least = np.flatnonzero(allowed & (used == used[allowed].min()))[:window]
            pick = least[0] if cost is None else least[int(np.argmin(cost(o, np.asarray(pool)[least], scale, at)))]
            used[pick] += 1
            paired.setdefault(o, set()).add(pool[pick])
            out.append(Composite(split, y, p, o, pool[pick], scale, at))
    return out
