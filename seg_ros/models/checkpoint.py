"""Self-describing checkpoints: safetensors weights with the ModelSpec as JSON metadata.

A checkpoint says which network it is (family + full options), how many
classes and which class table, the input size and normalisation it was
trained with, and its metrics, so ``load_model`` needs only the file.
torchvision-style ``.pt``/``.pth`` state_dicts load too (read with
``weights_only=True``), given the family and options.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from seg_ros.models.zoo import FAMILIES, build_model, resolve_options, variant_name
from seg_ros.paths import models_dir
from seg_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD

LOG = logging.getLogger(__name__)

METADATA_KEY = "seg_ros.spec"
DEFAULT_FAMILY = "deeplab"  # used when nothing is bundled and no family is asked for
DEFAULT_CLASS_TABLE = "camvid"


@dataclass
class ModelSpec:
    """What a set of weights is: network, classes, trained input size, normalisation, metrics."""

    name: str
    family: str
    options: dict = field(default_factory=dict)
    num_classes: int = 0
    class_table: str = ""
    input_height: int = 360
    input_width: int = 480
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights_path: str = ""  # '' = random initialisation
    weights_sha256: str = ""
    metrics: dict = field(default_factory=dict)  # e.g. {'val_miou': 0.52}
    crf: dict = field(default_factory=dict)  # dense-CRF parameters fitted by `seg_ros tune-crf`

    def to_json(self) -> str:
        data = asdict(self)
        del (
            data["weights_path"],
            data["weights_sha256"],
        )  # properties of the file, not of the model
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, **extra) -> ModelSpec:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["mean"] = tuple(data.get("mean", IMAGENET_MEAN))
        data["std"] = tuple(data.get("std", IMAGENET_STD))
        return cls(**data, **extra)


@dataclass
class LoadedModel:
    module: nn.Module  # eval mode, CPU, float32
    spec: ModelSpec


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path, module: nn.Module, spec: ModelSpec, half: bool = False
) -> Path:
    """Write ``module``'s weights (fp16 if ``half``) and ``spec`` to a .safetensors file."""
    from safetensors.torch import save_file

    if spec.family not in FAMILIES or spec.num_classes < 1:
        raise ValueError(
            f"cannot save a checkpoint for spec {spec.name!r}: family and num_classes must be set"
        )
    spec = replace(
        spec, options=resolve_options(spec.family, **spec.options)
    )  # self-describing: all options
    tensors = {}
    for key, value in module.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value.contiguous().clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: spec.to_json()})
    return path


def read_spec(path: str | Path) -> ModelSpec:
    """Read the ModelSpec stored in a seg_ros .safetensors file; ValueError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"{path}: safetensors file without seg_ros model metadata ({METADATA_KEY!r})"
        )
    try:
        spec = ModelSpec.from_json(metadata[METADATA_KEY], weights_path=str(path))
        spec.options = resolve_options(spec.family, **spec.options)
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: invalid seg_ros model metadata ({exc})") from exc
    return spec


def bundled_models() -> list[ModelSpec]:
    """Specs of the weights shipped in models/ (found by their metadata), sorted by file name."""
    folder = models_dir()
    specs = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            spec = read_spec(path)
        except ValueError as exc:
            LOG.warning("ignoring %s", exc)
            continue
        spec.weights_sha256 = file_sha256(path)
        specs.append(spec)
    return specs


def _fits(spec: ModelSpec, family: str, num_classes: int, options: dict) -> bool:
    """Whether bundled ``spec`` is what was asked for (empty arguments match anything)."""
    if (family and spec.family != family) or (num_classes and spec.num_classes != num_classes):
        return False
    try:
        asked = resolve_options(spec.family, **options)
    except ValueError:  # options of another family
        return False
    return all(asked[k] == spec.options[k] for k in options)


def _rank(spec: ModelSpec) -> tuple[bool, float]:
    """Order bundled weights: a held-out-drive figure first, then mIoU.

    Val shares a drive with training, so a val-only figure is optimistic and never outranks a
    measured new-drive one.
    """
    measured_on_new_drive = "new-drive" in (spec.metrics.get("evaluations") or {})
    return measured_on_new_drive, float(spec.metrics.get("val_miou", float("-inf")))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ValueError(f"{path}: cannot read weights ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled objects other than tensors, truncated files
        raise ValueError(f"{path}: not a loadable tensor checkpoint ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors)")
    dropped = [k for k in state if k.startswith("aux_classifier.")]
    if dropped:  # torchvision's segmentation checkpoints carry an auxiliary training head
        LOG.info("%s: ignoring %d aux_classifier weights (training-only head)", path, len(dropped))
    return {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}


def _load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with a message that names the file and what does not fit."""
    wanted = module.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the network ({len(missing)} missing, e.g. "
            f"{missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise ValueError(
                f"{path}: weights do not match the network ({key} is {tuple(value.shape)}, "
                f"the network needs {tuple(wanted[key].shape)})"
            )
    module.load_state_dict(state, strict=True)


