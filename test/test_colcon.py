"""`colcon build` of the checkout installs what `ros2 run` and `ros2 launch` need.

The installed package then runs from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    colcon = shutil.which("colcon", path=str(BIN)) or shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    work = tmp_path_factory.mktemp("colcon")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [
            colcon,
            "--log-base",
            str(work / "log"),
            "build",
            "--base-paths",
            str(REPO),
            "--build-base",
            str(work / "build"),
            "--install-base",
            str(work / "install"),
            "--executor",
            "sequential",
            "--event-handlers",
            "console_direct-",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout}\n{result.stderr}"
    assert "1 package finished" in result.stdout, result.stdout
    return work / "install"


def test_console_scripts_where_ros2_run_looks(install):
    lib = install / "seg_ros" / "lib" / "seg_ros"
    for script in (
        "segmentation_node",
        "segmentation_lifecycle_node",
        "seg_ros",
        "evaluator_node",
    ):
        path = lib / script
        assert path.is_file(), f"{path} missing"
        assert os.access(path, os.X_OK), f"{path} is not executable"


def test_share_files_where_ros2_launch_looks(install):
    share = install / "seg_ros" / "share" / "seg_ros"
    expected = ["package.xml", "launch/segmentation.launch.py", "config/segmentation.yaml"]
    expected += [
        p.relative_to(REPO).as_posix() for p in (REPO / "config" / "classes").glob("*.yaml")
    ]
    expected += [p.relative_to(REPO).as_posix() for p in (REPO / "config").glob("*.rviz")]
    expected += [p.relative_to(REPO).as_posix() for p in (REPO / "models").glob("*.safetensors")]
    assert any(name.endswith(".rviz") for name in expected), "config/ has no RViz config"
    assert len([n for n in expected if n.startswith("config/classes/")]) >= 3
    missing = [name for name in expected if not (share / name).is_file()]
    assert not missing, f"not installed to {share}: {missing}"
    assert (
        install / "seg_ros" / "share" / "ament_index" / "resource_index" / "packages" / "seg_ros"
    ).is_file()


def test_installed_package_finds_its_share_folder(install):
    """The installed copy (not the checkout) finds config/ via the ament index, like on a robot."""
    prefix = install / "seg_ros"
    site = next(prefix.glob("lib/python3*/site-packages"))
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), PYTHONPATH=str(site))
    code = (
        "import seg_ros, seg_ros.paths as p, seg_ros.classes as c; "
        "print(seg_ros.__file__); print(p.share_dir()); "
        "print(c.load_class_table('camvid').num_classes)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=install,
    )
    assert result.returncode == 0, result.stderr
    module_file, share, classes = result.stdout.split()
    assert Path(module_file).is_relative_to(site)
    assert Path(share) == prefix / "share" / "seg_ros"
    assert classes == "11"


def test_installed_cli_runs(install):
    prefix = install / "seg_ros"
    site = next(prefix.glob("lib/python3*/site-packages"))
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), PYTHONPATH=str(site))
    result = subprocess.run(
        [str(prefix / "lib" / "seg_ros" / "seg_ros"), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=install,
    )
    assert result.returncode == 0, result.stderr
    for command in ("segment", "export", "build-engine", "benchmark", "evaluate", "train", "demo"):
        assert command in result.stdout
