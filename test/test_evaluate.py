"""Offline evaluation over real rosbag2 files written with rosbags, and over folders.

The scenes are built so the right answer is known: the ground truth is a
block pattern of classes, the image's red channel is 40 × class, and
``RedChannelPipeline`` reads the class back from it; frames where the image is
deliberately edited give a known number of wrong pixels.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_ros.evaluation.bag_writer import OutputBagWriter
from seg_ros.evaluation.metrics import ConfusionMatrix, Evaluation
from seg_ros.evaluation.offline import evaluate_frames
from seg_ros.evaluation.sources import BagSource, FolderSource, stamp_key
from seg_ros.image_codec import encode_fields
from seg_ros.pipeline import SegmentationResult

H, W = 48, 64
NUM_CLASSES = 3
IGNORE = 11
NAMES = ["a", "b", "c"]


def scene(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (image RGB, ground truth) for frame ``index``.

    Three vertical bands, a void strip at the bottom.
    """
    label = np.zeros((H, W), np.uint8)
    label[:, W // 3 : 2 * W // 3] = 1
    label[:, 2 * W // 3 :] = 2
    label = np.roll(label, index, axis=1)
    label[-4:, :] = IGNORE
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = np.where(label == IGNORE, 0, label * 40)
    image[..., 1] = 90
    return image, label


class RedChannelPipeline:
    """Stands in for the network: class = red // 40.

    So it is right wherever the image says the truth.
    """

    def process(self, image, want_probabilities=False):
        label = (image[..., 0] // 40).astype(np.uint8)
        return SegmentationResult(
            label,
            np.ones(label.shape, np.float32),
            None,
            {"preprocess": 1.0, "inference": 2.0, "postprocess": 0.5},
        )


WRONG_PIXELS = 10 * 5  # frame 2: a 10×5 patch of class-0 ground truth painted as class 1


def write_bag(path, *, storage="sqlite3", compressed=False, frames=6, labelled=True):
    """Write a bag like a labelled drive: images (+ labels by stamp) and an unrelated topic.

    Frames 0..frames-1 have labels, except: frame 3 has none, frame 4's label
    is the wrong size. Frame 2's image is edited (WRONG_PIXELS wrong). One
    extra label has no image. Labels are recorded 2.5 frames late, so
    matching must use stamps, not order. ``labelled=False``: the label topic
    exists but holds no message.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image = ts.types["sensor_msgs/msg/Image"]
    Compressed = ts.types["sensor_msgs/msg/CompressedImage"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    String = ts.types["std_msgs/msg/String"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    expected = ConfusionMatrix(NUM_CLASSES, IGNORE)
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        if compressed:
            image_conn = writer.add_connection(
                "/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=ts
            )
        else:
            image_conn = writer.add_connection(
                "/cam/image_raw", "sensor_msgs/msg/Image", typestore=ts
            )
        label_conn = writer.add_connection("/cam/labels", "sensor_msgs/msg/Image", typestore=ts)
        other_conn = writer.add_connection("/notes", "std_msgs/msg/String", typestore=ts)
        labels = []
        for i in range(frames):
            t = 1_000_000_000 + i * 100_000_000
            header = Header(stamp=Time(sec=100 + i, nanosec=5 * i), frame_id="camera")
            image, label = scene(i)
            if i == 2:
                image[5:10, 10:20, 0] = 40
            if compressed:
                ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                msg = Compressed(header=header, format="png", data=png.reshape(-1))
                writer.write(
                    image_conn, t, ts.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
                )
            else:
                msg = Image(header=header, **encode_fields(image, "rgb8"))
                writer.write(image_conn, t, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            writer.write(
                other_conn,
                t + 1,
                ts.serialize_cdr(String(data=f"frame {i}"), "std_msgs/msg/String"),
            )
            if i == 3:
                continue
            if i == 4:
                label = label[:-2]
            else:
                expected.update(label, (image[..., 0] // 40).astype(np.uint8))
            labels.append((t, Image(header=header, **encode_fields(label, "mono8"))))
        orphan = Image(
            header=Header(stamp=Time(sec=999, nanosec=0), frame_id="camera"),
            **encode_fields(scene(0)[1], "mono8"),
        )
        labels.append((labels[-1][0], orphan))
        for t, msg in labels if labelled else ():
            writer.write(
                label_conn, t + 250_000_000, ts.serialize_cdr(msg, "sensor_msgs/msg/Image")
            )
    return expected


@pytest.fixture
def bag(tmp_path):
    path = tmp_path / "drive"
    expected = write_bag(path)
    return path, expected


def test_expected_counts_are_what_the_scene_says(bag):
    _, expected = bag
    # 4 scored frames of 44×64 valid pixels; 50 of them wrong (class 0 predicted as 1)
    assert expected.counts.sum() == 4 * (H - 4) * W
    assert expected.counts[0, 1] == WRONG_PIXELS
    assert np.trace(expected.counts) == 4 * (H - 4) * W - WRONG_PIXELS


def test_bag_source_matches_by_stamp_and_reports_bad_frames(bag):
    path, expected = bag
    source = BagSource(path, "/cam/image_raw", "/cam/labels")
    assert len(source) == 6
    evaluation = Evaluation(NAMES, IGNORE)
    result = evaluate_frames(
        RedChannelPipeline(), source, evaluation, total=len(source), progress=False
    )
    assert evaluation.confusion.counts.tolist() == expected.counts.tolist()
    out = evaluation.to_dict()
    assert out["frames"] == {
        "used": 4,
        "skipped": {"label_without_image": 1, "no_ground_truth": 1, "size_mismatch": 1},
        "total": 7,
    }
    assert out["pixel_accuracy"] == pytest.approx(1 - WRONG_PIXELS / (4 * (H - 4) * W))
    # class 0 loses 50 pixels to class 1: IoU_0 = (n0 - 50) / n0, IoU_1 = n1 / (n1 + 50)
    n0, n1 = expected.counts[0].sum(), expected.counts[1].sum()
    assert out["per_class_iou"]["a"] == pytest.approx((n0 - 50) / n0)
    assert out["per_class_iou"]["b"] == pytest.approx(n1 / (n1 + 50))
    assert out["per_class_iou"]["c"] == 1.0
    assert out["latency_ms"]["inference"]["p50"] == 2.0
    assert result.worst[0].key == stamp_key(102, 10)  # the edited frame is the worst


def test_compressed_mcap_bag_and_topic_fallback(tmp_path):
    path = tmp_path / "drive_mcap"
    expected = write_bag(path, storage="mcap", compressed=True)
    source = BagSource(
        path, "/cam/image_raw", "/cam/labels"
    )  # image_transport's /compressed found
    assert source.image_topic == "/cam/image_raw/compressed"
    evaluation = Evaluation(NAMES, IGNORE)
    evaluate_frames(RedChannelPipeline(), source, evaluation, progress=False)
    assert evaluation.confusion.counts.tolist() == expected.counts.tolist()


def test_missing_topics_and_files_have_clear_messages(bag, tmp_path):
    path, _ = bag
    with pytest.raises(
        ValueError,
        match="no ground-truth label topic /nope; its image topics are: "
        "/cam/image_raw, /cam/labels",
    ):
        BagSource(path, "/cam/image_raw", "/nope")
    with pytest.raises(ValueError, match="/notes in .* carries std_msgs/msg/String"):
        BagSource(path, "/notes", "/cam/labels")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BagSource(tmp_path / "absent", "/a", "/b")
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(b"not a bag")
    with pytest.raises(ValueError, match="cannot read bag"):
        BagSource(broken, "/a", "/b")


def test_small_buffer_pushes_out_unmatched_frames(bag):
    path, _ = bag
    # labels come 2.5 frames late: with room for 2 pending entries per topic, images 0-3 are
    # pushed out before their labels arrive, and labels 0-2 wait in vain; only 4 (wrong size)
    # and 5 meet
    evaluation = Evaluation(NAMES, IGNORE)
    evaluate_frames(
        RedChannelPipeline(),
        BagSource(path, "/cam/image_raw", "/cam/labels", max_pending=2),
        evaluation,
        progress=False,
    )
    assert evaluation.to_dict()["frames"] == {
        "used": 1,
        "skipped": {"label_without_image": 4, "no_ground_truth": 4, "size_mismatch": 1},
        "total": 10,
    }


def test_output_bag_copies_everything_and_adds_outputs(bag, tmp_path):
    from rosbags.highlevel import AnyReader

    path, _ = bag
    source = BagSource(path, "/cam/image_raw", "/cam/labels")
    out = tmp_path / "out_bag"
    palette = np.zeros((256, 3), np.uint8)
    palette[:3] = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    with OutputBagWriter(
        out, source.reader.connections, namespace="seg", storage="mcap"
    ) as writer:
        source.on_message = writer.copy
        evaluate_frames(
            RedChannelPipeline(),
            source,
            Evaluation(NAMES, IGNORE),
            output_bag=writer,
            palette=palette,
            progress=False,
        )
    assert list(out.glob("*.mcap"))
    with AnyReader([out]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {
            "/cam/image_raw": 6,
            "/cam/labels": 6,
            "/notes": 6,
            "/seg/label": 6,
            "/seg/confidence": 6,
            "/seg/overlay": 6,
        }
        labels = {}
        for conn, _, raw in reader.messages(
            [c for c in reader.connections if c.topic.startswith("/seg/")]
        ):
            msg = reader.deserialize(raw, conn.msgtype)
            assert msg.header.frame_id == "camera" and (msg.height, msg.width) == (H, W)
            if conn.topic == "/seg/label":
                assert msg.encoding == "mono8"
                labels[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg.data.reshape(H, W)
            elif conn.topic == "/seg/confidence":
                assert msg.encoding == "32FC1" and msg.step == 4 * W
            else:
                assert msg.encoding == "rgb8"
    image, _ = scene(5)
    assert np.array_equal(labels[(105, 25)], image[..., 0] // 40)
    with pytest.raises(ValueError, match="exists already"):
        OutputBagWriter(out, [])


def test_folder_source_with_missing_and_mismatched_labels(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    expected = ConfusionMatrix(NUM_CLASSES, IGNORE)
    for i in range(4):
        image, label = scene(i)
        cv2.imwrite(str(images / f"f{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if i == 1:
            continue  # no label
        if i == 2:
            label = label[:, :-1]
        else:
            expected.update(label, label)
        cv2.imwrite(str(labels / f"f{i}.png"), label)
    (images / "f9.png").write_bytes(b"broken")
    evaluation = Evaluation(NAMES, IGNORE)
    source = FolderSource(images, labels)
    assert len(source) == 5
    result = evaluate_frames(
        RedChannelPipeline(),
        source,
        evaluation,
        save_predictions=tmp_path / "pred",
        progress=False,
    )
    assert evaluation.confusion.counts.tolist() == expected.counts.tolist()
    assert evaluation.to_dict()["frames"]["skipped"] == {
        "no_ground_truth": 1,
        "size_mismatch": 1,
        "undecodable_image": 1,
    }
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "f0.png",
        "f1.png",
        "f2.png",
        "f3.png",
    ]
    assert len(result.frame_totals_ms) == 4
    with pytest.raises(FileNotFoundError, match="labels folder"):
        FolderSource(images, tmp_path / "nowhere")


def test_report_files(bag, tmp_path):
    from seg_ros.evaluation.report import write_report

    path, _ = bag
    evaluation = Evaluation(NAMES, IGNORE)
    result = evaluate_frames(
        RedChannelPipeline(),
        BagSource(path, "/cam/image_raw", "/cam/labels"),
        evaluation,
        progress=False,
    )
    palette = np.zeros((256, 3), np.uint8)
    report = write_report(
        tmp_path / "report",
        evaluation.to_dict(),
        normalized_confusion=evaluation.confusion.normalized(),
        worst=result.worst,
        frame_totals_ms=result.frame_totals_ms,
        palette=palette,
    )
    text = report.read_text()
    assert "| mIoU |" in text and "size_mismatch: 1" in text
    for name in ("confusion_matrix.png", "per_class_iou.png", "latency.png", "worst_frames.png"):
        assert cv2.imread(str(tmp_path / "report" / name)) is not None, name
        assert f"]({name})" in text
    json.dumps(evaluation.to_dict())


@functools.cache
def fitted_tiny_segnet(folder: str) -> Path:
    """Save a SegNet-Basic whose 1×1 classifier is fitted to the scenes (the rest random, seeded).

    Its predictions are imperfect but follow the image; saved once per test
    session, so every process (CLI, node) loads the very same network.
    """
    torch = pytest.importorskip("torch")
    from seg_ros.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    module = build_model("segnet", NUM_CLASSES, backbone="basic").eval()
    spec = ModelSpec(
        name="test-segnet-basic",
        family="segnet",
        options={"backbone": "basic"},
        num_classes=NUM_CLASSES,
        class_table="",
        input_height=H,
        input_width=W,
    )
    scenes = [scene(i) for i in range(6)]
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    images = (
        torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float() / 255 - mean
    ) / std
    labels = torch.from_numpy(np.stack([s[1] for s in scenes]).astype(np.int64))
    classifier = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    features = {}
    hook = classifier.register_forward_hook(
        lambda mod, inputs, output: features.update(x=inputs[0])
    )
    with torch.no_grad():
        module(images)
    hook.remove()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(
            classifier(features["x"]), labels, ignore_index=IGNORE
        ).backward()
        optimizer.step()
    path = Path(folder) / "tiny.safetensors"
    save_checkpoint(path, module, spec)
    return path


def run_cli(argv: list[str]) -> int:
    """`seg_ros evaluate ...` through its own parser and run function."""
    import argparse

    from seg_ros.commands import evaluate

    parser = argparse.ArgumentParser(prog="seg_ros")
    evaluate.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


@pytest.mark.slow
def test_cli_end_to_end_on_a_bag(tmp_path, tiny_weights):
    from rosbags.highlevel import AnyReader

    bag = tmp_path / "drive"
    write_bag(bag)
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                "--bag",
                str(bag),
                "--image-topic",
                "/cam/image_raw",
                "--label-topic",
                "/cam/labels",
                "--weights",
                str(tiny_weights),
                "--backend",
                "onnxruntime",
                "--threads",
                "1",
                "--ignore-index",
                str(IGNORE),
                "--json",
                str(out / "m.json"),
                "--report",
                str(out / "report"),
                "--save-predictions",
                str(out / "pred"),
                "--output-bag",
                str(out / "bag"),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((out / "m.json").read_text())
    assert result["frames"] == {
        "used": 4,
        "skipped": {"label_without_image": 1, "no_ground_truth": 1, "size_mismatch": 1},
        "total": 7,
    }
    assert result["backend"].startswith("onnxruntime")
    assert set(result["latency_ms"]) >= {"preprocess", "inference", "postprocess"}
    # every image is segmented and saved under its stamp, also the ones that can not be scored
    names = sorted(p.name for p in (out / "pred").iterdir())
    assert names == [f"{100 + i:010d}_{5 * i:09d}.png" for i in range(6)]
    # the JSON's numbers are those of the saved predictions against the ground truth
    recount = ConfusionMatrix(NUM_CLASSES, IGNORE)
    for i in (0, 1, 2, 5):
        recount.update(scene(i)[1], cv2.imread(str(out / "pred" / names[i]), cv2.IMREAD_UNCHANGED))
    assert result["confusion_matrix"] == recount.counts.tolist()
    assert result["miou"] == pytest.approx(recount.summary()["miou"])
    # the output bag's labels are the saved predictions
    with AnyReader([out / "bag"]) as reader:
        conns = [c for c in reader.connections if c.topic == "/segmentation_node/label"]
        assert sum(c.msgcount for c in conns) == 6
        for conn, _, raw in reader.messages(conns):
            msg = reader.deserialize(raw, conn.msgtype)
            name = f"{msg.header.stamp.sec:010d}_{msg.header.stamp.nanosec:09d}.png"
            assert np.array_equal(
                msg.data.reshape(H, W), cv2.imread(str(out / "pred" / name), cv2.IMREAD_UNCHANGED)
            )
    assert (out / "report" / "report.md").is_file()


def test_cli_bad_input_messages(tmp_path, tiny_weights):
    bag = tmp_path / "drive"
    write_bag(bag)
    common = ["--weights", str(tiny_weights), "--backend", "torch", "--no-progress"]
    with pytest.raises(ValueError, match="needs --image-topic and --label-topic"):
        run_cli(["--bag", str(bag), *common])
    with pytest.raises(ValueError, match="no ground-truth label topic /gt"):
        run_cli(
            ["--bag", str(bag), "--image-topic", "/cam/image_raw", "--label-topic", "/gt", *common]
        )
    # ground truth from another class table (11 is not ignored here): every frame refused,
    # with the reason
    with pytest.raises(RuntimeError, match="no frame could be scored.*invalid_ground_truth"):
        run_cli(
            [
                "--bag",
                str(bag),
                "--image-topic",
                "/cam/image_raw",
                "--label-topic",
                "/cam/labels",
                "--limit",
                "2",
                *common,
            ]
        )
    # a bag without labels: still runs through, counts every frame as skipped, writes the JSON,
    # then fails
    unlabelled = tmp_path / "unlabelled"
    write_bag(unlabelled, labelled=False)
    with pytest.raises(RuntimeError, match="no frame could be scored"):
        run_cli(
            [
                "--bag",
                str(unlabelled),
                "--image-topic",
                "/cam/image_raw",
                "--label-topic",
                "/cam/labels",
                "--json",
                str(tmp_path / "m.json"),
                *common,
            ]
        )
    assert json.loads((tmp_path / "m.json").read_text())["frames"] == {
        "used": 0,
        "skipped": {"no_ground_truth": 6},
        "total": 6,
    }


def test_label_messages_png_mono16_and_bad_ones():
    from types import SimpleNamespace

    from seg_ros.evaluation.sources import decode_label_message
    from seg_ros.image_codec import ImageDecodeError

    _, label = scene(1)
    ok, png = cv2.imencode(".png", label)
    compressed = SimpleNamespace(format="png", data=png.reshape(-1))
    assert np.array_equal(decode_label_message(compressed, compressed=True), label)
    wide = label.astype(np.uint16) * 300
    raw16 = SimpleNamespace(**encode_fields(wide, "mono16"))
    assert np.array_equal(decode_label_message(raw16, compressed=False), wide)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 7
    ok, png = cv2.imencode(".png", colour)
    with pytest.raises(
        ValueError, match="colour image; ground truth must hold one class index per pixel"
    ):
        decode_label_message(SimpleNamespace(format="png", data=png.reshape(-1)), compressed=True)
    with pytest.raises(ImageDecodeError, match="cannot decode compressed label image"):
        decode_label_message(
            SimpleNamespace(format="png", data=np.frombuffer(b"junk", np.uint8)), compressed=True
        )
    with pytest.raises(ValueError, match="rgb8 label image is a colour image"):
        decode_label_message(SimpleNamespace(**encode_fields(colour, "rgb8")), compressed=False)
