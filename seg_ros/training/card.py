"""Model cards: models/<name>.md beside the weights, written from the weights' own metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

from seg_ros.training.device import cpu_name
from seg_ros.sizes import format_size

EVALUATION_TITLES = {
    "new-drive": "new drive (0006R0 held out: a street the model never saw)",
    "val": "val (drive 0016E5, which training frames also come from: optimistic)",
}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _start_line(recipe: dict) -> str:
    """Where the weights started: another seg_ros model, a pretrained backbone, or nothing."""
    before = (recipe.get("started_from") or {}).get("training")
    if before:
        return (
            f"- fine-tuned from the seg_ros weights {recipe['started_from']['name']}, which were "
            f"trained {before.get('epochs')} epochs ({before.get('steps')} steps of batch "
            f"{before.get('batch_size')}, lr {before.get('lr')}, "
            f"{before.get('train_seconds', 0) / 60:.0f} min) on split `{before.get('split')}` "
            f"and started from: {_start_line(before)[2:]}"
        )
    if recipe.get("init_weights"):
        return f"- fine-tuned from the seg_ros weights {recipe['init_weights']}"
    pretrained = recipe.get("pretrained_backbone")
    if pretrained is True:  # cards bundled before the source was recorded
        return "- ImageNet backbone weights from a local file"
    if pretrained:
        return f"- pretrained backbone: {pretrained}"
    return "- no pretrained weights: random initialisation"


def _precision(recipe: dict) -> str:
    """Name the run's arithmetic; runs from before it was recorded only say what was asked."""
    if recipe.get("precision"):
        return recipe["precision"]
    return (
        "mixed precision requested (bf16 only where the CPU has it)"
        if recipe.get("amp")
        else "fp32"
    )


def _recipe_lines(recipe: dict) -> list[str]:
    photometric = recipe.get("photometric") or {"jitter": recipe.get("colour_jitter")}
    split = recipe.get("split", "val")
    selection = (
        f"the {split} split's validation chose the checkpoint"
        if recipe.get("selected_on_val")
        else "the model at the end of a fixed schedule (no checkpoint selection)"
    )
    return [
        f"- data: {recipe.get('dataset')} split `{split}` "
        f"({recipe.get('training_images') or '?'} training images); {selection}; "
        "no test data was used for training or any choice.",
        f"- {recipe.get('epochs')} epochs, {recipe.get('steps')} steps of batch "
        f"{recipe.get('batch_size')}; random scale {recipe.get('scale_range')} of the network "
        f"size, crop {recipe.get('crop')} (HxW), horizontal flip; photometric "
        + ", ".join(f"{k} {v}" for k, v in photometric.items())
        + (
            f"; rare-class copy-paste with probability {recipe['copy_paste']}"
            if recipe.get("copy_paste")
            else ""
        ),
        f"- {recipe.get('optimizer')} lr {recipe.get('lr')}"
        + (
            f" (the encoder at {recipe['backbone_lr']} of it)"
            if recipe.get("backbone_lr", 1.0) != 1.0
            else ""
        )
        + ", weight decay "
        f"{recipe.get('weight_decay')} (not on norms/biases), {recipe.get('schedule')} schedule"
        + (
            f"; weights averaged (EMA, decay {recipe['ema']}) for validation and export"
            if recipe.get("ema")
            else ""
        ),
        f"- loss: cross-entropy, void ignored, {recipe.get('class_weighting')} class weights "
        f"{recipe.get('class_weights')}"
        + (
            f", hardest {100 * recipe['ohem']:.0f} % of pixels (OHEM)"
            if recipe.get("ohem")
            else ""
        ),
        _start_line(recipe),
        f"- wall time {recipe.get('train_seconds', 0) / 60:.0f} min with "
        f"{recipe.get('threads') or 'default'} torch thread(s) on "
        f"{recipe.get('cpu') or cpu_name()} "
        f"({os.cpu_count()} cores), {_precision(recipe)}",
    ]


def _evaluation_title(split: str, own_split: str | None) -> str:
    """Title a scores column; one of another run of the recipe names that run's split."""
    title = EVALUATION_TITLES.get(split, split)
    if own_split and split != own_split:
        title = title.replace("the model never saw", "that run never saw")
        return f"{title}, measured on the {split} run of this recipe"
    return title


