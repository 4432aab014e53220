"""Shared test fixtures: where CamVid lives, and a private ROS domain per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def camvid_root() -> Path:
    return Path(os.environ.get("SEG_ROS_CAMVID", REPO.parent / "shared" / "datasets" / "camvid"))


@pytest.fixture(scope="session")
def camvid() -> Path:
    root = camvid_root()
    if not (root / "val").is_dir():
        pytest.skip(f"CamVid not found at {root} (set SEG_ROS_CAMVID)")
    return root


def pytest_collection_modifyitems(items):
    """Mark every test that asks for CamVid, so CI can re-run them without it."""
    for item in items:
        if "camvid" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.camvid)


@pytest.fixture
def tiny_weights(tmp_path_factory) -> Path:
    """Return the weights file of test_evaluate's fitted tiny SegNet (CLI and node tests)."""
    from test_evaluate import fitted_tiny_segnet

    return fitted_tiny_segnet(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session", autouse=True)
def _private_ros_domain():
    """Keep this session's DDS traffic away from anything else running on the machine."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    # Cached ONNX files and engines go to a throw-away folder, not the user's cache.
    os.environ.setdefault(
        "SEG_ROS_CACHE",
        str(Path(os.environ.get("TMPDIR", "/tmp")) / f"seg_ros_test_cache_{os.getuid()}"),
    )
    yield
