"""Training checkpoints: plain tensors and numbers, read back with ``weights_only=True``.

last.pt holds everything a run needs to continue exactly (model, optimiser,
gradient scaler, weight average, RNG state, position in the epoch's data
order); best.pt holds the weights that scored best on validation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from seg_ros.training.config import TrainConfig

CHECKPOINT_FORMAT = "seg_ros-train-1"


def save_training_checkpoint(path: Path, state: dict) -> None:
    """Write atomically (a crash mid-write leaves the previous file)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    tmp.replace(path)


def load_training_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by `train` (weights_only: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or not a torch checkpoint
        raise ValueError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a seg_ros training checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return state


def check_resume_compatible(saved: dict, cfg: TrainConfig, path: str) -> None:
    """Refuse to continue a run with another network or data split."""
    ours = cfg.plain()
    for key in ("model", "model_options", "num_classes", "split", "batch_size", "limit_train"):
        if saved.get(key, ours[key]) != ours[key]:
            raise ValueError(
                f"cannot resume from {path}: it was trained with {key}={saved[key]!r}, "
                f"not {ours[key]!r}"
            )
