"""`seg_ros demo`: the real node as its own process, fed over real DDS, outputs checked."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from demo_inputs import two_images, write_tiny_checkpoint

from seg_ros.commands import demo

pytest.importorskip("rclpy", reason="rclpy is not importable")
pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seg_ros")
    demo.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["demo", *argv])


def _run_demo(tmp_path: Path, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seg_ros.cli", "demo", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return write_tiny_checkpoint(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    return two_images(tmp_path_factory.mktemp("frames"))


def test_node_command_is_the_launch_files_default(tmp_path):
    command = demo.node_command(
        _parse("--height", "64", "--width", "96", "--param", "crf.enabled:=false")
    )
    assert command[1:5] == ["-m", "seg_ros.node", "--ros-args", "--params-file"]
    assert Path(command[5]) == REPO / "config" / "segmentation.yaml"
    assert command[6:] == [
        "-r",
        f"image:={demo.INPUT_TOPIC}",
        "-p",
        "crf.enabled:=false",
        "-p",
        "input_height:=64",
        "-p",
        "input_width:=96",
    ]
    with pytest.raises(ValueError, match="expected NAME:=VALUE"):
        demo.node_command(_parse("--param", "crf.enabled=true"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        demo.node_command(_parse("--params-file", str(tmp_path / "none.yaml")))


def test_default_data_is_the_shipped_samples_with_their_licence():
    samples = demo.default_data()
    frames = sorted(samples.glob("*.jpg"))
    assert 1 <= len(frames) <= 6  # CamVid's licence allows a few sample frames, no more
    assert "CC BY-NC 4.0" in (samples / "LICENSE.md").read_text()
    for frame in frames:
        assert frame.name in (samples / "LICENSE.md").read_text()  # each one attributed
        assert cv2.imread(str(frame)).shape == (360, 480, 3)


def test_missing_data_says_what_to_do(tmp_path):
    args = _parse("--data", str(tmp_path / "nothing_here"))
    with pytest.raises(FileNotFoundError, match="pass a folder of images"):
        args.func(args)


def test_demo_end_to_end(tmp_path, checkpoint):
    """No data given: the shipped samples, the default params file and a small seeded model."""
    report_path = tmp_path / "demo.json"
    result = _run_demo(
        tmp_path,
        "--frames",
        "4",
        "--rate",
        "4",
        "--output",
        "overlays",
        "--param",
        f"weights:={checkpoint}",
        "--height",
        "64",
        "--width",
        "96",
        "--json",
        str(report_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "latency (output received - input sent) p50" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["frames_sent"] == 4
    assert 1 <= report["received"]["label"] <= 4
    assert report["received"]["overlay"] >= 1
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["max"]
    assert report["node"]["input_size"] == "64x96"  # the -p overrides reached the node (HxW)
    assert report["node"]["input_topic"] == demo.INPUT_TOPIC
    assert report["node"]["backend"]

    # Each overlay is 50 % input image + 50 % class colour at the input's resolution: undo the
    # blend with one of the inputs and every pixel must be a CamVid class colour.
    from seg_ros.classes import load_class_table

    colours = load_class_table("camvid").colors.astype(np.int16)
    inputs = [
        cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).astype(np.int16)
        for p in sorted(demo.default_data().glob("*.jpg"))
    ]
    assert report["overlays"]
    for path in report["overlays"]:
        overlay = cv2.cvtColor(
            cv2.imread(str(tmp_path / path if not Path(path).is_absolute() else path)),
            cv2.COLOR_BGR2RGB,
        ).astype(np.int16)
        best = 0.0
        for image in inputs:
            if image.shape != overlay.shape:
                continue
            mask = 2 * overlay - image
            distance = np.abs(mask[:, :, None, :] - colours[None, None]).max(axis=3).min(axis=2)
            best = max(best, float((distance <= 2).mean()))
        assert best > 0.98, f"{path} is not an input image blended with class colours"


def test_node_that_cannot_start_is_reported(tmp_path, frames):
    result = _run_demo(
        tmp_path,
        "--data",
        str(frames[0]),
        "--frames",
        "1",
        "--param",
        "precision:=fp64",
        "--startup-timeout",
        "120",
    )
    assert result.returncode == 2
    assert "exited with code 1" in result.stderr
    assert "precision" in result.stderr  # the node's own reason, passed on
