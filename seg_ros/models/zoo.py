"""The model zoo: which families and variants exist, their defaults, and ``build_model``.

Defaults are the variants that ship with CamVid weights (small enough for a
package): DeepLab v3+ on MobileNetV3-Large with separable convolutions and
Light-Weight RefineNet on MobileNetV2. SegNet's default stays the paper's
VGG16-bn; ``load_model`` picks SegNet-Basic when that is what is bundled, and
for DeepLab the bundled ESPNet-C variant (it is scored on a held-out drive).
FCN's default is the paper's FCN-8s on VGG16. Every family can end in the
trainable CRF-as-RNN layer (``crf_rnn=True``, ``crf_iterations`` unrolled).
"""

from __future__ import annotations

from torch import nn

# Allowed values per option; the first is the default unless _default says otherwise.
# This registry is the one list of families: FAMILIES and every command's choices derive from it.
CHOICES: dict[str, dict[str, tuple]] = {
    "segnet": {"backbone": ("vgg16_bn", "basic")},
    "deeplab": {
        "version": ("v3plus", "v3"),
        "backbone": ("mobilenet_v3_large", "resnet50", "resnet101", "espnet_c"),
        "output_stride": (16, 8),
        "separable": (True, False),
    },
    "refinenet": {
        "light_weight": (True, False),
        "backbone": ("mobilenet_v2", "resnet50", "resnet101", "espnet_c"),
    },
    "fcn": {
        "backbone": ("vgg16", "resnet50", "resnet101"),
        "variant": ("8s", "16s", "32s"),
        "aux_head": (False, True),
    },
}
FAMILIES = tuple(CHOICES)
LIGHT_BACKBONES = ("mobilenet_v3_large", "mobilenet_v2", "espnet_c")

# Options every family has: the CRF-as-RNN layer at the network's end (seg_ros.crf.layer).
MAX_CRF_ITERATIONS = 20
DEFAULT_CRF_ITERATIONS = 5  # as CRF-as-RNN trains (and as the post-hoc CRF runs)
CRF_CHOICES: dict[str, tuple] = {
    "crf_rnn": (False, True),
    "crf_iterations": tuple(range(1, MAX_CRF_ITERATIONS + 1)),
}


def _default(family: str, name: str, chosen: dict):
    """Return an option's default, which may depend on the options already chosen."""
    if family == "deeplab" and name == "separable":
        # The v3+ paper's separable ASPP/decoder keeps the MobileNet model small (< 20 MB in fp16);
        # everything else defaults to plain convs, so version='v3' stays torchvision's DeepLabV3.
        return chosen["version"] == "v3plus" and chosen["backbone"] in LIGHT_BACKBONES
    if family == "deeplab" and name == "output_stride" and chosen["backbone"] == "espnet_c":
        return 8  # ESPNet-C is built at stride 8
    if family == "refinenet" and name == "backbone":
        return "mobilenet_v2" if chosen["light_weight"] else "resnet101"  # RefineNet's paper model
    if name == "crf_iterations":
        return DEFAULT_CRF_ITERATIONS
    return _choices(family)[name][0]


def _choices(family: str) -> dict[str, tuple]:
    return {**CHOICES[family], **CRF_CHOICES}


