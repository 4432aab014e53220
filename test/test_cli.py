"""Shared pipeline flags, and `seg_ros segment` end to end with a real ONNX Runtime session."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from demo_inputs import two_images, write_tiny_checkpoint

from seg_ros.commands import segment
from seg_ros.commands.options import add_pipeline_arguments, pipeline_config_from_args
from seg_ros.pipeline import CrfSettings, PipelineConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="test")
    add_pipeline_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_the_pipeline_defaults():
    # Nothing explicit: every CRF setting may come from the model's fitted parameters.
    assert pipeline_config_from_args(parse()) == PipelineConfig(crf_explicit=())


def test_every_flag_lands_in_the_config():
    config = pipeline_config_from_args(
        parse(
            "--model",
            "refinenet",
            "--backbone",
            "mobilenet_v2",
            "--light-weight",
            "--weights",
            "w.safetensors",
            "--num-classes",
            "11",
            "--class-table",
            "camvid",
            "--backend",
            "tensorrt",
            "--precision",
            "int8",
            "--height",
            "352",
            "--width",
            "480",
            "--threads",
            "2",
            "--crf",
            "--crf-iterations",
            "3",
            "--device",
            "cuda",
            "--engine-cache",
            "/tmp/engines",
            "--workspace-mb",
            "512",
            "--dla-core",
            "0",
            "--calibration-images",
            "/data/cal",
            "--calibration-bag",
            "/data/bag",
            "--calibration-topic",
            "/cam",
        )
    )
    assert config == PipelineConfig(
        model="refinenet",
        weights="w.safetensors",
        num_classes=11,
        class_table="camvid",
        model_options={"backbone": "mobilenet_v2", "light_weight": True},
        backend="tensorrt",
        precision="int8",
        input_height=352,
        input_width=480,
        threads=2,
        backend_options={
            "device": "cuda",
            "engine_cache": "/tmp/engines",
            "workspace_mb": 512,
            "dla_core": 0,
            "calibration_images": "/data/cal",
            "calibration_bag": "/data/bag",
            "calibration_topic": "/cam",
        },
        crf=CrfSettings(enabled=True, iterations=3),
        crf_explicit=("iterations",),  # given on the command line: wins over the model's fit
    )


def test_deeplab_options_only_when_given():
    config = pipeline_config_from_args(
        parse("--model", "deeplab", "--version", "v3plus", "--output-stride", "8")
    )
    assert config.model_options == {"version": "v3plus", "output_stride": 8}
    assert config.backend_options == {}


@pytest.mark.parametrize(
    "argv",
    [
        ("--model", "unet"),
        ("--backend", "tensorrt8"),
        ("--precision", "fp8"),
        ("--height", "-1"),
        ("--output-stride", "4"),
        ("--crf-iterations", "0"),
        ("--workspace-mb", "0"),
    ],
)
def test_bad_flags_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def _segment_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg_ros")
    segment.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_segment_help_lists_its_and_the_shared_flags():
    text = _segment_parser()._subparsers._group_actions[0].choices["segment"].format_help()
    for flag in (
        "--input",
        "--output",
        "--overlay",
        "--model",
        "--backend",
        "--crf",
        "--engine-cache",
    ):
        assert flag in text


def test_segment_rejects_a_missing_input_before_loading_a_model(tmp_path):
    args = _segment_parser().parse_args(
        ["segment", "--input", str(tmp_path / "nope"), "--output", str(tmp_path)]
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        args.func(args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    return write_tiny_checkpoint(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return two_images(tmp_path_factory.mktemp("images"))


def test_segment_end_to_end(tmp_path, checkpoint, images):
    """Run the real console entry (`python -m seg_ros.cli segment`); check every PNG."""
    import torch

    from seg_ros.classes import load_class_table
    from seg_ros.models import load_model

    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seg_ros.cli",
            "segment",
            "--input",
            str(images[0].parent),
            "--output",
            str(out),
            "--weights",
            str(checkpoint),
            "--backend",
            "onnxruntime",
            "--threads",
            "1",
            "--overlay",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "onnxruntime" in result.stdout
    assert "64x96 (HxW)" in result.stdout  # the checkpoint's input size, height x width
    assert "latency p50" in result.stdout
    legend = cv2.imread(str(out / "legend.png"))
    assert legend is not None and legend.shape[0] > 11 * 20  # a row per CamVid class

    palette = load_class_table("camvid").palette()
    loaded = load_model(weights=str(checkpoint))
    mean = np.array(loaded.spec.mean, np.float32)
    std = np.array(loaded.spec.std, np.float32)
    for path in images:
        assert f"{path.stem}: " in result.stdout  # per-image latency line
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        label = cv2.imread(str(out / f"{path.stem}_label.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.cvtColor(cv2.imread(str(out / f"{path.stem}_color.png")), cv2.COLOR_BGR2RGB)
        blended = cv2.cvtColor(
            cv2.imread(str(out / f"{path.stem}_overlay.png")), cv2.COLOR_BGR2RGB
        )
        assert label.dtype == np.uint8 and label.shape == rgb.shape[:2]
        assert label.max() < 11
        np.testing.assert_array_equal(color, palette[label])
        expected_overlay = (0.5 * color.astype(np.float32) + 0.5 * rgb).round()
        assert np.abs(blended - expected_overlay).max() <= 1
        # The same network in eager PyTorch, preprocessed by hand: ONNX Runtime must agree almost
        # everywhere.
        small = (
            cv2.resize(rgb, (96, 64), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        )
        batch = torch.from_numpy(((small - mean) / std).transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            reference = loaded.module(batch).argmax(1)[0].numpy().astype(np.uint8)
        reference = cv2.resize(reference, rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        assert (label == reference).mean() > 0.99