def resolve_weights_path(weights: str) -> Path:
    """Resolve a path as given, or a file in models/ named by file name or stem."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    for candidate in (models_dir() / weights, models_dir() / f"{weights}.safetensors"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"weights file not found: {weights}")


def _class_setup(num_classes: int, class_table: str) -> tuple[int, str]:
    """num_classes and class table for a model without a checkpoint to say."""
    if class_table:
        from seg_ros.classes import load_class_table

        table = load_class_table(class_table)
        if num_classes and num_classes != table.num_classes:
            raise ValueError(
                f"num_classes={num_classes} does not match class table {class_table!r} "
                f"({table.num_classes} classes)"
            )
        return table.num_classes, class_table
    if num_classes:
        return num_classes, ""
    from seg_ros.classes import load_class_table

    return load_class_table(DEFAULT_CLASS_TABLE).num_classes, DEFAULT_CLASS_TABLE


def _finish(module: nn.Module, spec: ModelSpec) -> LoadedModel:
    return LoadedModel(module.float().cpu().eval(), spec)


def load_model(
    family: str = "", weights: str = "", num_classes: int = 0, class_table: str = "", **options
) -> LoadedModel:
    """Build a network and load its weights (see _load_model); crf_rnn options apply to any.

    Weights trained without the CRF-as-RNN layer get one that starts as the post-hoc CRF
    (seg_ros.models.crf_rnn).
    """
    from seg_ros.models.crf_rnn import apply_crf_options, split_crf_options

    options = {k: v for k, v in options.items() if v is not None and v != ""}
    if family:
        resolve_options(family, **options)  # the family's message for bad options, first
    network_options, crf_options = split_crf_options(options)
    loaded = _load_model(family, weights, num_classes, class_table, **network_options)
    return apply_crf_options(loaded, crf_options)


def _load_model(
    family: str = "", weights: str = "", num_classes: int = 0, class_table: str = "", **options
) -> LoadedModel:
    """Build a network and load its weights.

    - ``weights`` a seg_ros .safetensors file (path, or a file name in models/):
      everything comes from its metadata; arguments given must agree with it.
    - ``weights`` a .pt/.pth state_dict (e.g. torchvision's deeplabv3_*):
      ``family`` and options say which network; num_classes comes from the file.
    - ``weights`` empty: the best bundled weights (new-drive figures first, see _rank)
      for ``family`` and the options given ('' = any family); when none fit,
      random initialisation with a loud warning.
    Missing file -> FileNotFoundError; unreadable or mismatched file -> ValueError.
    """
    options = {k: v for k, v in options.items() if v is not None and v != ""}
    if family:
        resolve_options(
            family, **options
        )  # reject unknown options/values early, with the family's message
    if weights:
        path = resolve_weights_path(weights)
        if path.suffix == ".safetensors":
            return _load_seg_ros_checkpoint(path, family, num_classes, class_table, options)
        return _load_state_dict_file(path, family, num_classes, class_table, options)

    candidates = [s for s in bundled_models() if _fits(s, family, num_classes, options)]
    if not candidates and num_classes:
        # The variant has bundled weights, only not for this many classes: refuse, as a class
        # table mismatch is refused, rather than swap in a random network behind a warning.
        other = [s for s in bundled_models() if _fits(s, family, 0, options)]
        if other:
            raise ValueError(
                f"no bundled weights predict {num_classes} classes (bundled "
                f"{', '.join(f'{s.name}: {s.num_classes}' for s in other)}): leave num_classes "
                "at 0 for the bundled model, or pass weights=FILE trained for your classes"
            )
    if candidates:
        best = max(candidates, key=_rank)
        return _load_seg_ros_checkpoint(
            Path(best.weights_path), family, num_classes, class_table, options
        )

    family = family or DEFAULT_FAMILY
    resolved = resolve_options(family, **options)
    classes, table = _class_setup(num_classes, class_table)
    module = build_model(family, classes, **options)
    name = variant_name(family, resolved)
    LOG.warning(
        "NO TRAINED WEIGHTS: %s (%d classes) is randomly initialised, its output is meaningless. "
        "Pass weights=FILE, or bundle weights in %s.",
        name,
        classes,
        models_dir(),
    )
    spec = ModelSpec(
        name=f"{name}_random",
        family=family,
        options=resolved,
        num_classes=classes,
        class_table=table,
    )
    return _finish(module, spec)


def _load_seg_ros_checkpoint(
    path: Path, family: str, num_classes: int, class_table: str, options: dict
) -> LoadedModel:
    spec = read_spec(path)
    if family and family != spec.family:
        raise ValueError(
            f"{path}: holds a {spec.family} model, but family {family!r} was asked for"
        )
    if num_classes and num_classes != spec.num_classes:
        raise ValueError(
            f"{path}: predicts {spec.num_classes} classes, but num_classes={num_classes} was "
            "asked for"
        )
    asked = resolve_options(spec.family, **options)
    conflicts = [
        f"{k}={options[k]!r} (file: {spec.options[k]!r})"
        for k in options
        if asked[k] != spec.options[k]
    ]
    if conflicts:
        raise ValueError(
            f"{path}: was trained with other options than asked: {', '.join(conflicts)}"
        )
    if class_table:
        spec.class_table = class_table
    spec.weights_sha256 = file_sha256(path)
    module = build_model(spec.family, spec.num_classes, **spec.options)
    _load_weights(module, _read_state_dict(path), path)
    return _finish(module, spec)


def _load_state_dict_file(
    path: Path, family: str, num_classes: int, class_table: str, options: dict
) -> LoadedModel:
    if not family:
        raise ValueError(
            f"{path}: a plain state_dict does not say which network it is; give the model family"
        )
    state = _read_state_dict(path)
    resolved = resolve_options(family, **options)
    with torch.device("meta"):  # only to learn the classifier's key; no memory, no init cost
        probe = build_model(family, 1, **options)
    classifier_key = f"{probe.CLASSIFIER}.weight"
    if classifier_key not in state:
        raise ValueError(
            f"{path}: no {classifier_key!r}, so it is not a {variant_name(family, resolved)} "
            "state_dict"
        )
    file_classes = int(state[classifier_key].shape[0])
    if num_classes and num_classes != file_classes:
        raise ValueError(
            f"{path}: predicts {file_classes} classes, but num_classes={num_classes} was asked for"
        )
    module = build_model(family, file_classes, **options)
    _load_weights(module, state, path)
    spec = ModelSpec(
        name=path.stem,
        family=family,
        options=resolved,
        num_classes=file_classes,
        class_table=class_table,
        weights_path=str(path),
        weights_sha256=file_sha256(path),
    )
    return _finish(module, spec)
