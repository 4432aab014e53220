"""Class tables: names, colours and the ignore label, read from config/classes/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from seg_ros.paths import config_dir


@dataclass(frozen=True)
class ClassTable:
    name: str
    names: tuple[str, ...]
    colors: np.ndarray  # (num_classes, 3) uint8 RGB
    ignore_index: int  # label that ground truth uses for "void"; never predicted

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """Return a 256-entry (or 65536 for big tables) RGB lookup: unknown labels are black."""
        size = 256 if self.num_classes <= 255 else 65536
        lut = np.zeros((size, 3), np.uint8)
        lut[: self.num_classes] = self.colors
        return lut


def available_tables() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "classes").glob("*.yaml"))


def load_class_table(name_or_path: str) -> ClassTable:
    """Load a table by name (``camvid``) or from a YAML file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / "classes" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown class table {name_or_path!r}: expected one of {available_tables()} "
            "or a YAML file"
        )
    data = yaml.safe_load(path.read_text())
    try:
        entries = data["classes"]
        names = tuple(str(c["name"]) for c in entries)
        colors = np.array([c["color"] for c in entries], dtype=np.int64)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: a class table needs 'classes: [{{name, color}}, ...]' ({exc})"
        ) from exc
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.min() < 0 or colors.max() > 255:
        raise ValueError(f"{path}: every colour must be [R, G, B] in 0..255")
    return ClassTable(
        name=str(data.get("name", path.stem)),
        names=names,
        colors=colors.astype(np.uint8),
        ignore_index=int(data.get("ignore_index", 255)),
    )


def generic_table(num_classes: int) -> ClassTable:
    """Build a table for models trained on classes we have no names for.

    Classes are named class_<i> and get distinct colours.
    """
    rng = np.random.default_rng(0)
    colors = rng.integers(32, 256, size=(num_classes, 3), dtype=np.int64).astype(np.uint8)
    return ClassTable("generic", tuple(f"class_{i}" for i in range(num_classes)), colors, 255)