def _score_lines(metrics: dict, names: list[str]) -> list[str]:
    evaluations = metrics.get("evaluations") or {}
    if not evaluations and "val_miou" in metrics:  # weights bundled before evaluations existed
        evaluations = {
            "val": {
                "miou": metrics["val_miou"],
                "pixel_accuracy": metrics.get("val_pixel_accuracy"),
                "mean_class_accuracy": metrics.get("val_mean_class_accuracy"),
                "per_class_iou": metrics.get("val_per_class_iou", {}),
            }
        }
    if not evaluations:
        return ["Not measured (no validation split)."]
    order = sorted(evaluations, key=lambda s: (s != "new-drive", s))
    own_split = (metrics.get("training") or {}).get("split")
    lines = [
        "fp32 inference with the weights as shipped, at the network size, upsampled to the "
        "labels' resolution; void ignored. Other runs of the same recipe are marked with their "
        "split (the new-drive run trains without drive 0006R0).",
        "",
        "| | " + " | ".join(_evaluation_title(s, own_split) for s in order) + " |",
        "|---|" + "---|" * len(order),
    ]
    rows = [("**mIoU**", "miou"), ("pixel accuracy", "pixel_accuracy")]
    rows.append(("mean class accuracy", "mean_class_accuracy"))
    for title, key in rows:
        lines.append(
            f"| {title} | " + " | ".join(_pct(evaluations[s].get(key)) for s in order) + " |"
        )
    for name in names:
        if any(name in evaluations[s].get("per_class_iou", {}) for s in order):
            cells = [_pct(evaluations[s].get("per_class_iou", {}).get(name)) for s in order]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _ablation_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    keys = [k for k in rows[0] if k != "change"]
    lines = ["", "## Ablation (short runs on the new-drive split)", ""]
    lines += ["| change | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for row in rows:
        cells = [
            _pct(row.get(k)) if isinstance(row.get(k), float) and row[k] <= 1 else str(row.get(k))
            for k in keys
        ]
        lines.append(f"| {row['change']} | " + " | ".join(cells) + " |")
    return lines


def _crf_lines(crf: dict) -> list[str]:
    if not crf:
        return []
    fitted = {k: v for k, v in crf.items() if k not in ("tuned_on", "objective", "scores")}
    lines = ["", "## Dense CRF", ""]
    lines.append(
        f"Fitted by `seg_ros tune-crf` on {crf.get('tuned_on', '?')} "
        f"(objective: {crf.get('objective', '?')}); the node, `evaluate --crf` and "
        "`benchmark --crf` use these unless CRF parameters are set explicitly: "
        f"`{json.dumps(fitted, sort_keys=True)}`."
    )
    for label, values in (crf.get("scores") or {}).items():
        lines.append(
            f"- {label}: mIoU {_pct(values.get('miou'))}, "
            f"boundary F1 {_pct(values.get('boundary_f1'))}"
        )
    return lines


def records_recipe(spec) -> bool:
    """Whether a bundle's metadata holds the recipe this generator restates (bundles since #11).

    Older bundles' cards were written by an earlier generator from fields it no longer reads;
    rewriting them would misstate how those weights were trained.
    """
    return "split" in spec.metrics.get("training", {})


def update_crf_section(card: str | Path, crf: dict) -> Path:
    """Replace (or add, before its CPU latency) the Dense CRF section of an existing card."""
    card = Path(card)
    lines = card.read_text().split("\n")
    section = _crf_lines(crf)[1:]  # without the leading blank line
    headings = [i for i, line in enumerate(lines) if line.startswith("## ")]
    start = next((i for i in headings if lines[i] == "## Dense CRF"), None)
    if start is not None:
        end = next((i for i in headings if i > start), len(lines))
        lines[start:end] = section + [""]
    else:
        at = next((i for i in headings if lines[i] == "## CPU latency"), len(lines))
        lines[at:at] = section + [""]
    card.write_text("\n".join(lines))
    return card


def _int8_lines(int8: dict) -> list[str]:
    """Render what ``scripts/int8_table.py --write-cards`` measured with the shipped table."""
    if not int8:
        return []
    return [
        "",
        "## INT8 (ONNX Runtime on the CPU, the shipped calibration table)",
        "",
        f"Measured by `scripts/int8_table.py --write-cards` on {int8.get('cpu', '?')}, "
        f"{int8.get('threads', '?')} threads, ONNX Runtime {int8.get('onnxruntime', '?')}, "
        f"profile `{int8.get('profile', '?')}`. Backend p50 at the network size, fp32 and int8 "
        f"calls interleaved: fp32 {int8.get('fp32_ms')} ms, int8 {int8.get('int8_ms')} ms "
        f"(**{int8.get('speedup', 0):.2f}x**).",
        f"- {int8.get('scored_on', '?')}: mIoU fp32 {_pct(int8.get('fp32_miou'))}, "
        f"int8 **{_pct(int8.get('int8_miou'))}**; "
        f"{_pct(int8.get('labels_unchanged'))} % of labels unchanged",
        f"- weights scored: {int8.get('scored_weights', 'these')}",
    ]


def write_model_card(weights: str | Path, latencies: list[dict], *, notes: str = "") -> Path:
    """Write models/<name>.md beside the weights: architecture, recipe, scores, CRF, latency."""
    from seg_ros.classes import load_class_table
    from seg_ros.models import build_model, read_spec, variant_name
    from seg_ros.models.checkpoint import file_sha256

    weights = Path(weights)
    spec = read_spec(weights)
    metrics, recipe = spec.metrics, spec.metrics.get("training", {})
    params = sum(
        p.numel() for p in build_model(spec.family, spec.num_classes, **spec.options).parameters()
    )
    names = (
        load_class_table(spec.class_table).names
        if spec.class_table
        else sorted(metrics.get("val_per_class_iou", {}))
    )
    lines = [
        f"# {spec.name}",
        "",
        f"`{weights.name}`: {variant_name(spec.family, spec.options)}, trained by `seg_ros train` "
        f"on {recipe.get('dataset', '?')} ({spec.num_classes} classes, class table "
        f"`{spec.class_table}`).",
        "",
        "## Architecture",
        "",
        f"- family `{spec.family}`, options `{json.dumps(spec.options, sort_keys=True)}`",
        f"- {params / 1e6:.2f} M parameters; file {weights.stat().st_size / 2**20:.1f} MiB "
        f"(fp16 safetensors), sha256 `{file_sha256(weights)[:16]}…`",
        f"- network input {format_size(spec.input_height, spec.input_width)} (height x width); "
        "the pipeline "
        "resizes any frame to it and the label back to the frame's size; ImageNet mean/std",
        "",
        "## Training",
        "",
        *_recipe_lines(recipe),
        "",
        "## Scores",
        "",
        *_score_lines(metrics, names),
        *_ablation_lines(metrics.get("ablation") or []),
        *_crf_lines(getattr(spec, "crf", None) or {}),
        *_int8_lines(metrics.get("int8") or {}),
        "",
        "## CPU latency",
        "",
    ]
    if not latencies:
        lines.append("Not measured.")
    else:
        lines += [
            "Whole pipeline (resize, normalise, inference, argmax head, resize back) on a "
            f"{latencies[0]['image']} frame, median of {latencies[0]['frames']} after 3 warm-up "
            "frames (`seg_ros.training.measure_cpu_latency`).",
            "",
            "| backend | precision | threads | CPU | pipeline median ms | p90 ms "
            "| inference median ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for entry in latencies:
            lines.append(
                f"| {entry['backend']} | {entry.get('precision', 'fp32')} | {entry['threads']} | "
                f"{entry.get('cpu', 'the CPU that bundled the weights')} | "
                f"{entry['pipeline_ms_median']} | {entry['pipeline_ms_p90']} | "
                f"{entry['inference_ms_median']} |"
            )
    lines += [
        "",
        "## Use",
        "",
        f"`seg_ros segment --weights {weights.name} …`, or the node parameter `weights`; "
        f"`--model {spec.family}` alone picks these weights.",
        "",
        "Trained on CamVid (CC BY-NC 4.0, research use): check that licence before "
        "commercial use.",
        "",
    ]
    if notes:
        lines += ["## Notes", "", notes, ""]
    card = weights.with_suffix(".md")
    card.write_text("\n".join(lines))
    return card
