"""The segmentation node as its own process, over real DDS (rclpy from the PyPI wheels).

One node process (reliable input QoS, raw images) serves most tests; a second
one takes compressed images with the default best-effort QoS; a third serves
two cameras of different sizes; a lifecycle node is driven through its
lifecycle services; start-up failures each get a short-lived process. Frames
are small (120×160) except one real CamVid frame; the network runs at 64×96 so
a forward pass stays cheap.
"""

from __future__ import annotations

import array
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels) is not installed")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from seg_ros.classes import load_class_table  # noqa: E402
from seg_ros.image_codec import message_to_array  # noqa: E402
from seg_ros.node_parameters import NODE_NAME, OUTPUTS  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# A small real network on the PyTorch backend (no ONNX export) at a small input size.
TEST_PARAMETERS = {
    "model": "deeplab",
    "backbone": "mobilenet_v3_large",
    "class_table": "camvid",
    "num_classes": 11,
    "backend": "torch",
    "input_height": 64,
    "input_width": 96,
    "threads": 1,
}
NETWORK_SIZE = (64, 96)
FRAME_SIZE = (120, 160)
CAMVID = load_class_table("camvid")
COMPACT = ("label", "confidence", "color", "overlay")
CAMERAS = ("front", "rear")


# --- harness -------------------------------------------------------------------------------------


class NodeProcess:
    """``python -m seg_ros.node`` with a params file; its console output goes to a log file."""

    def __init__(
        self, tmp_path: Path, namespace: str, parameters: dict, module: str = "seg_ros.node"
    ):
        self.params_file = tmp_path / f"{namespace}.yaml"
        self.params_file.write_text(
            yaml.safe_dump({f"/**/{NODE_NAME}": {"ros__parameters": parameters}})
        )
        self.log_file = tmp_path / f"{namespace}.log"
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-X",
                    "faulthandler",  # a hung shutdown leaves every thread's stack in the log
                    "-m",
                    module,
                    "--ros-args",
                    "--params-file",
                    str(self.params_file),
                    "-r",
                    f"__ns:=/{namespace}",
                    "-r",
                    f"image:=/{namespace}/camera/image",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGABRT)  # faulthandler writes the stacks
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
        return self.process.wait(timeout=10)


def image_msg(
    array: np.ndarray,
    encoding: str,
    stamp: int,
    frame_id: str = "camera",
    step: int | None = None,
    big_endian: bool = False,
) -> Image:
    """Build an Image with ``stamp`` seconds; rows padded to ``step`` bytes when given."""
    height, width = array.shape[:2]
    contiguous = np.ascontiguousarray(array)
    rows = contiguous.reshape(-1).view(np.uint8).reshape(height, contiguous.strides[0])
    step = step or rows.shape[1]
    if step > rows.shape[1]:
        padded = np.zeros((height, step), np.uint8)
        padded[:, : rows.shape[1]] = rows
        rows = padded
    msg = Image(
        height=height, width=width, encoding=encoding, is_bigendian=int(big_endian), step=step
    )
    msg.data = byte_array(rows.tobytes())
    msg.header.stamp.sec = stamp
    msg.header.stamp.nanosec = 123
    msg.header.frame_id = frame_id
    return msg


def byte_array(data: bytes) -> array.array:
    """Rclpy takes uint8[] fields as array.array('B') without checking every byte."""
    out = array.array("B")
    out.frombytes(data)
    return out


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Colour ramps plus a few flat blocks: structure for the network to split into classes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * x / width, 255 * y / height, np.full_like(x, 128)], axis=-1)
    for _ in range(4):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


