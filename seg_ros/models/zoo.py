"""The model zoo: which families and variants exist, their defaults, and ``build_model``.

Defaults are the variants that ship with CamVid weights (small enough for a
package): DeepLab v3+ on MobileNetV3-Large with separable convolutions and
Light-Weight RefineNet on MobileNetV2. SegNet's default stays the paper's
VGG16-bn; ``load_model`` picks SegNet-Basic when that is what is bundled.
"""

from __future__ import annotations

from torch import nn

FAMILIES = ("segnet", "deeplab", "refinenet")

# Allowed values per option; the first is the default unless DEFAULTS says otherwise.
CHOICES: dict[str, dict[str, tuple]] = {
    "segnet": {"backbone": ("vgg16_bn", "basic")},
    "deeplab": {
        "version": ("v3plus", "v3"),
        "backbone": ("mobilenet_v3_large", "resnet50", "resnet101"),
        "output_stride": (16, 8),
        "separable": (True, False),
    },
    "refinenet": {
        "light_weight": (True, False),
        "backbone": ("mobilenet_v2", "resnet50", "resnet101"),
    },
}


def _default(family: str, name: str, chosen: dict):
    """An option's default, which may depend on the options already chosen."""
    if family == "deeplab" and name == "separable":
        # The v3+ paper's separable ASPP/decoder keeps the MobileNet model small (< 20 MB in fp16);
        # everything else defaults to plain convs, so version='v3' stays torchvision's DeepLabV3.
        return chosen["version"] == "v3plus" and chosen["backbone"].startswith("mobilenet")
    if family == "refinenet" and name == "backbone":
        return "mobilenet_v2" if chosen["light_weight"] else "resnet101"  # RefineNet's paper model
    return CHOICES[family][name][0]


def _coerce(value, allowed: tuple):
    """Accept '8' for 8 and 'true'/'false' for booleans, as CLI flags and ROS parameters deliver them."""
    if isinstance(allowed[0], bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        return value
    if isinstance(allowed[0], int) and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def resolve_options(family: str, **options) -> dict:
    """Full option dict for ``family`` (defaults filled in, values checked); None or '' means 'default'.

    ``pretrained_backbone`` is not a property of the network and is not returned.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: expected one of {', '.join(FAMILIES)}")
    given = {
        k: v
        for k, v in options.items()
        if v is not None and v != "" and k != "pretrained_backbone"
    }
    unknown = sorted(set(given) - set(CHOICES[family]))
    if unknown:
        raise ValueError(
            f"{family} has no option {', '.join(map(repr, unknown))}; its options are {', '.join(CHOICES[family])}"
        )
    resolved: dict = {}
    for name, allowed in CHOICES[family].items():
        if name in given:
            value = _coerce(given[name], allowed)
            if value not in allowed or type(value) is not type(allowed[0]):
                raise ValueError(
                    f"{family} option {name}={given[name]!r} is not one of {list(allowed)}"
                )
            resolved[name] = value
        else:
            resolved[name] = _default(family, name, resolved)
    return resolved


def variant_name(family: str, options: dict) -> str:
    """A short readable name for a variant, e.g. 'deeplabv3plus_mobilenet_v3_large'."""
    o = resolve_options(family, **options)
    if family == "segnet":
        return "segnet_basic" if o["backbone"] == "basic" else "segnet_vgg16_bn"
    if family == "deeplab":
        name = f"deeplab{o['version']}_{o['backbone']}_os{o['output_stride']}"
        return name + ("_separable" if o["separable"] else "")
    return f"{'lw_' if o['light_weight'] else ''}refinenet_{o['backbone']}"


def build_model(family: str, num_classes: int, **options) -> nn.Module:
    """A randomly initialised network mapping N×3×H×W floats to N×C×H×W logits at input resolution.

    Options per family (see CHOICES): segnet ``backbone``; deeplab ``version``,
    ``backbone``, ``output_stride``, ``separable``; refinenet ``light_weight``,
    ``backbone``; all ``pretrained_backbone=PATH`` (a local torchvision ImageNet
    checkpoint, read with ``weights_only=True``).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    o = resolve_options(family, **options)
    pretrained = str(options.get("pretrained_backbone") or "")
    if family == "segnet":
        from seg_ros.models.segnet import segnet_basic, segnet_vgg16_bn

        if o["backbone"] == "basic":
            if pretrained:
                raise ValueError(
                    "SegNet-Basic has no ImageNet backbone; pretrained_backbone needs backbone='vgg16_bn'"
                )
            return segnet_basic(num_classes)
        return segnet_vgg16_bn(num_classes, pretrained)
    if family == "deeplab":
        from seg_ros.models.deeplab import deeplab

        return deeplab(num_classes, pretrained_backbone=pretrained, **o)
    from seg_ros.models.refinenet import refinenet

    return refinenet(num_classes, pretrained_backbone=pretrained, **o)
