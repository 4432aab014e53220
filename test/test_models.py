"""Model zoo: the papers' architectures and sizes, torchvision layouts, shapes, checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models import segmentation as tvseg

from seg_ros.models import (
    ModelSpec,
    build_model,
    bundled_models,
    load_model,
    read_spec,
    resolve_options,
    save_checkpoint,
)
from seg_ros.models import checkpoint as checkpoint_module
from seg_ros.models.backbones import IMAGENET_PREFIX, TAPS, feature_extractor
from seg_ros.models.refinenet import (
    ChainedResidualPooling,
    LightRefineLevel,
    RefineBlock,
    ResidualConvUnit,
)

SMALL_VARIANTS = [
    ("segnet", {"backbone": "basic"}),
    ("deeplab", {}),  # v3+ MobileNetV3-Large, separable
    ("refinenet", {}),  # Light-Weight RefineNet, MobileNetV2
    ("deeplab", {"backbone": "espnet_c"}),
    ("refinenet", {"backbone": "espnet_c"}),
]
# ResNet-50 stands in for ResNet-101 in forward passes (same code, half the set-up time);
# the ResNet-101 layouts are checked on the meta device in the tests of sizes and layouts.
BIG_VARIANTS = [
    ("segnet", {"backbone": "vgg16_bn"}),
    ("deeplab", {"version": "v3", "backbone": "resnet50"}),
    ("deeplab", {"version": "v3plus", "backbone": "resnet50", "output_stride": 8}),
    ("refinenet", {"light_weight": False, "backbone": "resnet50"}),
    ("refinenet", {"light_weight": True, "backbone": "resnet50"}),
]


class Opaque:
    """A pickled object that is not a tensor."""


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def on_meta(family: str, num_classes: int, **options) -> nn.Module:
    """Build without allocating or initialising weights: for sizes and key layouts only."""
    with torch.device("meta"):
        return build_model(family, num_classes, **options)


# ---------------------------------------------------------------- sizes against the papers


@pytest.mark.parametrize(
    "family, options, classes, expected, tolerance",
    [
        (
            "segnet",
            {"backbone": "vgg16_bn"},
            11,
            29.4e6,
            0.005,
        ),  # SegNet paper: 29.4M (117 MB fp32)
        (
            "refinenet",
            {"light_weight": True, "backbone": "resnet50"},
            21,
            27e6,
            0.02,
        ),  # LW-RefineNet paper
        ("refinenet", {"light_weight": True, "backbone": "resnet101"}, 21, 46e6, 0.02),
        ("refinenet", {"light_weight": True, "backbone": "mobilenet_v2"}, 21, 3.3e6, 0.02),
    ],
)
def test_parameter_counts_match_the_papers(family, options, classes, expected, tolerance):
    count = n_params(on_meta(family, classes, **options))
    assert abs(count - expected) <= tolerance * expected, (
        f"{count / 1e6:.2f}M, paper {expected / 1e6:.1f}M"
    )


def test_segnet_encoder_is_vgg16_bn_with_14_7m_parameters():
    model = on_meta("segnet", 11)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert abs(n_params(model.features) - 14.7e6) < 0.01e6 * 14.7
    decoder_convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)] + [
        model.classifier
    ]
    assert len(decoder_convs) == 13  # mirrored: 13 convs, the last one classifies
    # Mirrored widths: the decoder undoes the encoder's channel changes in reverse order.
    assert [c.in_channels for c in decoder_convs[::-1]] == [c.out_channels for c in convs]


def test_segnet_basic_layout():
    model = on_meta("segnet", 11, backbone="basic")
    enc = [m for m in model.features if isinstance(m, nn.Conv2d)]
    dec = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(enc) == 4 and len(dec) == 4
    assert all(c.kernel_size == (7, 7) and c.out_channels == 64 for c in enc + dec)
    assert not any(
        isinstance(m, nn.ReLU) for m in model.decoder.modules()
    )  # the paper's linear decoder
    assert model.num_pools == 4


def test_bundled_deeplab_variant_fits_a_20mb_fp16_file():
    model = on_meta("deeplab", 11)
    assert n_params(model) * 2 < 20e6
    separable = [m for m in model.aspp.convs[1].modules() if isinstance(m, nn.Conv2d)]
    assert separable[0].groups == separable[0].in_channels  # depthwise atrous conv, then pointwise


# ---------------------------------------------------------------- architecture details


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_rates_follow_the_output_stride(output_stride, rates):
    model = on_meta("deeplab", 11, version="v3", backbone="resnet50", output_stride=output_stride)
    aspp = model.classifier[0]
    assert tuple(aspp.convs[i][0].dilation[0] for i in (1, 2, 3)) == rates
    assert isinstance(aspp.convs[4][0], nn.AdaptiveAvgPool2d)  # image-level pooling branch


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "mobilenet_v2"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_atrous_mobilenets_reach_the_output_stride(backbone, output_stride):
    """Our atrous rewrite (ResNets use torchvision's own, checked against torchvision below)."""
    deep = TAPS[backbone][-1][0]
    body = feature_extractor(backbone, {"3": "low", deep: "out"}, output_stride).eval()
    with torch.no_grad():
        out = body(torch.zeros(1, 3, 64, 96))
    assert out["out"].shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert out["low"].shape[-2:] == (16, 24)  # v3+ fuses stride-4 features


def test_v3plus_decoder_fuses_stride4_features():
    for backbone, low_channels in (("mobilenet_v3_large", 24), ("resnet101", 256)):
        model = on_meta("deeplab", 11, version="v3plus", backbone=backbone)
        assert model.decoder.reduce[0].in_channels == low_channels
        assert model.decoder.reduce[0].out_channels == 48


def test_refinenet_is_a_four_cascade_with_rcus_fusion_and_chained_pooling():
    model = on_meta("refinenet", 21, light_weight=False, backbone="resnet101")
    assert len(model.levels) == 4 and all(isinstance(b, RefineBlock) for b in model.levels)
    for i, block in enumerate(model.levels):
        assert all(
            len(path) == 2 and all(isinstance(u, ResidualConvUnit) for u in path)
            for path in block.paths
        )
        assert isinstance(block.pool, ChainedResidualPooling)
        assert (block.fuse is None) == (
            i == 0
        )  # RefineNet-4 has one input; the others fuse two resolutions
    assert model.levels[0].out_channels == 512 and model.levels[-1].out_channels == 256
    assert sum(isinstance(m, ResidualConvUnit) for m in model.head) == 2


def test_light_weight_refinenet_uses_1x1_convs_and_four_pooling_blocks():
    model = on_meta("refinenet", 21, backbone="mobilenet_v2")
    assert all(isinstance(level, LightRefineLevel) for level in model.levels)
    for level in model.levels:
        assert len(level.pool.convs) == 4
        assert all(c.kernel_size == (1, 1) for c in level.modules() if isinstance(c, nn.Conv2d))
    assert [len(level.reduce) for level in model.levels] == [
        2,
        2,
        1,
        1,
    ]  # MobileNetV2 taps per stride


# ---------------------------------------------------------------- torchvision compatibility


@pytest.mark.parametrize(
    "builder, backbone, output_stride",
    [
        (tvseg.deeplabv3_resnet50, "resnet50", 8),
        (tvseg.deeplabv3_resnet101, "resnet101", 8),
        (tvseg.deeplabv3_mobilenet_v3_large, "mobilenet_v3_large", 16),
    ],
)
def test_torchvision_deeplabv3_state_dict_loads_strictly(builder, backbone, output_stride):
    with torch.device("meta"):
        reference = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    ours = on_meta("deeplab", 21, version="v3", backbone=backbone, output_stride=output_stride)
    state = reference.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }
    ours.load_state_dict(state, strict=True)


