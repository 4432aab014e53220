"""`seg_ros benchmark`: real runs (small sizes, few frames) write the documented JSON."""

from __future__ import annotations

import json

import pytest
import torch

from seg_ros.cli import build_parser, main

SMALL_DEEPLAB = [
    "--model",
    "deeplab",
    "--backbone",
    "mobilenet_v3_large",
    "--height",
    "64",
    "--width",
    "96",
]


def _check_summary(summary: dict, frames: int) -> None:
    assert summary["frames"] == frames
    assert summary["fps"] > 0
    latency = summary["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p95"] <= latency["max"]
    assert summary["fps"] == pytest.approx(1e3 / latency["mean"], rel=1e-6)


def test_help_documents_the_json_keys(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--help"])
    text = capsys.readouterr().out
    for key in (
        "backend.fps",
        "backend.latency_ms",
        "pipeline.fps",
        "pipeline.latency_ms",
        "--compare",
        "--frames",
        "--json",
        "--crf",
    ):
        assert key in text


def test_single_run_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench" / "result.json"
    torch.manual_seed(0)  # test_backends' deeplab: its exported graph is already in the cache
    assert (
        main(
            [
                "benchmark",
                *SMALL_DEEPLAB,
                "--backend",
                "onnxruntime",
                "--frames",
                "4",
                "--warmup",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    _check_summary(report["backend"], 4)
    _check_summary(report["pipeline"], 4)
    assert set(report["pipeline"]["stages_ms"]) == {
        "preprocess",
        "inference",
        "postprocess",
        "preprocess_cpu",
        "postprocess_cpu",
    }
    config = report["configuration"]
    assert config["backend"]["name"] == "onnxruntime:CPUExecutionProvider"
    assert config["backend"]["requested"] == "onnxruntime"
    assert config["model"]["family"] == "deeplab" and config["input"] == [64, 96]
    assert config["precision"] == "fp32" and config["frames"] == 4 and config["warmup"] == 1
    assert len(config["frame"]) == 2 and config["frame_source"]
    printed = capsys.readouterr().out
    assert "backend alone" in printed and "onnxruntime:CPUExecutionProvider" in printed


def test_compare_runs_both_backends_in_one_run(tmp_path, capsys):
    out = tmp_path / "compare.json"
    torch.manual_seed(0)
    assert (
        main(
            [
                "benchmark",
                "--compare",
                *SMALL_DEEPLAB,
                "--frames",
                "2",
                "--warmup",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    kinds = [r["backend_kind"] for r in report["results"]]
    assert kinds == ["onnxruntime", "torch"]
    for result in report["results"]:
        assert result["family"] == "deeplab"
        _check_summary(result["backend"], 2)
        _check_summary(result["pipeline"], 2)
    ratio = report["speedup"]["deeplab"]
    fps = {r["backend_kind"]: r["backend"]["fps"] for r in report["results"]}
    assert ratio["backend"] == pytest.approx(fps["onnxruntime"] / fps["torch"])
    assert "speed-up deeplab" in capsys.readouterr().out


def test_bad_arguments_fail_clearly(tmp_path, caplog):
    assert main(["benchmark", *SMALL_DEEPLAB, "--frames", "0"]) == 2
    assert "--frames must be positive" in caplog.text
    assert main(["benchmark", *SMALL_DEEPLAB, "--image", str(tmp_path / "missing.png")]) == 2
    assert "cannot read --image" in caplog.text
