"""The swap's options (dali_abs.swap.config) refuse what they cannot use, with the value in the
message: Normalize's constants, SwapConfig's switches, and normalize= of the compositing calls."""

from __future__ import annotations

import numpy as np
import pytest

from dali_abs import swap
from dali_abs.audit.variants import variant_swaps
from dali_abs.swap import Normalize, SwapConfig, SwapError
from dali_abs.swap import cpu
from swap_cases import make_batch, paper_swap, paper_waterbirds, params_for

# --- Normalize ---------------------------------------------------------------------------------


def test_normalize_takes_any_three_numbers_as_a_tuple_of_floats():
    norm = Normalize(np.array([123.675, 116.28, 103.53], np.float32), [np.float64(58.395), 57, np.int64(57)])
    assert norm.mean == tuple(float(x) for x in np.array([123.675, 116.28, 103.53], np.float32))
    assert norm.std == (58.395, 57.0, 57.0) and all(type(x) is float for x in norm.mean + norm.std)
    assert hash(norm) == hash(Normalize(norm.mean, norm.std)) and norm == Normalize(norm.mean, norm.std)
    mean, inv = norm.constants()
    assert mean.dtype == inv.dtype == np.float32 and np.array_equal(mean, np.array(norm.mean, np.float32))
    assert Normalize.imagenet() == Normalize(*(list(v) for v in (Normalize.imagenet().mean, Normalize.imagenet().std)))
    assert len({Normalize.imagenet(), Normalize.imagenet(), Normalize.imagenet("float16")}) == 2


@pytest.mark.parametrize("mean, std, message", [
    ((0, float("nan"), 0), (50, 50, 50), r"Normalize.mean must be finite, got \(0, nan, 0\)"),
    ((0, 0, 0), (50, float("inf"), 50), r"Normalize.std must be finite, got \(50, inf, 50\)"),
    ((0, 0, 0), (50, -1, 50), r"Normalize.std must be positive, got \(50, -1, 50\)"),
    ((0, 0, 0), np.zeros(3), r"Normalize.std must be positive, got array\(\[0., 0., 0.\]\)"),
    ("abc", (1, 1, 1), r"Normalize.mean must be 3 numbers \(R, G, B in 0..255 units\), got 'abc'"),
    ((0, 0, True), (1, 1, 1), r"Normalize.mean must be 3 numbers \(R, G, B in 0..255 units\), got \(0, 0, True\)"),
    (None, (1, 1, 1), r"Normalize.mean must be 3 numbers \(R, G, B in 0..255 units\), got None"),
])
def test_normalize_refuses_unusable_constants(mean, std, message):
    with pytest.raises(SwapError, match=message):
        Normalize(mean, std)


def test_normalize_refuses_constants_in_0_to_1_units_with_the_fix():
    with pytest.raises(SwapError, match=r"Normalize\(mean=\(0.485, 0.456, 0.406\), std=\(0.229, 0.224, 0.225\)\) "
                                        r"looks like 0..1 units; Normalize takes 0..255 units \(as "
                                        r"crop_mirror_normalize\): multiply by 255, or use Normalize.imagenet\(\)"):
        Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # one constant outside 0..1 says the units are 0..255
    assert Normalize((0, 0, 0), (1, 1, 1)).std == (1.0, 1.0, 1.0)
    assert Normalize((0.5, 0.5, 2), (0.5, 0.5, 0.5)).mean == (0.5, 0.5, 2.0)


def test_normalize_of_the_compositing_calls_must_be_a_normalize():
    rng = np.random.default_rng(30)
    cfg = paper_swap()
    images, soft, fills, boxes = make_batch(rng)
    b = swap.batch(images, soft, fills, boxes, params_for(rng, soft, cfg, 48, 40), cfg)
    msg = r"normalize must be None or a dali_abs.swap.Normalize \(e.g. Normalize.imagenet\(\)\), got str 'imagenet'"
    for call in (swap.composite, cpu.composite, cpu.composite_host):
        with pytest.raises(SwapError, match=msg):
            call(b, normalize="imagenet")
    with pytest.raises(SwapError, match=r"normalize must be None or a dali_abs.swap.Normalize .*, got tuple "
                                        r"\(\(0, 0, 0\), \(1, 1, 1\)\)"):
        swap.composite(b, normalize=((0, 0, 0), (1, 1, 1)))
    with pytest.raises(SwapError, match=r"norm must be a dali_abs.swap.Normalize .*, got NoneType None"):
        cpu.normalize_images(np.zeros((1, 4, 4, 3), np.uint8), None)


# --- SwapConfig's switches ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["keep_inside", "exclude_self", "foreground"])
@pytest.mark.parametrize("value", ["no", 0, 1, 1.0, None])
def test_swap_config_switches_must_be_bools(name, value):
    with pytest.raises(SwapError, match=rf"SwapConfig.{name} must be True or False, got {value!r}"):
        SwapConfig(**{name: value})


def test_numpy_bools_are_taken_as_bools_and_the_presets_construct():
    cfg = SwapConfig(keep_inside=np.False_, foreground=np.bool_(True), exclude_self=np.True_)
    assert (cfg.keep_inside, cfg.foreground, cfg.exclude_self) == (False, True, True)
    assert all(type(getattr(cfg, n)) is bool for n in ("keep_inside", "foreground", "exclude_self"))
    assert hash(cfg) == hash(SwapConfig(keep_inside=False, exclude_self=True))
    assert SwapConfig().foreground is True and SwapConfig.waterbirds().keep_inside is True
    assert paper_waterbirds().exclude_self is False
    variants = variant_swaps((128.0, 128.0, 128.0))
    assert variants["only_bg"].foreground is False and variants["mixed_same"].exclude_self is True
