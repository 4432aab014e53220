"""FCN: the paper's VGG16 networks, torchvision's fcn_resnet layouts, any input size, export."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models import segmentation as tvseg

from seg_ros.commands.options import add_model_arguments, model_options_from_args
from seg_ros.models import build_model, load_model, variant_name
from seg_ros.models import fcn as fcn_module
from seg_ros.node_parameters import PARAMETERS


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def on_meta(num_classes: int, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model("fcn", num_classes, **options)


@pytest.fixture
def narrow_fc(monkeypatch):
    """Build FCN with 64-channel fc6/fc7: the paper's graph without 120 M weights to initialise."""
    monkeypatch.setattr(fcn_module, "FC_CHANNELS", 64)


def test_fcn8s_vgg16_has_the_papers_134m_parameters():
    count = n_params(on_meta(21, variant="8s"))
    assert abs(count - 134e6) <= 0.005 * 134e6, f"{count / 1e6:.2f}M, paper 134M"


@pytest.mark.parametrize(
    "variant, skips",
    [("32s", []), ("16s", ["score_pool4"]), ("8s", ["score_pool4", "score_pool3"])],
)
def test_vgg16_layout_fc_as_convolutions_and_skip_scores(variant, skips):
    model = on_meta(21, variant=variant)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert model.fc6[0].kernel_size == (7, 7) and model.fc6[0].in_channels == 512
    assert model.fc7[0].kernel_size == (1, 1) and model.fc7[0].out_channels == 4096
    scores = sorted(name for name, _ in model.named_children() if name.startswith("score_pool"))
    assert scores == sorted(skips)
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.stride[0] for m in ups] == {"32s": [32], "16s": [2, 16], "8s": [2, 2, 8]}[variant]
    assert set(model.state_dict()) >= {f"features.{i}.weight" for i in (0, 28)}  # torchvision keys


def test_upsampling_starts_bilinear_and_skip_scores_at_zero():
    torch.manual_seed(0)
    layer = fcn_module._upsampler(3, 8)
    coarse = torch.rand(1, 3, 6, 7)
    expected = F.interpolate(coarse, scale_factor=8, mode="bilinear", align_corners=False)
    with torch.no_grad():
        learned = layer(coarse)
    assert learned.shape == expected.shape
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the zero border
    torch.testing.assert_close(learned[inner], expected[inner], atol=1e-5, rtol=0)
    assert layer.weight.requires_grad
    score = fcn_module._zero_score(256, 5)
    assert not score.weight.any() and not score.bias.any()


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("size", [(5, 7), (37, 53), (64, 96)])
def test_any_input_size_gives_logits_at_that_size(narrow_fc, variant, size):
    model = build_model("fcn", 4, variant=variant).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 4, *size) and torch.isfinite(out).all()


def test_skip_score_layers_get_gradients(narrow_fc):
    """pool3/pool4 feed the 8s output: gradients reach their score layers (they start at zero)."""
    model = build_model("fcn", 3, variant="8s").train()
    model(torch.randn(1, 3, 64, 64)).square().mean().backward()
    assert model.score_pool3.weight.grad.abs().sum() > 0
    assert model.score_pool4.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("aux", [False, True])
def test_torchvision_fcn_resnet50_loads_strictly_and_computes_the_same(aux):
    torch.manual_seed(0)
    theirs = tvseg.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=aux, num_classes=6)
    ours = build_model("fcn", 6, backbone="resnet50", aux_head=aux)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x)["out"])


@pytest.mark.parametrize("aux", [False, True])
def test_torchvision_fcn_resnet101_layout(aux):
    with torch.device("meta"):
        theirs = tvseg.fcn_resnet101(weights=None, weights_backbone=None, aux_loss=aux)
    ours = on_meta(21, backbone="resnet101", aux_head=aux)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_torchvision_fcn_file_loads_with_load_model(tmp_path):
    torch.manual_seed(1)
    theirs = tvseg.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=4)
    torch.save(theirs.state_dict(), tmp_path / "fcn_resnet50.pth")
    loaded = load_model("fcn", weights=str(tmp_path / "fcn_resnet50.pth"), backbone="resnet50")
    assert loaded.spec.num_classes == 4 and loaded.spec.options["aux_head"] is False
    x = torch.randn(1, 3, 33, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), theirs.eval()(x)["out"])


def test_pretrained_vgg16_fills_the_convolutions_and_converts_fc6_fc7(narrow_fc, tmp_path):
    torch.manual_seed(2)
    vgg = tvm.vgg16(weights=None)
    state = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    state["classifier.0.weight"] = torch.randn(64, 512 * 7 * 7)
    state["classifier.0.bias"] = torch.randn(64)
    state["classifier.3.weight"] = torch.randn(64, 64)
    state["classifier.3.bias"] = torch.randn(64)
    torch.save(state, tmp_path / "vgg16.pth")
    model = build_model("fcn", 5, pretrained_backbone=str(tmp_path / "vgg16.pth"))
    torch.testing.assert_close(model.features[0].weight, vgg.features[0].weight)
    torch.testing.assert_close(model.fc6[0].weight.flatten(1), state["classifier.0.weight"])
    torch.testing.assert_close(model.fc7[0].bias, state["classifier.3.bias"])
    del state["classifier.3.weight"]
    torch.save(state, tmp_path / "features_only.pth")
    with pytest.raises(ValueError, match="no VGG16 classifier.3.weight"):
        build_model("fcn", 5, pretrained_backbone=str(tmp_path / "features_only.pth"))


def test_pretrained_resnet_backbone_loads(tmp_path):
    torch.manual_seed(3)
    resnet = tvm.resnet50(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet50.pth")
    model = build_model(
        "fcn", 3, backbone="resnet50", pretrained_backbone=str(tmp_path / "resnet50.pth")
    )
    torch.testing.assert_close(model.backbone.conv1.weight, resnet.conv1.weight)


def test_names_flags_and_node_parameter():
    assert variant_name("fcn", {}) == "fcn8s_vgg16"
    assert (
        variant_name("fcn", {"backbone": "resnet101", "aux_head": True}) == "fcn8s_resnet101_aux"
    )
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--model", "fcn", "--variant", "16s", "--no-aux-head"])
    assert args.model == "fcn"
    assert model_options_from_args(args) == {"variant": "16s", "aux_head": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "fcn", "--variant", "4s"])
    model = next(p for p in PARAMETERS if p.name == "model")
    assert model.check("fcn") is None and model.check("fcnn") is not None


def test_export_has_only_tensorrt_operators_and_matches_torch(narrow_fc, tmp_path):
    from seg_ros.export import compare_with_torch, export_onnx, unsupported_tensorrt_ops

    torch.manual_seed(4)
    model = build_model("fcn", 4, variant="8s").eval()
    with torch.no_grad():  # the skip scores start at zero: give them something to carry
        model.score_pool3.weight.normal_(0, 0.01)
        model.score_pool4.weight.normal_(0, 0.01)
    path = export_onnx(model, tmp_path / "fcn.onnx", 40, 72)
    assert unsupported_tensorrt_ops(path) == []
    images = np.random.default_rng(0).standard_normal((2, 3, 40, 72)).astype(np.float32)
    result = compare_with_torch(model, path, [images[:1], images])  # the batch is dynamic
    assert result["label_agreement"] > 0.999 and result["max_abs_diff"] < 1e-4
