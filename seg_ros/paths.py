"""Where the package's share files (config, models, launch) live.

On a robot they are installed to ``share/seg_ros`` (colcon / ament index); in a
development checkout (``pip install -e .``) they sit at the repository root.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = "seg_ros"


@lru_cache(maxsize=1)
def share_dir() -> Path:
    """Find the folder holding config/, models/ and launch/ for this install."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "package.xml").is_file() and (checkout / "config").is_dir():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # ament_index missing or package not indexed
        pass
    for prefix in (sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidate = Path(prefix) / "share" / PACKAGE
        if (candidate / "config").is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {PACKAGE} share folder (config/, models/)")


def config_dir() -> Path:
    return share_dir() / "config"


def models_dir() -> Path:
    return share_dir() / "models"


def samples_dir() -> Path:
    """Sample input frames for `make demo` and tests on a machine without data."""
    return share_dir() / "samples"


def cache_dir() -> Path:
    """Writable cache for exported ONNX files and TensorRT engines (never inside share/)."""
    root = os.environ.get("SEG_ROS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), PACKAGE
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
