"""DDS transport and input reliability for camera-sized images, with nothing set by hand.

Measured here (scripts/camera_transport.py): Fast DDS's default shared-memory segment (0.5 MB)
holds no camera-sized image, so such samples travel as fragmented UDP, and best-effort delivery
of fragmented samples loses most of them (640x480 at 30 Hz: about half; 1280x720: nearly all).
Two things fix that without touching the camera's process:

- the input subscription matches the camera's reliability (``qos.reliability: auto``): a
  reliable publisher (the ROS default) gets a reliable reader, which repairs lost fragments;
- the node's own participant gets a larger shared-memory segment (config/fastdds_node.xml), so
  its outputs reach viewers on the same machine whole. Its transports stay the default ones:
  ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` in the node alone received nothing from a default
  camera, since that mode stops listening for user data on UDP.

Whatever the user has chosen (a profiles file, builtin transports, another RMW) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping
from pathlib import Path

FASTDDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
# Any of these means the user (or the robot's set-up) has chosen Fast DDS settings.
USER_SETTINGS = (
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "FASTDDS_BUILTIN_TRANSPORTS",
)
PROFILE_OVERRIDE = "SEG_ROS_FASTDDS_PROFILE"  # a path, or "none" to keep Fast DDS's defaults
RELIABILITIES = ("auto", "reliable", "best_effort")
FASTDDS_2_DISTROS = ("humble", "iron", "jazzy")


def default_profile() -> Path:
    from seg_ros.paths import config_dir

    return config_dir() / "fastdds_node.xml"


def profiles_variable(env: MutableMapping[str, str]) -> str:
    """Name the variable this ROS distribution's Fast DDS reads a profiles file from.

    Fast DDS 2.x (Humble, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE; 3.x (Kilted on) reads
    FASTDDS_DEFAULT_PROFILES_FILE and warns that the old name is deprecated.
    """
    return (
        "FASTRTPS_DEFAULT_PROFILES_FILE"
        if env.get("ROS_DISTRO", "") in FASTDDS_2_DISTROS
        else "FASTDDS_DEFAULT_PROFILES_FILE"
    )


def apply_default_transport(environ: MutableMapping[str, str] | None = None) -> str:
    """Point Fast DDS at seg_ros's profile unless something is chosen; say what is in force.

    Must run before ``rclpy.init()``: Fast DDS reads the variables when the participant is made.
    """
    env = os.environ if environ is None else environ
    rmw = env.get("RMW_IMPLEMENTATION", "") or "rmw_fastrtps_cpp (default)"
    if rmw.split()[0] not in FASTDDS_RMWS:
        return f"RMW {rmw}: its own transport settings (seg_ros sets none)"
    chosen = {name: env[name] for name in USER_SETTINGS if env.get(name)}
    if chosen:
        listed = ", ".join(f"{name}={value}" for name, value in chosen.items())
        return f"RMW {rmw} with the environment's settings: {listed}"
    override = env.get(PROFILE_OVERRIDE, "")
    if override.lower() == "none":
        return f"RMW {rmw} with Fast DDS's default transports ({PROFILE_OVERRIDE}=none)"
    profile = Path(override) if override else default_profile()
    if not profile.is_file():
        return f"RMW {rmw} with Fast DDS's default transports (no profile at {profile})"
    env[profiles_variable(env)] = str(profile)
    return f"RMW {rmw} with seg_ros's Fast DDS profile {profile} (shared memory 64 MB + UDPv4)"


def matched_reliability(setting: str, offered: Iterable[str]) -> str:
    """Choose the input reader's reliability: ``setting``, or for ``auto`` what is offered.

    ``offered`` holds each publisher's reliability ("reliable" / "best_effort"). A reliable
    reader matches only reliable writers, so ``auto`` picks reliable only when every publisher
    offers it, and the sensor-data default (best effort, REP-2003) otherwise or while none is
    there.
    """
    if setting not in RELIABILITIES:
        raise ValueError(
            f"qos.reliability {setting!r}: expected one of {', '.join(RELIABILITIES)}"
        )
    if setting != "auto":
        return setting
    offered = list(offered)
    if offered and all(value == "reliable" for value in offered):
        return "reliable"
    return "best_effort"
