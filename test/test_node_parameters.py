"""The node's parameter table, YAML file, launch helper and statistics (all ROS-free)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from seg_ros import node_parameters as p
from seg_ros.stats import BackendStats, LatencyWindow, NodeStats, RateMeter

REPO = Path(__file__).resolve().parents[1]


def test_default_params_file_lists_every_parameter_with_its_default():
    values = p.read_params_file(REPO / "config" / "segmentation.yaml")
    assert set(values) == set(p.defaults()) and p.validate(values) == p.defaults()


def test_every_default_passes_its_own_check():
    for spec in p.PARAMETERS:
        assert spec.check(spec.default) is None, spec.name


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("model", "unet", "one of"),
        ("backend", "cuda", "one of"),
        ("precision", "fp8", "one of"),
        ("image_transport", "theora", "one of"),
        ("qos.reliability", "sometimes", "one of"),
        ("overlay_alpha", 1.5, "[0, 1]"),
        ("overlay_alpha", -0.1, "[0, 1]"),
        ("overlay_alpha", float("nan"), "finite"),
        ("overlay_alpha", "half", "must be of type float"),
        ("crf.iterations", 0, "[1, 50]"),
        ("crf.iterations", 2.0, "must be of type int"),
        ("output_stride", 12, "multiple of 8"),
        ("output_stride", 32, "[0, 16]"),
        ("variant", "4s", "one of"),
        ("crf_rnn_iterations", 21, "[0, 20]"),
        ("qos.depth", 0, "[1, 100]"),
        ("tensorrt.dla_core", -2, "[-1, 7]"),
        ("publish.label", 1, "must be of type bool"),
        ("input_height", -1, "[0, 4096]"),
        ("cameras", "front", "list of strings"),
        ("cameras", ["front", "/rear"], "relative ROS name"),
        ("cameras", ["front", "2nd"], "relative ROS name"),
        ("cameras", ["front", "front"], "twice"),
    ],
)
def test_bad_values_are_rejected_with_the_reason(name, value, words):
    reason = p.SPECS[name].check(value)
    assert reason is not None and name in reason and words in reason


def test_integers_are_accepted_for_float_parameters():
    assert p.SPECS["overlay_alpha"].check(1) is None
    assert p.SPECS["output_stride"].check(8) is None


def test_validate_lists_all_problems_and_unknown_names():
    with pytest.raises(ValueError) as info:
        p.validate({"model": "unet", "overlay_alpha": 3.0, "crf.enable": True})
    text = str(info.value)
    assert "model" in text and "overlay_alpha" in text and "unknown parameter 'crf.enable'" in text


def test_former_calibration_names_are_refused_with_the_new_name(tmp_path):
    path = tmp_path / "old.yaml"
    old = {"tensorrt": {"calibration_bag": "drive.mcap", "calibration_topic": "/cam"}}
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": old}}))
    with pytest.raises(ValueError) as error:
        p.launch_parameters(params_file=str(path))
    assert "tensorrt.calibration_bag was renamed calibration.bag" in str(error.value)
    assert "tensorrt.calibration_topic was renamed calibration.topic" in str(error.value)
    assert "\n" not in str(error.value)
    assert "renamed calibration.images" in p.check_change("tensorrt.calibration_images", "x")


def test_check_change_allows_only_cheap_parameters_at_run_time():
    assert p.check_change("overlay_alpha", 0.2) is None
    assert p.check_change("crf.iterations", 10) is None
    assert p.check_change("publish.probabilities", True) is None
    assert "restart" in p.check_change("model", "segnet")
    assert "restart" in p.check_change("backend", "torch")
    assert "restart" in p.check_change("image_transport", "compressed")
    assert "read-only" in p.check_change("classes.names", ["a"])
    assert "[0, 1]" in p.check_change("overlay_alpha", 2.0)
    assert "unknown" in p.check_change("nonsense", 1)


def test_pipeline_config_passes_only_the_variant_options_that_are_set():
    config = p.pipeline_config(p.defaults())
    assert config.model == "" and config.backend == "auto" and config.precision == "fp32"
    assert config.model_options == {} and config.backend_options == {}
    assert not config.crf.enabled

    values = p.validate(
        {
            "model": "deeplab",
            "backbone": "mobilenet_v3_large",
            "version": "v3plus",
            "output_stride": 8,
            "input_height": 64,
            "input_width": 96,
            "threads": 2,
            "backend": "tensorrt",
            "precision": "int8",
            "tensorrt.engine_cache": "/tmp/engines",
            "tensorrt.workspace_mb": 512,
            "tensorrt.dla_core": 0,
            "tensorrt.implicit_precision": True,
            "calibration.images": "/data/calib",
            "calibration.frames": 20,
            "crf.enabled": True,
            "crf.iterations": 3,
            "crf.bilateral_srgb": 20.0,
        }
    )
    config = p.pipeline_config(values)
    assert config.model_options == {
        "backbone": "mobilenet_v3_large",
        "version": "v3plus",
        "output_stride": 8,
    }
    assert config.backend_options == {
        "engine_cache": "/tmp/engines",
        "workspace_mb": 512,
        "dla_core": 0,
        "implicit_precision": True,
        "calibration_images": "/data/calib",
        "calibration_frames": 20,
    }
    assert (config.input_height, config.input_width, config.threads) == (64, 96, 2)
    assert config.crf.enabled and config.crf.iterations == 3 and config.crf.bilateral_srgb == 20.0
    assert p.pipeline_config(
        p.validate({"model": "refinenet", "light_weight": True})
    ).model_options == {"light_weight": True}
    assert p.pipeline_config(
        p.validate({"model": "fcn", "variant": "16s", "crf_rnn": True, "crf_rnn_iterations": 3})
    ).model_options == {"variant": "16s", "crf_rnn": True, "crf_iterations": 3}


def test_read_params_file_merges_wildcard_and_node_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "/**": {"ros__parameters": {"threads": 2, "crf": {"iterations": 3}}},
                "/robot/segmentation_node": {
                    "ros__parameters": {"publish": {"probabilities": True}}
                },
                "other_node": {"ros__parameters": {"threads": 7}},
            }
        )
    )
    assert p.read_params_file(path) == {
        "threads": 2,
        "crf.iterations": 3,
        "publish.probabilities": True,
    }


def test_read_params_file_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        p.read_params_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmentation_node: {threads: 2}\n")
    with pytest.raises(ValueError, match="ros__parameters"):
        p.read_params_file(bad)


def test_launch_parameters_put_arguments_after_the_file():
    default = str(REPO / "config" / "segmentation.yaml")
    assert p.launch_parameters() == [default]
    assert p.launch_parameters(
        model="deeplab", backend="onnxruntime", precision="fp16", use_crf="false"
    ) == [
        default,
        {"model": "deeplab", "backend": "onnxruntime", "precision": "fp16", "crf.enabled": False},
    ]


def test_launch_takes_a_camera_list():
    default = str(REPO / "config" / "segmentation.yaml")
    expected = [default, {"cameras": ["front", "rear", "left"]}]
    assert p.launch_parameters(cameras="front,rear, left") == expected
    assert p.launch_parameters(cameras="[front, rear, left]") == expected
    assert p.validate({"cameras": ["front", "rear/wide"]})["cameras"] == ("front", "rear/wide")
    with pytest.raises(ValueError, match="twice"):
        p.launch_parameters(cameras="front,front")


def test_launch_parameters_reject_bad_arguments_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="model must be one of"):
        p.launch_parameters(model="unet")
    with pytest.raises(ValueError, match="use_crf must be true or false"):
        p.launch_parameters(use_crf="maybe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmentation_node:\n  ros__parameters:\n    overlay_alpha: 4.0\n")
    with pytest.raises(ValueError, match="overlay_alpha"):
        p.launch_parameters(params_file=str(bad))


def test_rviz_remappings_follow_the_namespace():
    assert p.rviz_remappings("") == []
    assert p.rviz_remappings("/car1/") == [
        ("/segmentation_node/overlay", "/car1/segmentation_node/overlay"),
        ("/segmentation_node/color", "/car1/segmentation_node/color"),
    ]


def test_rate_meter_measures_and_decays():
    meter = RateMeter(window_s=2.0)
    for i in range(21):
        meter.tick(i * 0.1)  # 10 Hz for 2 s
    assert meter.rate(2.0) == pytest.approx(10.0, rel=0.01)
    assert meter.rate(3.5) < 6.0  # half the window without frames
    assert meter.rate(10.0) == 0.0


def test_latency_window_percentiles_over_the_newest_samples():
    window = LatencyWindow(size=100)
    assert all(math.isnan(v) for v in window.percentiles(50, 95))
    for value in range(1000):  # only 900..999 stay
        window.add(value)
    p50, p95 = window.percentiles(50, 95)
    assert p50 == pytest.approx(949.5) and p95 == pytest.approx(994.05)


def test_node_stats_snapshot_counts_and_stages():
    now = [0.0]
    stats = NodeStats(rate_window_s=10.0, clock=lambda: now[0])
    for i in range(10):
        now[0] = i * 0.5
        stats.frame_received()
    stats.frame_dropped()
    stats.frame_bad()
    stats.frame_skipped()
    for i in range(4):
        now[0] = 5.0 + i
        stats.frame_published({"inference": 10.0 * (i + 1), "age": 20.0, "unknown_stage": 1.0})
    snap = stats.snapshot()
    assert (
        snap["received"],
        snap["dropped"],
        snap["bad"],
        snap["skipped"],
        snap["published"],
    ) == (10, 1, 1, 1, 4)
    assert snap["bad_recent"] == 1 and stats.snapshot()["bad_recent"] == 0
    assert snap["latency_ms"]["inference"] == pytest.approx((25.0, 38.5))
    assert snap["latency_ms"]["age"] == (20.0, 20.0)
    assert "unknown_stage" not in snap["latency_ms"] and "crf" not in snap["latency_ms"]
    assert snap["input_rate"] == pytest.approx(9 / 8.0)
    assert snap["output_rate"] == pytest.approx(3 / 3.0)


def test_backend_stats_count_batches_and_their_sizes():
    now = [0.0]
    stats = BackendStats(rate_window_s=10.0, clock=lambda: now[0])
    assert stats.snapshot()["batch_size_mean"] == 0.0
    for i, size in enumerate((1, 2, 4, 1)):
        now[0] = float(i)
        stats.batch_done(size, inference_ms=10.0 * size)
    snap = stats.snapshot()
    assert snap["frames"] == 8 and snap["batch_size_mean"] == pytest.approx(2.0)
    assert snap["batch_rate"] == pytest.approx(3 / 3.0)
    assert snap["inference_ms"][0] == pytest.approx(15.0)


def test_several_cameras_ask_the_backend_for_batches_of_all_of_them():
    assert "max_batch" not in p.pipeline_config(p.defaults()).backend_options
    assert "max_batch" not in p.pipeline_config(p.validate({"cameras": ["a"]})).backend_options
    config = p.pipeline_config(p.validate({"cameras": ["a", "b", "c", "d"]}))
    assert config.backend_options["max_batch"] == 4


def test_sequence_gaps_count_frames_lost_in_transport():
    stats = NodeStats()
    for sequence in (1, 2, 5, 6, 4, 10):  # 3-4 and 7-9 never came; 4 arrived late
        stats.sequence_seen("camera A", sequence)
    for sequence in (7, 8):  # another publisher numbers its own samples
        stats.sequence_seen("camera B", sequence)
    assert stats.snapshot()["lost"] == 2 + 3


def test_implicit_precision_reaches_tensorrt_whose_11_refuses_so_auto_falls_back(
    monkeypatch, tmp_path
):
    import sys

    import torch

    import seg_ros.backends.devices as devices
    import seg_ros.backends.tensorrt_backend as tensorrt_backend
    from seg_ros.backends import BackendError, BackendOptions, create_backend
    from seg_ros.models import LoadedModel, ModelSpec
    from tensorrt_standin import make_tensorrt

    values = p.validate({"tensorrt.implicit_precision": True, "tensorrt.engine_cache": "x"})
    options = p.pipeline_config(values).backend_options
    assert BackendOptions.from_dict(options).implicit_precision
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("11.1.0"))
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(devices, "tensorrt_importable", lambda: True)
    monkeypatch.setattr(tensorrt_backend, "BUFFER_DEVICE", "cpu")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    loaded = LoadedModel(net, ModelSpec(name="tiny", family="deeplab", num_classes=4))
    options = {**options, "engine_cache": str(tmp_path), "device": "cpu"}
    size = dict(height=16, width=24, precision="fp16", options=options)
    with pytest.raises(BackendError, match="11.1.0 has no implicit precision.*unset implicit"):
        create_backend("tensorrt", loaded, **size)
    with create_backend("auto", loaded, **size) as backend:
        assert backend.name == "onnxruntime:CPUExecutionProvider"
        assert "tensorrt: TensorRT 11.1.0 has no implicit precision" in backend.reason