def _coerce(value, allowed: tuple):
    """Accept '8' for 8 and 'true'/'false' for booleans, as CLI flags and ROS parameters send."""
    if isinstance(allowed[0], bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        return value
    if isinstance(allowed[0], int) and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def resolve_options(family: str, **options) -> dict:
    """Return the full option dict for ``family``: defaults filled in, values checked.

    None or '' means 'default'.

    ``pretrained_backbone`` is not a property of the network and is not returned.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: expected one of {', '.join(FAMILIES)}")
    given = {
        k: v
        for k, v in options.items()
        if v is not None and v != "" and k != "pretrained_backbone"
    }
    choices = _choices(family)
    unknown = sorted(set(given) - set(choices))
    if unknown:
        raise ValueError(
            f"{family} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(choices)}"
        )
    resolved: dict = {}
    for name, allowed in choices.items():
        if name in given:
            value = _coerce(given[name], allowed)
            if value not in allowed or type(value) is not type(allowed[0]):
                shown = (
                    f"an integer in [1, {MAX_CRF_ITERATIONS}]"
                    if name == "crf_iterations"
                    else f"one of {list(allowed)}"
                )
                raise ValueError(f"{family} option {name}={given[name]!r} is not {shown}")
            resolved[name] = value
        else:
            resolved[name] = _default(family, name, resolved)
    if not resolved["crf_rnn"] and resolved["crf_iterations"] != DEFAULT_CRF_ITERATIONS:
        raise ValueError(
            f"crf_iterations={resolved['crf_iterations']} needs crf_rnn=True "
            "(the CRF-as-RNN layer)"
        )
    if family == "fcn" and resolved["backbone"] != "vgg16":
        if resolved["variant"] != "8s":
            raise ValueError(
                f"fcn on {resolved['backbone']} follows torchvision's layout (dilated, output "
                f"stride 8): variant must be '8s', got {resolved['variant']!r}"
            )
    if (
        family == "deeplab"
        and resolved["backbone"] == "espnet_c"
        and resolved["output_stride"] != 8
    ):
        raise ValueError("deeplab on espnet_c has output stride 8 (ESPNet-C's own), not 16")
    if family == "fcn" and resolved["backbone"] == "vgg16" and resolved["aux_head"]:
        raise ValueError("fcn option aux_head=True needs backbone resnet50 or resnet101")
    return resolved


def variant_name(family: str, options: dict) -> str:
    """Return a short readable name for a variant, e.g. 'deeplabv3plus_mobilenet_v3_large'."""
    o = resolve_options(family, **options)
    if family == "segnet":
        name = "segnet_basic" if o["backbone"] == "basic" else "segnet_vgg16_bn"
    elif family == "deeplab":
        name = f"deeplab{o['version']}_{o['backbone']}_os{o['output_stride']}"
        name += "_separable" if o["separable"] else ""
    elif family == "fcn":
        name = f"fcn{o['variant']}_{o['backbone']}" + ("_aux" if o["aux_head"] else "")
    else:
        name = f"{'lw_' if o['light_weight'] else ''}refinenet_{o['backbone']}"
    return name + (f"_crf_rnn{o['crf_iterations']}" if o["crf_rnn"] else "")


def build_model(family: str, num_classes: int, **options) -> nn.Module:
    """Build a randomly initialised network: N×3×H×W floats to N×C×H×W logits at input size.

    Options per family (see CHOICES): segnet ``backbone``; deeplab ``version``,
    ``backbone``, ``output_stride``, ``separable``; refinenet ``light_weight``,
    ``backbone``; fcn ``backbone``, ``variant``, ``aux_head``; all ``crf_rnn``,
    ``crf_iterations`` and ``pretrained_backbone=PATH`` (a local torchvision
    ImageNet checkpoint, read with ``weights_only=True``).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    o = resolve_options(family, **options)
    pretrained = str(options.get("pretrained_backbone") or "")
    network = _build_network(family, num_classes, o, pretrained)
    if not o["crf_rnn"]:
        return network
    from seg_ros.crf.layer import CrfRnnNetwork
    from seg_ros.models.checkpoint import IMAGENET_MEAN, IMAGENET_STD

    return CrfRnnNetwork(network, num_classes, o["crf_iterations"], IMAGENET_MEAN, IMAGENET_STD)


def _build_network(family: str, num_classes: int, o: dict, pretrained: str) -> nn.Module:
    if family == "segnet":
        from seg_ros.models.segnet import segnet_basic, segnet_vgg16_bn

        if o["backbone"] == "basic":
            if pretrained:
                raise ValueError(
                    "SegNet-Basic has no ImageNet backbone; "
                    "pretrained_backbone needs backbone='vgg16_bn'"
                )
            return segnet_basic(num_classes)
        return segnet_vgg16_bn(num_classes, pretrained)
    if family == "deeplab":
        from seg_ros.models.deeplab import deeplab

        return deeplab(num_classes, pretrained_backbone=pretrained, **_network_options(family, o))
    if family == "fcn":
        from seg_ros.models.fcn import fcn

        return fcn(num_classes, pretrained_backbone=pretrained, **_network_options(family, o))
    from seg_ros.models.refinenet import refinenet

    return refinenet(num_classes, pretrained_backbone=pretrained, **_network_options(family, o))


def _network_options(family: str, o: dict) -> dict:
    """Pick the options that shape the family's own network (not the CRF layer after it)."""
    return {k: o[k] for k in CHOICES[family]}