def test_v3_resnet50_at_output_stride_8_computes_what_torchvision_computes():
    torch.manual_seed(0)
    reference = tvseg.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=False
    ).eval()
    ours = build_model("deeplab", 5, version="v3", backbone="resnet50", output_stride=8).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x)["out"], atol=1e-5)


def test_mobilenet_v3_backbone_equals_torchvision_dilated():
    torch.manual_seed(0)
    reference = tvm.mobilenet_v3_large(weights=None, dilated=True).features.eval()
    ours = feature_extractor("mobilenet_v3_large", {"16": "out"}, 16).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours(x)["out"], reference(x))


@pytest.mark.parametrize(
    "family, options, classifier",
    [
        ("segnet", {"backbone": "vgg16_bn"}, tvm.vgg16_bn),
        ("deeplab", {"backbone": "resnet101"}, tvm.resnet101),
        ("deeplab", {"backbone": "resnet50", "version": "v3"}, tvm.resnet50),
        ("deeplab", {"backbone": "mobilenet_v3_large"}, tvm.mobilenet_v3_large),
        ("refinenet", {"backbone": "mobilenet_v2"}, tvm.mobilenet_v2),
    ],
)
def test_imagenet_checkpoint_keys_cover_the_backbone(family, options, classifier):
    model = on_meta(family, 11, **options)
    body = model.features if family == "segnet" else model.backbone
    prefix = "features." if family == "segnet" else IMAGENET_PREFIX[options["backbone"]]
    with torch.device("meta"):
        imagenet = classifier(weights=None).state_dict()
    for key, value in body.state_dict().items():
        assert tuple(imagenet[prefix + key].shape) == tuple(value.shape), key


