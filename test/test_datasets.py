"""Dataset readers, augmentation and class balancing, on generated files and (when present) real CamVid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg_ros.datasets import (
    IGNORE,
    Augmentation,
    SegmentationDataset,
    augment_pair,
    camvid_pairs,
    cityscapes_pairs,
    dataset_pairs,
    folder_pairs,
    median_frequency_weights,
    parse_size,
    read_label,
)

# Distinct colours per class, so an image "says" its label and alignment can be checked after augmentation.
COLOURS = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], np.uint8)


def _scene(height=48, width=64, seed=0):
    """A label map of blocks of classes 0..3 and the matching colour image."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, size=(height // 8, width // 8))
    label = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)
    return COLOURS[label], label


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    assert cv2.imwrite(str(path), data)


def test_camvid_layout_and_void_remap(tmp_path):
    image, label = _scene()
    label[0, :] = 11  # CamVid's void
    for name in ("a.png", "b.png"):
        _write(tmp_path / "train" / name, image)
        _write(tmp_path / "trainannot" / name, label)
    pairs = camvid_pairs(tmp_path, "train")
    assert [p[0].name for p in pairs] == ["a.png", "b.png"]
    assert pairs[0][1] == tmp_path / "trainannot" / "a.png"
    read = read_label(pairs[0][1], num_classes=11, ignore_index=11)
    assert (read[0] == IGNORE).all() and np.array_equal(read[1:], label[1:])
    (tmp_path / "trainannot" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        camvid_pairs(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="valannot"):
        camvid_pairs(tmp_path, "val")


def test_cityscapes_layout(tmp_path):
    image, label = _scene()
    label[0, 0] = 200  # neither a train id nor 255: becomes void too
    _write(tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", image)
    _write(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", label)
    pairs = cityscapes_pairs(tmp_path, "train")
    assert len(pairs) == 1 and pairs[0][1].name == "aachen_000000_000019_gtFine_labelTrainIds.png"
    read = read_label(pairs[0][1], num_classes=19, ignore_index=255)
    assert read[0, 0] == IGNORE and read[0, 1] == label[0, 1]
    with pytest.raises(FileNotFoundError):
        cityscapes_pairs(tmp_path, "val")


def test_folders_layout_with_and_without_splits(tmp_path):
    image, label = _scene()
    _write(tmp_path / "flat/images/x.jpg", image)
    _write(tmp_path / "flat/labels/x.png", label)
    assert len(folder_pairs(tmp_path / "flat", "train")) == 1
    with pytest.raises(FileNotFoundError, match="val"):
        folder_pairs(tmp_path / "flat", "val")
    _write(tmp_path / "split/val/images/y.png", image)
    _write(tmp_path / "split/val/labels/y.png", label)
    _write(tmp_path / "split/val/images/z.png", image)
    with pytest.raises(FileNotFoundError, match="z.png"):
        folder_pairs(tmp_path / "split", "val")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        dataset_pairs("voc", tmp_path, "train")


def test_augmentation_keeps_image_and_label_aligned():
    image, label = _scene(96, 128)
    aug = Augmentation(crop=(40, 56), scale_range=(0.75, 1.5), jitter=0.0)
    rng = np.random.default_rng(1)
    for _ in range(20):
        out_image, out_label = augment_pair(image, label, (96, 128), aug, rng)
        assert out_image.shape == (40, 56, 3) and out_label.shape == (40, 56)
        assert set(np.unique(out_label)) <= {0, 1, 2, 3, IGNORE}
        valid = out_label != IGNORE
        # Away from block edges (bilinear image vs nearest label) each pixel has its class's colour.
        distance = np.abs(
            out_image.astype(int) - COLOURS[np.minimum(out_label, 3)].astype(int)
        ).max(-1)
        assert (distance[valid] < 40).mean() > 0.7  # misaligned: ~0.25
    # Scaled below the crop size, the rest is padded with IGNORE.
    small = augment_pair(
        image,
        label,
        (96, 128),
        Augmentation(crop=(40, 56), scale_range=(0.3, 0.3)),
        np.random.default_rng(0),
    )[1]
    assert (small == IGNORE).any()


def test_flip_mirrors_image_and_label_together():
    image, label = _scene()
    aug = Augmentation(crop=image.shape[:2], scale_range=(1, 1), jitter=0.0)
    seen = set()
    for seed in range(8):
        out_image, out_label = augment_pair(
            image, label, image.shape[:2], aug, np.random.default_rng(seed)
        )
        flipped = np.array_equal(out_label, label[:, ::-1])
        assert flipped or np.array_equal(out_label, label)
        assert np.array_equal(out_image, image[:, ::-1] if flipped else image)
        seen.add(flipped)
    assert seen == {True, False}


def test_jitter_changes_colours_but_not_labels():
    image, label = _scene()
    aug = Augmentation(crop=image.shape[:2], scale_range=(1, 1), flip=False, jitter=0.4)
    out_image, out_label = augment_pair(
        image, label, image.shape[:2], aug, np.random.default_rng(3)
    )
    assert np.array_equal(out_label, label)
    assert not np.array_equal(out_image, image)


def test_dataset_tensors_train_and_eval(tmp_path):
    image, label = _scene(48, 64)
    _write(tmp_path / "train/a.png", image)
    _write(tmp_path / "trainannot/a.png", label)
    pairs = camvid_pairs(tmp_path, "train")
    evaluation = SegmentationDataset(pairs, num_classes=11, ignore_index=11, size=(24, 32))
    x, y = evaluation[0]
    assert x.shape == (3, 24, 32) and x.dtype.is_floating_point
    assert y.shape == (48, 64)  # labels stay at their own resolution for honest metrics
    assert abs(float(x.mean())) < 3
    training = SegmentationDataset(
        pairs, num_classes=11, ignore_index=11, size=(48, 64), augment=Augmentation(crop=(16, 16))
    )
    x, y = training[0]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    x2, _ = training[0]
    assert np.array_equal(x.numpy(), x2.numpy())  # same epoch, same index: reproducible
    training.epoch = 1
    assert not np.array_equal(x.numpy(), training[0][0].numpy())


def test_median_frequency_weights_by_hand(tmp_path):
    # Image a: 75 % class 0, 25 % class 1; image b: 100 % class 0; class 2 appears nowhere.
    a = np.zeros((4, 4), np.uint8)
    a[:1] = 1
    b = np.zeros((4, 4), np.uint8)
    for name, label in (("a.png", a), ("b.png", b)):
        _write(tmp_path / "train" / name, np.zeros((4, 4, 3), np.uint8))
        _write(tmp_path / "trainannot" / name, label)
    dataset = SegmentationDataset(
        camvid_pairs(tmp_path, "train"), num_classes=3, ignore_index=11, size=(4, 4)
    )
    weights = median_frequency_weights(dataset)
    f0, f1 = 28 / 32, 4 / 16  # class 1 only counts the pixels of the image it appears in
    median = np.median([f0, f1])
    np.testing.assert_allclose(weights, [median / f0, median / f1, 0.0], rtol=1e-6)


def test_parse_size():
    assert parse_size("360x480") == (360, 480)
    for bad in ("360", "0x480", "axb"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_real_camvid_splits(camvid):
    train, val = camvid_pairs(camvid, "train"), camvid_pairs(camvid, "val")
    assert len(train) == 367 and len(val) == 101
    label = read_label(val[0][1], num_classes=11, ignore_index=11)
    assert label.shape == (360, 480)
    assert set(np.unique(label)) <= set(range(11)) | {IGNORE}
