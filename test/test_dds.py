"""Transport settings the node picks for camera-sized images (seg_ros.dds), and over real DDS."""

from __future__ import annotations

import pytest

from seg_ros import dds


@pytest.mark.parametrize(
    "distro, variable",
    [
        ("", "FASTDDS_DEFAULT_PROFILES_FILE"),
        ("kilted", "FASTDDS_DEFAULT_PROFILES_FILE"),
        ("jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE"),
        ("humble", "FASTRTPS_DEFAULT_PROFILES_FILE"),
    ],
)
def test_default_profile_applied_only_when_nothing_is_chosen(distro, variable):
    env = {"ROS_DISTRO": distro} if distro else {}
    said = dds.apply_default_transport(env)
    assert env[variable] == str(dds.default_profile())
    assert set(env) - {"ROS_DISTRO"} == {variable}
    assert dds.default_profile().is_file() and "profile" in said


@pytest.mark.parametrize(
    "name",
    [
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        "FASTDDS_DEFAULT_PROFILES_FILE",
        "FASTDDS_BUILTIN_TRANSPORTS",
    ],
)
def test_the_users_fastdds_choice_is_left_alone(name):
    env = {name: "theirs"}
    said = dds.apply_default_transport(env)
    assert env == {name: "theirs"}
    assert f"{name}=theirs" in said


def test_other_rmw_and_opt_out_are_left_alone():
    env = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert "rmw_cyclonedds_cpp" in dds.apply_default_transport(env)
    assert env == {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    env = {dds.PROFILE_OVERRIDE: "none"}
    dds.apply_default_transport(env)
    assert env == {dds.PROFILE_OVERRIDE: "none"}


def test_profile_keeps_default_transports():
    """LARGE_DATA-style set-ups stop listening on UDP: then a default camera is not heard."""
    text = dds.default_profile().read_text()
    assert "<type>SHM</type>" in text and "<type>UDPv4</type>" in text
    assert "TCP" not in text


def test_auto_reliability_matches_the_publishers():
    assert dds.matched_reliability("auto", ["reliable"]) == "reliable"
    assert dds.matched_reliability("auto", ["reliable", "reliable"]) == "reliable"
    assert dds.matched_reliability("auto", ["reliable", "best_effort"]) == "best_effort"
    assert dds.matched_reliability("auto", []) == "best_effort"
    assert dds.matched_reliability("best_effort", ["reliable"]) == "best_effort"
    assert dds.matched_reliability("reliable", []) == "reliable"
    with pytest.raises(ValueError, match="qos.reliability 'sometimes'"):
        dds.matched_reliability("sometimes", [])


@pytest.mark.ros
@pytest.mark.slow
def test_camera_sized_frames_all_arrive_and_come_back(tmp_path):
    """1280x720 rgb8 from a default-QoS camera in another process, nothing set by hand."""
    pytest.importorskip("rclpy", reason="rclpy is not importable")
    import argparse

    import numpy as np
    from demo_inputs import write_tiny_checkpoint

    from seg_ros.commands import demo
    from seg_ros.demo_session import DemoSession

    commands = argparse.ArgumentParser().add_subparsers()
    demo.register(commands)
    checkpoint = write_tiny_checkpoint(tmp_path)
    args = commands.choices["demo"].parse_args(
        ["--param", f"weights:={checkpoint}", "--height", "64", "--width", "96"]
    )
    command = ["env"] + [f"-u{name}" for name in dds.USER_SETTINGS] + demo.node_command(args)
    rng = np.random.default_rng(1)
    camera = [
        argparse.Namespace(image=rng.integers(0, 255, (720, 1280, 3), np.uint8)) for _ in range(2)
    ]
    outputs = [f"/{demo.NODE_NAME}/{name}" for name in demo.OUTPUTS]
    with DemoSession(command, demo.INPUT_TOPIC, outputs) as session:
        frames = session.load(_Frames(camera))
        session.wait_ready(frames[0], 240.0)
        session.send(frames, 10, 5.0)
        report = session.report()
    node = {key: value for key, value in report["node"].items() if key.startswith("frames_")}
    sent = report["frames_sent"] + report["warmup_frames_sent"]
    assert int(node["frames_received"]) == sent, node  # every frame reached the node
    assert node["frames_lost_in_transport"] == "0", node
    # What the node could not keep up with is counted, never lost; what it published came back.
    published = int(node["frames_published"])
    accounted = published + sum(
        int(node[key]) for key in ("frames_dropped", "frames_bad", "frames_skipped_no_subscriber")
    )
    assert accounted == sent, node
    back = set(report["received"].values())  # timed frames only, warm-up frames not counted
    assert len(back) == 1, report["received"]  # each frame came back on every output
    assert published - report["warmup_frames_sent"] <= back.pop() <= published
    assert sum("transport:" in line for line in session.node_output()) == 1  # logged once


class _Frames(list):
    """A list of frames with what DemoSession.load asks of an image source."""

    @property
    def count(self) -> int:
        return len(self)

    def describe(self) -> str:
        return f"{len(self)} synthetic frames"


@pytest.mark.ros
def test_missing_params_file_is_one_line(tmp_path):
    """Rcl refuses the arguments before any node exists: one line and exit code 1, no traceback."""
    pytest.importorskip("rclpy", reason="rclpy is not importable")
    import subprocess
    import sys

    missing = tmp_path / "none.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "seg_ros.node", "--ros-args", "--params-file", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "segmentation_node: cannot start: " in result.stderr and str(missing) in result.stderr
