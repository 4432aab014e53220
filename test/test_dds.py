"""Transport settings the node picks for camera-sized images (seg_ros.dds), and over real DDS."""

from __future__ import annotations

import pytest

from seg_ros import dds


def test_default_profile_applied_only_when_nothing_is_chosen():
    env: dict[str, str] = {}
    said = dds.apply_default_transport(env)
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(dds.default_profile())
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(dds.default_profile())
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