class Probe:
    """Send frames to one segmentation node and collect what it publishes (a node in the test).

    With ``cameras`` (the node's ``cameras`` parameter) outputs are named ``<camera>/<output>``.
    """

    def __init__(self, namespace: str, compressed: bool = False, cameras: tuple[str, ...] = ("",)):
        self.namespace = namespace
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"probe_{namespace}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._cond = threading.Condition()
        self.outputs: dict[tuple[int, int], dict[str, Image]] = defaultdict(dict)
        self.diagnostics: list[dict] = []
        base = f"/{namespace}/{NODE_NAME}"
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.reliable = reliable
        self.base = base
        self.subscriptions = {}
        for camera in cameras:
            for name in OUTPUTS:
                self.subscribe(f"{camera}/{name}" if camera else name)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        suffix = "/image" + ("/compressed" if compressed else "")
        self.publishers = {
            camera: self.node.create_publisher(
                CompressedImage if compressed else Image,
                f"/{namespace}/{camera or 'camera'}{suffix}",
                reliable,
            )
            for camera in cameras
        }
        self.publisher = self.publishers[cameras[0]]
        self.clients = {
            name: self.node.create_client(srv, f"{base}/{name}")
            for name, srv in (
                ("get_parameters", GetParameters),
                ("set_parameters", SetParameters),
                ("describe_parameters", DescribeParameters),
                ("enable", SetBool),
                ("change_state", ChangeState),
                ("get_state", GetState),
            )
        }
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def subscribe(self, name: str) -> None:
        """Collect the node's output ``name`` (``label``, or ``front/label`` with cameras)."""
        self.subscriptions[name] = self.node.create_subscription(
            Image, f"{self.base}/{name}", self._collector(name), self.reliable
        )

    def unsubscribe_all(self) -> None:
        for subscription in self.subscriptions.values():
            self.node.destroy_subscription(subscription)
        self.subscriptions = {}

    def _collector(self, name: str):
        def collect(msg: Image) -> None:
            with self._cond:
                self.outputs[(msg.header.stamp.sec, msg.header.stamp.nanosec)][name] = msg
                self._cond.notify_all()

        return collect

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"/{self.namespace}/{NODE_NAME}"):
                values = {kv.key: kv.value for kv in status.values}
                values["_name"] = status.name
                values["_level"] = status.level
                values["_message"] = status.message
                with self._cond:
                    self.diagnostics.append(values)
                    self._cond.notify_all()

    def wait_until_ready(self, process: NodeProcess, timeout: float = 180.0) -> None:
        """Until the node (model loaded) subscribes to our frames and reports diagnostics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.process.poll() is not None:
                raise AssertionError(
                    f"node exited with {process.process.returncode}:\n{process.log()}"
                )
            if self.publisher.get_subscription_count() > 0 and self.diagnostics:
                return
            time.sleep(0.2)
        raise AssertionError(f"node not ready after {timeout} s:\n{process.log()}")

    def send(self, msg, wanted=COMPACT, timeout: float = 30.0, camera: str = "") -> dict:
        """Publish ``msg`` (again every 2 s while discovery settles) until ``wanted`` arrive."""
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        deadline = time.monotonic() + timeout
        publisher = self.publishers[camera] if camera else self.publisher
        while time.monotonic() < deadline:
            publisher.publish(msg)
            outputs = self.wait_for(key, wanted, min(2.0, deadline - time.monotonic()))
            if outputs:
                return outputs
        raise AssertionError(
            f"no {wanted} for stamp {key} within {timeout} s; got {sorted(self.outputs[key])}"
        )

    def wait_for(self, key: tuple[int, int], wanted=COMPACT, timeout: float = 30.0) -> dict | None:
        """Wait for the outputs for stamp ``key`` until all ``wanted`` arrived; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(name in self.outputs[key] for name in wanted):
                if time.monotonic() >= deadline:
                    return None
                self._cond.wait(timeout=0.1)
            return dict(self.outputs[key])

    def wait_diagnostics(self, accept, timeout: float = 30.0) -> dict:
        """Wait for the first report from now on for which ``accept(values)`` holds."""
        deadline = time.monotonic() + timeout
        seen = len(self.diagnostics)
        with self._cond:
            while time.monotonic() < deadline:
                for values in self.diagnostics[seen:]:
                    if accept(values):
                        return values
                seen = len(self.diagnostics)
                self._cond.wait(timeout=0.1)
        raise AssertionError(
            f"no matching diagnostics within {timeout} s: {self.diagnostics[-3:]}"
        )

    def diagnostics_after(self, count: int, timeout: float = 10.0) -> dict:
        """Return the newest diagnostics once more than ``count`` reports have arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.diagnostics) <= count and time.monotonic() < deadline:
                self._cond.wait(timeout=0.1)
            assert len(self.diagnostics) > count, f"no diagnostics within {timeout} s"
            return self.diagnostics[-1]

    def _call(self, service: str, request, timeout: float = 15.0):
        client = self.clients[service]
        assert client.wait_for_service(timeout_sec=timeout), f"{service} not available"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), f"{service} timed out"
        return future.result()

    def set_parameter(self, name: str, value) -> tuple[bool, str]:
        if isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, int):
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        elif isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        elif isinstance(value, list):
            pv = ParameterValue(
                type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=value
            )
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        request = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
        result = self._call("set_parameters", request).results[0]
        return result.successful, result.reason

    def enable(self, on: bool) -> str:
        response = self._call("enable", SetBool.Request(data=on))
        assert response.success
        return response.message

    def lifecycle(self, transition: int) -> bool:
        """Ask for a lifecycle transition; True when the node made it."""
        request = ChangeState.Request(transition=Transition(id=transition))
        return self._call("change_state", request, timeout=180.0).success

    def lifecycle_state(self) -> str:
        return self._call("get_state", GetState.Request()).current_state.label

    def wait_for_subscription(self, subscribed: bool, timeout: float = 30.0) -> None:
        """Until the node does (or does not) subscribe to our frames."""
        deadline = time.monotonic() + timeout
        while (self.publisher.get_subscription_count() > 0) != subscribed:
            assert time.monotonic() < deadline, f"input still subscribed={not subscribed}"
            time.sleep(0.1)

    def get_parameters(self, *names: str) -> list[ParameterValue]:
        return list(self._call("get_parameters", GetParameters.Request(names=list(names))).values)

    def describe(self, *names: str):
        return list(
            self._call(
                "describe_parameters", DescribeParameters.Request(names=list(names))
            ).descriptors
        )


_stamps = iter(range(1000, 10**6))


def next_stamp() -> int:
    return next(_stamps)


# --- the main node -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def early_processes(tmp_path_factory):
    """Start the other nodes and the failing start-ups now, so they load while other tests run."""
    tmp = tmp_path_factory.mktemp("node_early")
    corrupt = tmp / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(64))
    failures = {
        "overlay_alpha": {"overlay_alpha": 2.0},
        "model must be one of": {"model": "unet"},
        "/nonexistent/seg.safetensors": {"weights": "/nonexistent/seg.safetensors"},
        str(corrupt): {"weights": str(corrupt)},
        "was renamed calibration.images": {"tensorrt.calibration_images": "/data/calib"},
    }
    processes = {
        "jpeg": NodeProcess(tmp, "seg_jpeg", {**TEST_PARAMETERS, "image_transport": "compressed"}),
        "multi": NodeProcess(
            tmp,
            "seg_multi",
            {**TEST_PARAMETERS, "cameras": list(CAMERAS), "qos.reliability": "reliable"},
        ),
        # Weights that do not exist: the first configure fails, with the reason.
        "lifecycle": NodeProcess(
            tmp,
            "seg_life",
            {**TEST_PARAMETERS, "weights": "/nonexistent/life.safetensors"},
            module="seg_ros.lifecycle_node",
        ),
        "failures": {
            words: NodeProcess(tmp, f"seg_fail{i}", {**TEST_PARAMETERS, **parameters})
            for i, (words, parameters) in enumerate(failures.items())
        },
    }
    yield processes
    started = [processes["jpeg"], processes["multi"], processes["lifecycle"]]
    for process in started + list(processes["failures"].values()):
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


@pytest.fixture(scope="module")
def raw(tmp_path_factory, early_processes):
    tmp = tmp_path_factory.mktemp("node_raw")
    process = NodeProcess(tmp, "seg_raw", {**TEST_PARAMETERS, "qos.reliability": "reliable"})
    probe = Probe("seg_raw")
    try:
        probe.wait_until_ready(process)
        yield probe, process
    finally:
        probe.close()
        code = process.stop()
        assert code == 0, f"node exited with {code} on SIGINT:\n{process.log()}"


def _check_compact_outputs(
    outputs: dict, image: np.ndarray, header, alpha: float = 0.5
) -> np.ndarray:
    """Header, size, encoding and value checks shared by the tests; returns the label image."""
    height, width = image.shape[:2]
    expected = {"label": "mono8", "confidence": "32FC1", "color": "rgb8", "overlay": "rgb8"}
    for name, encoding in expected.items():
        msg = outputs[name]
        assert msg.header.stamp == header.stamp and msg.header.frame_id == header.frame_id, name
        assert (msg.height, msg.width, msg.encoding) == (height, width, encoding), name
    label = message_to_array(outputs["label"])
    confidence = message_to_array(outputs["confidence"])
    color = message_to_array(outputs["color"])
    overlay = message_to_array(outputs["overlay"])
    assert label.max() < CAMVID.num_classes
    assert np.isfinite(confidence).all()
    # The winning probability of C classes is at least 1/C (bilinear resizing keeps that bound).
    assert confidence.min() >= 1.0 / CAMVID.num_classes - 1e-4 and confidence.max() <= 1.0
    np.testing.assert_array_equal(color, CAMVID.colors[label])
    rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    blend = cv2.addWeighted(color, alpha, rgb, 1.0 - alpha, 0.0)
    assert np.abs(overlay.astype(int) - blend.astype(int)).max() <= 1
    return label


def test_outputs_carry_the_input_header_at_input_resolution(raw):
    probe, _ = raw
    image = scene(*FRAME_SIZE)
    msg = image_msg(image, "rgb8", next_stamp(), frame_id="front_camera")
    outputs = probe.send(msg)
    _check_compact_outputs(outputs, image, msg.header)
    assert "probabilities" not in outputs  # off by default


def test_class_table_is_exposed_as_read_only_parameters(raw):
    probe, _ = raw
    names, colors = probe.get_parameters("classes.names", "classes.colors")
    assert list(names.string_array_value) == list(CAMVID.names)
    assert list(colors.integer_array_value) == CAMVID.colors.reshape(-1).tolist()
    ok, reason = probe.set_parameter("classes.names", ["a"])
    assert not ok and "read-only" in reason


def test_descriptors_carry_ranges(raw):
    probe, _ = raw
    alpha, iterations, model = probe.describe("overlay_alpha", "crf.iterations", "model")
    assert (alpha.floating_point_range[0].from_value, alpha.floating_point_range[0].to_value) == (
        0.0,
        1.0,
    )
    assert (iterations.integer_range[0].from_value, iterations.integer_range[0].to_value) == (
        1,
        50,
    )
    assert "restart" in model.description and "'deeplab'" in model.additional_constraints


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("overlay_alpha", 1.5, "out of range"),
        ("crf.iterations", 0, "out of range"),
        ("overlay_alpha", "opaque", "type"),
        ("model", "segnet", "restart"),
        ("backend", "onnxruntime", "restart"),
        ("input_height", 128, "restart"),
        ("image_transport", "compressed", "restart"),
    ],
)
def test_bad_or_expensive_changes_are_refused_with_the_reason(raw, name, value, words):
    probe, _ = raw
    ok, reason = probe.set_parameter(name, value)
    assert not ok and words in reason.lower()


def test_crf_switch_is_refused_until_the_crf_module_exists_else_applied(raw):
    probe, _ = raw
    ok, reason = probe.set_parameter("crf.enabled", True)
    try:
        from seg_ros import crf  # noqa: F401
    except ImportError:
        assert not ok and "seg_ros.crf" in reason
        return
    assert ok, reason
    try:
        assert probe.set_parameter("crf.iterations", 2) == (True, "")
        image = scene(*NETWORK_SIZE, seed=5)
        outputs = probe.send(
            image_msg(image, "rgb8", next_stamp()), timeout=90.0
        )  # the first CRF call imports it
        _check_compact_outputs(outputs, image, outputs["label"].header)
    finally:
        assert probe.set_parameter("crf.enabled", False)[0]
        assert probe.set_parameter("crf.iterations", 5)[0]


def test_probabilities_switched_on_at_run_time_agree_with_label_and_confidence(raw):
    probe, _ = raw
    assert probe.set_parameter("publish.probabilities", True) == (True, "")
    try:
        image = scene(*NETWORK_SIZE, seed=3)  # network size: no resizing, so exact agreement
        msg = image_msg(image, "rgb8", next_stamp())
        outputs = probe.send(msg, wanted=COMPACT + ("probabilities",))
    finally:
        assert probe.set_parameter("publish.probabilities", False)[0]
    prob_msg = outputs["probabilities"]
    assert (
        prob_msg.encoding == f"32FC{CAMVID.num_classes}"
        and prob_msg.header.stamp == msg.header.stamp
    )
    probabilities = message_to_array(prob_msg)
    assert probabilities.shape == (*NETWORK_SIZE, CAMVID.num_classes)
    np.testing.assert_allclose(probabilities.sum(axis=2), 1.0, atol=1e-4)
    label = message_to_array(outputs["label"])
    np.testing.assert_array_equal(probabilities.argmax(axis=2), label)
    np.testing.assert_allclose(
        probabilities.max(axis=2), message_to_array(outputs["confidence"]), atol=1e-6
    )


def test_overlay_alpha_changes_at_run_time(raw):
    probe, _ = raw
    image = scene(*FRAME_SIZE, seed=1)
    try:
        for alpha in (1.0, 0.0):
            assert probe.set_parameter("overlay_alpha", alpha) == (True, "")
            outputs = probe.send(image_msg(image, "rgb8", next_stamp()))
            overlay = message_to_array(outputs["overlay"])
            expected = message_to_array(outputs["color"]) if alpha == 1.0 else image
            np.testing.assert_array_equal(overlay, expected)
    finally:
        assert probe.set_parameter("overlay_alpha", 0.5)[0]


def test_pipelining_is_serial_on_a_cpu_backend_and_can_be_switched_at_run_time(raw):
    """Pipelining auto publishes between inferences on the CPU; overlap serves every frame too."""
    probe, _ = raw
    image = scene(*FRAME_SIZE, seed=2)
    probe.send(image_msg(image, "rgb8", next_stamp()))
    assert probe.diagnostics_after(len(probe.diagnostics))["pipelining"] == "serial"
    try:
        assert probe.set_parameter("pipelining", "overlap") == (True, "")
        first = message_to_array(probe.send(image_msg(image, "rgb8", next_stamp()))["label"])
        again = message_to_array(probe.send(image_msg(image, "rgb8", next_stamp()))["label"])
        np.testing.assert_array_equal(first, again)
        values = probe.wait_diagnostics(lambda v: v.get("pipelining") == "overlap")
        assert values["pipelining"] == "overlap"
        assert probe.set_parameter("pipelining", "sideways")[0] is False
    finally:
        assert probe.set_parameter("pipelining", "auto")[0]


def _label_for(probe, array, encoding, **kwargs) -> np.ndarray:
    msg = image_msg(array, encoding, next_stamp(), **kwargs)
    outputs = probe.send(msg)
    assert (outputs["label"].height, outputs["label"].width) == array.shape[:2]
    return message_to_array(outputs["label"])


def test_encodings_padding_and_endianness_give_the_same_segmentation(raw):
    probe, _ = raw
    rgb = scene(*FRAME_SIZE, seed=2)
    reference = _label_for(probe, rgb, "rgb8")
    np.testing.assert_array_equal(_label_for(probe, rgb[:, :, ::-1], "bgr8"), reference)
    np.testing.assert_array_equal(_label_for(probe, rgb[:, :, ::-1], "8UC3"), reference)
    rgba = np.dstack([rgb, np.full(FRAME_SIZE, 7, np.uint8)])
    np.testing.assert_array_equal(_label_for(probe, rgba, "rgba8"), reference)
    np.testing.assert_array_equal(_label_for(probe, rgba[:, :, [2, 1, 0, 3]], "bgra8"), reference)
    np.testing.assert_array_equal(
        _label_for(probe, rgb, "rgb8", step=FRAME_SIZE[1] * 3 + 13), reference
    )

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grey_label = _label_for(probe, grey, "mono8")
    np.testing.assert_array_equal(
        _label_for(probe, grey.astype(np.uint16) * 257, "mono16"), grey_label
    )
    big = (grey.astype(np.uint16) * 257).astype(">u2")
    np.testing.assert_array_equal(_label_for(probe, big, "mono16", big_endian=True), grey_label)

    bayer = np.zeros(FRAME_SIZE, np.uint8)  # an RGGB mosaic of the scene
    bayer[0::2, 0::2], bayer[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    bayer[1::2, 0::2], bayer[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    _label_for(probe, bayer, "bayer_rggb8")
    uyvy = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV)[
        :, :, [1, 0]
    ].copy()  # U/V interleaved with Y: size check only
    _label_for(probe, uyvy, "yuv422")


def _wait_for_bad_frames(probe, expected: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = probe.diagnostics_after(len(probe.diagnostics))
        if int(report["frames_bad"]) >= expected:
            return
    raise AssertionError(f"the node did not count bad frame {expected} within {timeout} s")


def test_bad_frames_are_skipped_with_a_warning_and_the_next_good_frame_is_served(raw):
    probe, process = raw
    before = probe.diagnostics_after(0)
    count = len(probe.diagnostics)
    rgb = scene(*FRAME_SIZE)
    bad = [
        image_msg(rgb, "bogus8", next_stamp()),  # unsupported encoding
        image_msg(rgb[:0], "rgb8", next_stamp()),  # zero-sized
        image_msg(
            rgb, "rgb8", next_stamp(), step=FRAME_SIZE[1] * 3 - 1
        ),  # odd step, smaller than a row
        image_msg(rgb[:, :159], "yuv422", next_stamp()),  # 4:2:2 needs an even width
    ]
    short = image_msg(rgb, "rgb8", next_stamp())
    short.data = short.data[:1000]  # data shorter than step x height
    for number, msg in enumerate(bad + [short], start=1):
        probe.publisher.publish(msg)
        # One at a time: wait until the node has counted it, so none is dropped as stale behind a
        # slow frame.
        _wait_for_bad_frames(probe, int(before["frames_bad"]) + number)
    good = image_msg(rgb, "rgb8", next_stamp())
    _check_compact_outputs(probe.send(good), rgb, good.header)
    after = probe.diagnostics_after(count + 1)
    assert int(after["frames_bad"]) - int(before["frames_bad"]) == 5
    log = process.log()
    for words in ("bogus8", "empty", "step", "even width", "data has 1000 bytes"):
        assert words in log, f"no warning naming {words!r}:\n{log}"
    for msg in bad + [short]:
        assert (msg.header.stamp.sec, 123) not in probe.outputs
    assert process.process.poll() is None


def test_newest_frame_wins_under_a_burst_and_drops_are_counted(raw):
    probe, _ = raw
    count = len(probe.diagnostics)
    before = probe.diagnostics_after(count)
    image = scene(480, 640, seed=4)
    burst = [image_msg(image, "rgb8", next_stamp()) for _ in range(20)]
    for msg in burst:
        probe.publisher.publish(msg)
    assert probe.wait_for((burst[-1].header.stamp.sec, 123)), (
        "the newest frame of the burst was not served"
    )
    time.sleep(1.0)
    count = len(probe.diagnostics)
    after = probe.diagnostics_after(count)
    served = sum(1 for msg in burst if (msg.header.stamp.sec, 123) in probe.outputs)
    delta = {
        key: int(after[key]) - int(before[key])
        for key in ("frames_received", "frames_published", "frames_dropped", "frames_bad")
    }
    assert delta["frames_bad"] == 0
    assert delta["frames_published"] == served
    # Every frame that reached the node was either served or dropped as stale.
    assert delta["frames_received"] == delta["frames_published"] + delta["frames_dropped"]
    assert served < len(burst), "a burst of 640x480 frames should not all be processed"


def test_diagnostics_report_rates_stages_and_model(raw):
    probe, _ = raw
    for _ in range(3):
        probe.send(image_msg(scene(*FRAME_SIZE), "rgb8", next_stamp()))
    values = probe.diagnostics_after(len(probe.diagnostics))
    assert values["model"] == "deeplab" and values["backend"].startswith("torch")
    assert values["precision"] == "fp32" and values["input_size"] == "64x96"
    assert values["input_topic"] == "/seg_raw/camera/image"
    assert float(values["output_rate_hz"]) > 0 and float(values["input_rate_hz"]) > 0
    for stage in (
        "decode",
        "preprocess",
        "inference",
        "postprocess",
        "publish",
        "age",
        "node_cpu",
    ):
        p50, p95 = float(values[f"{stage}_p50_ms"]), float(values[f"{stage}_p95_ms"])
        assert 0 <= p50 <= p95, stage
    assert float(values["age_p50_ms"]) >= float(values["inference_p50_ms"])
    assert {"frames_dropped", "frames_bad", "frames_received", "frames_published"} <= set(values)


def test_real_camvid_frame(raw, camvid):
    probe, _ = raw
    path = sorted((camvid / "val").glob("*.png"))[0]
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    msg = image_msg(image, "rgb8", next_stamp(), frame_id="camvid")
    label = _check_compact_outputs(probe.send(msg), image, msg.header)
    assert label.shape == (360, 480)


def test_disabled_node_does_no_work_and_says_so(raw):
    probe, _ = raw
    assert "disabled" in probe.enable(False)
    try:
        probe.wait_for_subscription(False)  # no input subscription: no frame costs anything
        values = probe.wait_diagnostics(lambda v: v["enabled"] == "false")
        assert "disabled" in values["_message"] and values["subscribed"] == "false"
    finally:
        assert probe.enable(True) == "enabled"
    probe.wait_for_subscription(True)
    image = scene(*FRAME_SIZE, seed=9)
    msg = image_msg(image, "rgb8", next_stamp())
    _check_compact_outputs(probe.send(msg), image, msg.header)


def test_camera_is_subscribed_only_while_an_output_is_wanted(raw):
    """Runs last in this module: it removes the probe's output subscriptions."""
    probe, _ = raw
    probe.unsubscribe_all()
    probe.wait_for_subscription(False)
    assert probe.wait_diagnostics(lambda v: v["subscribed"] == "false")
    probe.subscribe("overlay")
    probe.wait_for_subscription(True)
    image = scene(*FRAME_SIZE, seed=10)
    outputs = probe.send(image_msg(image, "rgb8", next_stamp()), wanted=("overlay",))
    assert outputs["overlay"].encoding == "rgb8"
    assert probe.set_parameter("publish.overlay", False) == (True, "")  # nobody wants anything now
    try:
        probe.wait_for_subscription(False)
    finally:
        assert probe.set_parameter("publish.overlay", True)[0]
    probe.wait_for_subscription(True)


