"""``--report DIR``: a Markdown report with PNG plots, readable in any Markdown viewer.

Files: report.md, confusion_matrix.png (row-normalised), per_class_iou.png,
latency.png (histogram of the per-frame pipeline time), worst_frames.png
(image | ground truth | prediction | overlay for the lowest-mIoU frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_ros.timing import p50_p95
from seg_ros.visualize import colorize, overlay


def _fmt(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _plot_confusion(path: Path, normalized: np.ndarray, names: list[str], plt) -> None:
    cols = names + ["(unlabelled)"]
    size = max(5.0, 0.55 * len(cols) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if len(names) <= 25:
        for (r, c), v in np.ndenumerate(normalized):
            if v >= 0.005:
                ax.text(
                    c,
                    r,
                    f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth class")
    ax.set_title("Confusion matrix (rows sum to 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_iou(path: Path, per_class: dict, miou, plt) -> None:
    names = list(per_class)
    values = [np.nan if v is None else v for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color="tab:blue")
    if miou is not None:
        ax.axhline(miou, color="tab:red", linestyle="--", label=f"mIoU {100 * miou:.1f}%")
        ax.legend()
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title("Per-class IoU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(path: Path, totals_ms: list[float], plt) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(totals_ms, bins=min(50, max(5, len(totals_ms) // 2)), color="tab:green")
    p50, p95 = p50_p95(totals_ms)
    ax.axvline(p50, color="black", linestyle="--", label=f"p50 {p50:.1f} ms")
    ax.axvline(p95, color="tab:red", linestyle="--", label=f"p95 {p95:.1f} ms")
    ax.set_xlabel("pipeline time per frame (ms)")
    ax.set_ylabel("frames")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_worst(path: Path, worst, palette: np.ndarray, names: list[str], plt) -> None:
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(worst), 4, figsize=(12, 2.6 * len(worst) + 0.8), squeeze=False)
    for row, item in zip(axes, worst):
        gt_color = colorize(item.label, palette)  # void (not a class) is black in the palette
        pred_color = colorize(item.prediction, palette)
        panels = (item.image, gt_color, pred_color, overlay(item.image, pred_color, 0.5))
        titles = (
            f"{item.key}",
            "ground truth",
            f"prediction (mIoU {100 * item.miou:.1f}%)",
            "overlay",
        )
        for ax, img, title in zip(row, panels, titles):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [
        Patch(facecolor=palette[i] / 255.0, edgecolor="black", label=n)
        for i, n in enumerate(names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.8 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(
    directory: str | Path,
    summary: dict,
    *,
    normalized_confusion: np.ndarray,
    worst,
    frame_totals_ms,
    palette: np.ndarray,
    title: str = "seg_ros evaluation",
    details: dict | None = None,
) -> Path:
    """Write report.md and its plots into ``directory``; returns the Markdown file's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = list(summary["classes"])
    lines = [f"# {title}", ""]
    for key, value in (details or {}).items():
        lines.append(f"- **{key}**: {value}")
    frames = summary["frames"]
    skipped = ", ".join(f"{k}: {v}" for k, v in frames["skipped"].items()) or "none"
    lines += [
        f"- **frames**: {frames['used']} scored, {sum(frames['skipped'].values())} skipped "
        f"({skipped})",
        f"- **ignore index**: {summary['ignore_index']}",
        "",
        "## Summary",
        "",
        "| metric | value (%) |",
        "|---|---:|",
        f"| mIoU | {_fmt(summary['miou'])} |",
        f"| pixel accuracy | {_fmt(summary['pixel_accuracy'])} |",
        f"| mean class accuracy | {_fmt(summary['mean_class_accuracy'])} |",
        f"| boundary F1 (BF, tolerance 0.75% of the diagonal) | {_fmt(summary['boundary_f1'])} |",
        "",
        "## Per class",
        "",
        "| class | IoU (%) | accuracy (%) | BF (%) |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        lines.append(
            f"| {name} | {_fmt(summary['per_class_iou'][name])} | "
            f"{_fmt(summary['per_class_accuracy'][name])} | "
            f"{_fmt(summary['per_class_boundary_f1'][name])} |"
        )
    lines += [
        "",
        "![per-class IoU](per_class_iou.png)",
        "",
        "## Confusion matrix",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
    ]
    _plot_iou(out / "per_class_iou.png", summary["per_class_iou"], summary["miou"], plt)
    _plot_confusion(out / "confusion_matrix.png", normalized_confusion, names, plt)
    if summary["latency_ms"]:
        lines += [
            "## Latency",
            "",
            "| stage | p50 (ms) | p95 (ms) | mean (ms) |",
            "|---|---:|---:|---:|",
        ]
        for stage, s in summary["latency_ms"].items():
            lines.append(f"| {stage} | {s['p50']:.1f} | {s['p95']:.1f} | {s['mean']:.1f} |")
        lines.append("")
    if frame_totals_ms:
        _plot_latency(out / "latency.png", list(frame_totals_ms), plt)
        lines += ["![latency histogram](latency.png)", ""]
    if worst:
        _plot_worst(out / "worst_frames.png", worst, palette, names, plt)
        lines += [
            "## Worst frames",
            "",
            "Lowest per-frame mIoU: image | ground truth | prediction | overlay.",
            "",
            "![worst frames](worst_frames.png)",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