def test_pretrained_backbone_loads_local_imagenet_weights(tmp_path):
    torch.manual_seed(1)
    imagenet = tvm.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("refinenet", 11, backbone="mobilenet_v2", pretrained_backbone=str(path))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, imagenet.state_dict()["features." + key]), key


def test_pretrained_backbone_rejects_wrong_or_unsafe_files(tmp_path):
    wrong = tmp_path / "mobilenet_v2.pth"
    torch.save(tvm.mobilenet_v2(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit this backbone"):
        build_model("deeplab", 11, backbone="mobilenet_v3_large", pretrained_backbone=str(wrong))
    unsafe = tmp_path / "object.pth"
    torch.save({"model": Opaque()}, unsafe)  # loading it would run arbitrary unpickling: refused
    with pytest.raises(ValueError, match="not a loadable tensor checkpoint"):
        build_model("refinenet", 11, pretrained_backbone=str(unsafe))
    with pytest.raises(FileNotFoundError):
        build_model("refinenet", 11, pretrained_backbone=str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- ESPNet-C

ESPNET_FILE = (
    Path(__file__).resolve().parents[2] / "shared/pretrained/espnet_c_p2_q8_cityscapes.pth"
)


def test_espnet_c_converts_imagenet_input_to_the_authors_normalisation():
    """Fed ImageNet-normalised RGB, the encoder computes what the authors' BGR input gives."""
    from seg_ros.models.espnet import ESPNET_MEAN_BGR, ESPNET_STD_BGR, EspNetC
    from seg_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    encoder = EspNetC({"level3": "out"}).eval()
    pixels = torch.randint(0, 256, (1, 3, 40, 56)).float()  # RGB, 0..255
    imagenet = (pixels / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    bgr = pixels.flip(1)
    authors = (
        (bgr - torch.tensor(ESPNET_MEAN_BGR).view(1, 3, 1, 1))
        / torch.tensor(ESPNET_STD_BGR).view(1, 3, 1, 1)
        / 255
    )
    with torch.no_grad():
        ours = encoder(imagenet)["out"]
        encoder.input_scale.fill_(1.0)
        encoder.input_shift.fill_(0.0)
        theirs = encoder(authors.flip(1))["out"]  # forward flips RGB->BGR first
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert ours.shape == (1, 256, 5, 7)  # stride 8


@pytest.mark.skipif(not ESPNET_FILE.is_file(), reason=f"{ESPNET_FILE} not here")
def test_the_authors_espnet_c_file_loads_as_a_pretrained_backbone():
    state = torch.load(ESPNET_FILE, map_location="cpu", weights_only=True)
    model = build_model("deeplab", 11, backbone="espnet_c", pretrained_backbone=str(ESPNET_FILE))
    ours = model.backbone.state_dict()
    loaded = [k for k in state if k in ours]
    assert len(loaded) == len(state) - 1  # all but the authors' Cityscapes classifier
    for key in loaded:
        torch.testing.assert_close(ours[key], state[key])


# ---------------------------------------------------------------- shapes at any size


@pytest.mark.parametrize("family, options", SMALL_VARIANTS)
def test_small_variants_give_logits_at_odd_input_sizes(family, options):
    model = build_model(family, 11, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 65, 97))
    assert out.shape == (2, 11, 65, 97) and torch.isfinite(out).all()


@pytest.mark.parametrize("family, options", BIG_VARIANTS)
def test_big_variants_give_logits_at_odd_input_sizes(family, options):
    model = build_model(family, 7, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 47))
    assert out.shape == (1, 7, 33, 47) and torch.isfinite(out).all()


def test_segnet_unpooling_places_one_value_per_window():
    """Unpooling, not upsampling: each 2x2 decoder-input window holds one non-zero per channel."""
    model = build_model("segnet", 3, backbone="basic").eval()
    unpooled = []
    hook = model.decoder[-1].register_forward_pre_hook(lambda m, args: unpooled.append(args[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
    hook.remove()
    last = unpooled[0][0]  # input of the shallowest decoder stage, C×H×W
    windows = F.unfold(last[:, None], 2, stride=2)  # C × 4 × windows
    assert int((windows != 0).sum(1).max()) == 1


# ---------------------------------------------------------------- options


NO_CRF_RNN = {"crf_rnn": False, "crf_iterations": 5}


def test_defaults_are_the_bundled_variants_and_the_papers():
    assert resolve_options("segnet") == {"backbone": "vgg16_bn", **NO_CRF_RNN}
    assert resolve_options("deeplab") == {
        "version": "v3plus",
        "backbone": "mobilenet_v3_large",
        "output_stride": 16,
        "separable": True,
        **NO_CRF_RNN,
    }
    assert (
        resolve_options("deeplab", version="v3")["separable"] is False
    )  # torchvision's DeepLabV3
    assert resolve_options("refinenet") == {
        "light_weight": True,
        "backbone": "mobilenet_v2",
        **NO_CRF_RNN,
    }
    assert resolve_options("fcn") == {
        "backbone": "vgg16",
        "variant": "8s",
        "aux_head": False,
        **NO_CRF_RNN,
    }
    assert resolve_options("refinenet", light_weight=False)["backbone"] == "resnet101"
    assert resolve_options("deeplab", output_stride="8", separable="false")["output_stride"] == 8


@pytest.mark.parametrize(
    "family, options, message",
    [
        ("unet", {}, "unknown model family"),
        ("segnet", {"version": "v3"}, "segnet has no option 'version'"),
        ("deeplab", {"backbone": "vgg16_bn"}, "backbone='vgg16_bn' is not one of"),
        ("deeplab", {"output_stride": 32}, "output_stride=32"),
        ("fcn", {"variant": "4s"}, r"variant='4s' is not one of \['8s', '16s', '32s'\]"),
        ("fcn", {"backbone": "resnet50", "variant": "32s"}, "variant must be '8s'"),
        ("fcn", {"aux_head": True}, "aux_head=True needs backbone resnet50 or resnet101"),
        ("segnet", {"crf_iterations": 3}, "crf_iterations=3 needs crf_rnn=True"),
        ("deeplab", {"crf_rnn": True, "crf_iterations": 0}, r"not an integer in \[1, 20\]"),
        ("refinenet", {"crf_rnn": "maybe"}, "crf_rnn='maybe' is not one of"),
        ("deeplab", {"backbone": "espnet_c", "output_stride": 16}, "output stride 8"),
    ],
)
def test_bad_options_are_named(family, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(family, 11, **options)


# ---------------------------------------------------------------- checkpoints


def _spec(family="segnet", options=None, **kw) -> ModelSpec:
    return ModelSpec(
        name=kw.pop("name", "test"),
        family=family,
        options={"backbone": "basic"} if options is None else options,
        num_classes=kw.pop("num_classes", 11),
        class_table="camvid",
        **kw,
    )


def test_checkpoint_round_trip_is_exact_and_self_describing(tmp_path):
    model = build_model("segnet", 11, backbone="basic").eval()
    path = save_checkpoint(
        tmp_path / "segnet.safetensors", model, _spec(metrics={"val_miou": 0.5})
    )
    loaded = load_model(weights=str(path))
    assert loaded.spec.family == "segnet" and loaded.spec.options == {
        "backbone": "basic",
        **NO_CRF_RNN,
    }
    assert loaded.spec.metrics == {"val_miou": 0.5} and loaded.spec.class_table == "camvid"
    assert loaded.spec.weights_path == str(path) and len(loaded.spec.weights_sha256) == 64
    assert not loaded.module.training
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))


def test_half_checkpoint_is_half_the_size_and_loads_as_float32(tmp_path):
    model = build_model("refinenet", 11).eval()
    full = save_checkpoint(tmp_path / "full.safetensors", model, _spec("refinenet", {}))
    half = save_checkpoint(tmp_path / "half.safetensors", model, _spec("refinenet", {}), half=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load_model("refinenet", weights=str(half))
    assert loaded.spec.options == {
        "light_weight": True,
        "backbone": "mobilenet_v2",
        **NO_CRF_RNN,
    }  # filled in on save
    weight = loaded.module.classifier.weight
    assert weight.dtype == torch.float32 and torch.equal(
        weight, model.classifier.weight.half().float()
    )


def test_load_model_rejects_missing_corrupt_and_mismatched_files(tmp_path):
    model = build_model("segnet", 11, backbone="basic")
    path = save_checkpoint(tmp_path / "segnet.safetensors", model, _spec())
    with pytest.raises(FileNotFoundError):
        load_model(weights=str(tmp_path / "nope.safetensors"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_model(weights=str(corrupt))
    with pytest.raises(ValueError, match="holds a segnet model"):
        load_model("deeplab", weights=str(path))
    with pytest.raises(ValueError, match="predicts 11 classes"):
        load_model(weights=str(path), num_classes=21)
    with pytest.raises(ValueError, match="backbone='vgg16_bn'"):
        load_model(weights=str(path), backbone="vgg16_bn")
    # Weights of one network under another network's metadata.
    liar = save_checkpoint(tmp_path / "liar.safetensors", build_model("refinenet", 11), _spec())
    with pytest.raises(ValueError, match="liar.safetensors: weights do not match"):
        load_model(weights=str(liar))
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="without seg_ros model metadata"):
        read_spec(plain)


def test_torchvision_checkpoint_loads_with_aux_head_dropped(tmp_path):
    torch.manual_seed(2)
    reference = tvseg.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=True
    ).eval()
    path = tmp_path / "deeplabv3_mobilenet_v3_large_coco.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_model("deeplab", weights=str(path), version="v3", backbone="mobilenet_v3_large")
    assert loaded.spec.num_classes == 5 and loaded.spec.options["version"] == "v3"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded.module.backbone(x)["out"], reference.backbone(x)["out"])
    with pytest.raises(ValueError, match="give the model family"):
        load_model(weights=str(path))
    with pytest.raises(ValueError, match="not a deeplabv3plus"):
        load_model("deeplab", weights=str(path))


@pytest.fixture
def models_folder(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(checkpoint_module, "models_dir", lambda: folder)
    return folder


def test_bundled_models_are_found_and_the_best_is_the_default(models_folder, caplog):
    save_checkpoint(
        models_folder / "segnet_basic.safetensors",
        build_model("segnet", 11, backbone="basic"),
        _spec(name="segnet_basic_camvid", metrics={"val_miou": 0.40}),
        half=True,
    )
    save_checkpoint(
        models_folder / "lw_refinenet.safetensors",
        build_model("refinenet", 11),
        _spec("refinenet", {}, name="lw_refinenet_camvid", metrics={"val_miou": 0.50}),
        half=True,
    )
    (models_folder / "junk.safetensors").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        specs = bundled_models()
    assert sorted(s.name for s in specs) == ["lw_refinenet_camvid", "segnet_basic_camvid"]
    assert "junk.safetensors" in caplog.text

    assert load_model().spec.name == "lw_refinenet_camvid"  # best val_miou
    # A figure measured on a held-out drive outranks a higher one on val (same drive).
    held_out = {"val_miou": 0.45, "evaluations": {"new-drive": {"miou": 0.45}}}
    save_checkpoint(
        models_folder / "segnet_basic.safetensors",
        build_model("segnet", 11, backbone="basic"),
        _spec(name="segnet_basic_camvid", metrics=held_out),
        half=True,
    )
    assert load_model().spec.name == "segnet_basic_camvid"
    save_checkpoint(
        models_folder / "segnet_basic.safetensors",
        build_model("segnet", 11, backbone="basic"),
        _spec(name="segnet_basic_camvid", metrics={"val_miou": 0.40}),
        half=True,
    )
    segnet = load_model("segnet")  # the bundled SegNet-Basic, not the unbundled VGG16 default
    assert segnet.spec.name == "segnet_basic_camvid" and segnet.spec.options == {
        "backbone": "basic",
        **NO_CRF_RNN,
    }
    assert (
        load_model(weights="segnet_basic").spec.name == "segnet_basic_camvid"
    )  # a bundled file by its stem

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        random = load_model("deeplab")
    assert (
        random.spec.weights_path == ""
        and random.spec.num_classes == 11
        and random.spec.class_table == "camvid"
    )
    assert "NO TRAINED WEIGHTS" in caplog.text
    # The bundled variant exists, only not for 21 classes: refused, never a silent random swap.
    with pytest.raises(ValueError, match="no bundled weights predict 21 classes"):
        load_model("refinenet", num_classes=21)