# --- compressed input, default (best-effort) QoS -------------------------------------------------


def test_compressed_input(early_processes):
    process = early_processes["jpeg"]
    probe = Probe("seg_jpeg", compressed=True)
    try:
        probe.wait_until_ready(process)
        image = scene(*FRAME_SIZE, seed=6)
        for fmt, ext in (("jpeg", ".jpg"), ("png", ".png")):
            msg = CompressedImage(
                format=fmt, data=byte_array(cv2.imencode(ext, image[:, :, ::-1])[1].tobytes())
            )
            msg.header.stamp.sec, msg.header.frame_id = next_stamp(), "jpeg_camera"
            outputs = probe.send(msg)
            decoded = cv2.cvtColor(
                cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR),
                cv2.COLOR_BGR2RGB,
            )
            _check_compact_outputs(outputs, decoded, msg.header)
        corrupt = CompressedImage(format="jpeg", data=byte_array(b"\xff\xd8 not really a jpeg"))
        corrupt.header.stamp.sec = next_stamp()
        probe.publisher.publish(corrupt)
        time.sleep(0.5)
        msg = CompressedImage(
            format="jpeg", data=byte_array(cv2.imencode(".jpg", image)[1].tobytes())
        )
        msg.header.stamp.sec = next_stamp()
        probe.send(msg)
        assert "not a valid jpeg" in process.log()
        values = probe.diagnostics_after(len(probe.diagnostics))
        assert (
            values["input_topic"] == "/seg_jpeg/camera/image/compressed"
            and int(values["frames_bad"]) >= 1
        )
    finally:
        probe.close()
        assert process.stop() == 0, process.log()


# --- start-up failures ---------------------------------------------------------------------------


def test_start_up_errors_exit_non_zero_with_one_clear_message(early_processes):
    """Bad parameter values, missing or corrupt weights: exit code 1 and one line naming it."""
    for words, process in early_processes["failures"].items():
        code = process.process.wait(timeout=180)
        log = process.log()
        assert code == 1, log
        assert "cannot start" in log and words in log, log
        assert "Traceback" not in log, log


# --- several cameras, one model ------------------------------------------------------------------


def test_two_cameras_of_different_sizes_come_back_on_their_own_topics(early_processes):
    process = early_processes["multi"]
    probe = Probe("seg_multi", cameras=CAMERAS)
    try:
        probe.wait_until_ready(process)
        images = {"front": scene(*FRAME_SIZE, seed=11), "rear": scene(90, 200, seed=12)}
        for _ in range(2):
            msgs = {
                camera: image_msg(image, "rgb8", next_stamp(), frame_id=f"{camera}_optical")
                for camera, image in images.items()
            }
            for camera in CAMERAS:  # both waiting at once: the node may run them as one batch
                probe.publishers[camera].publish(msgs[camera])
            for camera in CAMERAS:
                wanted = tuple(f"{camera}/{name}" for name in COMPACT)
                outputs = probe.send(msgs[camera], wanted=wanted, camera=camera)
                assert all(name.startswith(f"{camera}/") for name in outputs), sorted(outputs)
                own = {name: outputs[f"{camera}/{name}"] for name in COMPACT}
                _check_compact_outputs(own, images[camera], msgs[camera].header)
        backend = probe.wait_diagnostics(lambda v: v["_name"].endswith(": backend"))
        assert backend["cameras"] == "2" and backend["model"] == "deeplab"
        for camera in CAMERAS:
            status = probe.wait_diagnostics(lambda v: v["_name"].endswith(f": camera {camera}"))
            assert status["input_topic"] == f"/seg_multi/{camera}/image"
            assert int(status["frames_published"]) >= 2 and status["subscribed"] == "true"
    finally:
        probe.close()
        assert process.stop() == 0, process.log()


# --- the lifecycle node --------------------------------------------------------------------------


def test_lifecycle_transitions_through_the_lifecycle_services(early_processes):
    process = early_processes["lifecycle"]
    probe = Probe("seg_life")
    try:
        assert probe.lifecycle_state() == "unconfigured"
        assert not probe.lifecycle(Transition.TRANSITION_CONFIGURE)  # the weights do not exist
        assert probe.lifecycle_state() == "unconfigured"
        error = probe.wait_diagnostics(lambda v: v["_level"] == DiagnosticStatus.ERROR)
        assert "configure failed" in error["_message"] and "life.safetensors" in error["_message"]
        # Unconfigured, even model parameters may change; configure reads them.
        assert probe.set_parameter("weights", "") == (True, "")
        assert probe.lifecycle(Transition.TRANSITION_CONFIGURE)
        assert probe.lifecycle_state() == "inactive"
        inactive = probe.wait_diagnostics(lambda v: v["state"] == "inactive")
        assert inactive["model"] == "deeplab" and inactive["_level"] == DiagnosticStatus.OK
        assert probe.publisher.get_subscription_count() == 0  # inactive: nothing subscribed
        image = scene(*FRAME_SIZE, seed=13)
        for _ in range(2):  # activate, serve, deactivate; twice, with the model kept in between
            assert probe.lifecycle(Transition.TRANSITION_ACTIVATE)
            assert probe.lifecycle_state() == "active"
            probe.wait_for_subscription(True)
            msg = image_msg(image, "rgb8", next_stamp(), frame_id="life")
            _check_compact_outputs(probe.send(msg), image, msg.header)
            assert probe.lifecycle(Transition.TRANSITION_DEACTIVATE)
            assert probe.lifecycle_state() == "inactive"
            probe.wait_for_subscription(False)
        assert probe.lifecycle(Transition.TRANSITION_CLEANUP)
        assert probe.lifecycle_state() == "unconfigured"
        freed = probe.wait_diagnostics(lambda v: v["state"] == "unconfigured")
        assert "model" not in freed
    finally:
        probe.close()
        assert process.stop() == 0, process.log()
