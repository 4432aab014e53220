"""Dataset readers, splits by drive, augmentation and class balancing.

On generated files and (when present) real CamVid.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg_ros.sizes import format_size, parse_size
from seg_ros.datasets import (
    HELD_OUT_DRIVE,
    IGNORE,
    Augmentation,
    SegmentationDataset,
    augment_pair,
    camvid_pairs,
    cityscapes_pairs,
    dataset_pairs,
    drive_of,
    folder_pairs,
    median_frequency_weights,
    paste_objects,
    photometric,
    read_label,
    seen_in_training,
    split_pairs,
)

# Distinct colours per class: an image "says" its label, so alignment survives augmentation checks.
COLOURS = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], np.uint8)


def _scene(height=48, width=64, seed=0):
    """Make a label map of blocks of classes 0..3 and the matching colour image."""
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
        # Away from block edges (bilinear image, nearest label) a pixel has its class's colour.
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


def test_sizes_read_and_write_height_by_width():
    assert format_size(*parse_size("360x480")) == "360x480"
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


def _drive_layout(root, counts):
    """CamVid layout whose file names carry drives, like CamVid's (0006R0_f01800.png)."""
    image, label = _scene(16, 16)
    for split, drives in counts.items():
        for drive, count in drives.items():
            for i in range(count):
                name = f"{drive}_{i:05d}.png"
                _write(root / split / name, image)
                _write(root / f"{split}annot" / name, label)


def test_splits_by_drive_on_generated_names(tmp_path):
    _drive_layout(
        tmp_path,
        {"train": {"0001TP": 3, "0006R0": 4, "0016E5": 5}, "val": {"0016E5": 2}},
    )
    names = lambda pairs: sorted(p[0].name for p in pairs)  # noqa: E731
    everything = names(camvid_pairs(tmp_path, "train") + camvid_pairs(tmp_path, "val"))
    train, val = split_pairs("camvid", tmp_path, "new-drive")
    assert {drive_of(p[0]) for p in val} == {HELD_OUT_DRIVE} and len(val) == 4
    assert HELD_OUT_DRIVE not in {drive_of(p[0]) for p in train}
    assert {p[0].parent.name for p in train} == {"train", "val"}  # val's frames train here
    assert sorted(names(train) + names(val)) == everything
    train, val = split_pairs("camvid", tmp_path, "all")
    assert names(train) == everything and val == []
    train, val = split_pairs("camvid", tmp_path, "val")
    assert names(val) == names(camvid_pairs(tmp_path, "val"))
    assert names(train) == names(camvid_pairs(tmp_path, "train"))
    assert drive_of(tmp_path / "train" / "0016E5_00001.png") == "0016E5"
    with pytest.raises(ValueError, match="unknown split"):
        split_pairs("camvid", tmp_path, "test")
    with pytest.raises(ValueError, match="CamVid"):
        split_pairs("folders", tmp_path, "new-drive")


def test_seen_in_training_names_frames_a_recipe_trained_on(tmp_path):
    _drive_layout(
        tmp_path,
        {"train": {"0001TP": 3, "0006R0": 4, "0016E5": 5}, "val": {"0016E5": 2}},
    )
    held_out = [image for image, _ in split_pairs("camvid", tmp_path, "new-drive")[1]]
    val = [image for image, _ in split_pairs("camvid", tmp_path, "val")[1]]
    recipe = lambda split: {"dataset": "camvid", "split": split}  # noqa: E731
    assert seen_in_training(recipe("new-drive"), "camvid", tmp_path, held_out) == (0, "")
    seen, line = seen_in_training(recipe("new-drive"), "camvid", tmp_path, val)
    assert seen == 2 and "2 of 2" in line and "`new-drive`" in line  # val trains new-drive runs
    seen, line = seen_in_training(recipe("all"), "camvid", tmp_path, held_out)
    assert seen == 4 and "not a held-out figure" in line
    # Weights from before splits existed trained on train/, which holds drive 0006R0.
    assert seen_in_training({"dataset": "camvid"}, "camvid", tmp_path, held_out)[0] == 4
    assert seen_in_training({"dataset": "camvid"}, "camvid", tmp_path, val)[0] == 0
    other_data = {"dataset": "cityscapes", "split": "all"}
    assert seen_in_training(other_data, "camvid", tmp_path, val)[0] == 0
    assert seen_in_training({}, "camvid", tmp_path, held_out) == (0, "")


def test_new_drive_split_needs_the_held_out_drive(tmp_path):
    _drive_layout(tmp_path, {"train": {"0001TP": 2}, "val": {"0016E5": 1}})
    with pytest.raises(ValueError, match=HELD_OUT_DRIVE):
        split_pairs("camvid", tmp_path, "new-drive")


def test_real_camvid_splits_by_drive(camvid):
    train, val = split_pairs("camvid", camvid, "new-drive")
    assert (len(train), len(val)) == (367, 101)
    assert {drive_of(p[0]) for p in val} == {"0006R0"}
    assert {drive_of(p[0]) for p in train} == {"0001TP", "0016E5"}
    assert len(split_pairs("camvid", camvid, "all")[0]) == 468
    train, val = split_pairs("camvid", camvid, "val")
    assert {drive_of(p[0]) for p in val} == {"0016E5"}  # the drive 204 training frames come from


PHOTOMETRIC = dict(jitter=0.4, gamma=0.5, hue=20.0, blur=1.0, noise=8.0)


def test_scale_and_photometric_augmentation_keep_image_and_label_aligned():
    image, label = _scene(96, 128)
    for seed in range(12):
        geometric = Augmentation(crop=(72, 96), scale_range=(0.5, 2.0), jitter=0.0)
        full = Augmentation(crop=(72, 96), scale_range=(0.5, 2.0), **PHOTOMETRIC)
        plain_image, plain_label = augment_pair(
            image, label, (96, 128), geometric, np.random.default_rng(seed)
        )
        out_image, out_label = augment_pair(
            image, label, (96, 128), full, np.random.default_rng(seed)
        )
        # The photometric part draws after the geometry: the same crop, whatever the colours.
        assert np.array_equal(out_label, plain_label) and out_image.shape == (72, 96, 3)
        assert out_image.dtype == np.uint8 and not np.array_equal(out_image, plain_image)
        # Each pixel is still nearest to its own class's mean colour in the changed image.
        valid = out_label != IGNORE
        classes = [c for c in range(4) if (out_label == c).sum() > 50]
        means = np.stack([out_image[out_label == c].mean(0) for c in classes])
        distance = np.linalg.norm(out_image[..., None, :].astype(float) - means, axis=-1)
        nearest = np.array(classes)[distance.argmin(-1)]
        assert (nearest[valid] == out_label[valid]).mean() > 0.8, seed


def test_copy_paste_moves_a_donors_rare_pixels_with_their_labels():
    image, label = _scene(48, 64, seed=1)
    donor_image, donor_label = _scene(48, 64, seed=2)
    donor_label = np.where(donor_label == 3, 3, 0).astype(np.uint8)  # only class 3 to paste
    before = image.copy(), label.copy()
    out_image, out_label = paste_objects(image, label, donor_image, donor_label, np.array([3]))
    pasted = donor_label == 3
    assert pasted.any() and np.array_equal(out_label[pasted], donor_label[pasted])
    assert np.array_equal(out_image[pasted], donor_image[pasted])
    assert np.array_equal(out_image[~pasted], image[~pasted])
    assert np.array_equal(out_label[~pasted], label[~pasted])
    assert np.array_equal(image, before[0]) and np.array_equal(label, before[1])  # copies
    mirrored = paste_objects(image, label, donor_image, donor_label, np.array([3]), flip=True)[1]
    assert np.array_equal(mirrored == 3, (label == 3) | pasted[:, ::-1])
    # A donor of another size is scaled to the image first.
    big = paste_objects(
        image,
        label,
        cv2.resize(donor_image, (128, 96)),
        cv2.resize(donor_label, (128, 96), interpolation=cv2.INTER_NEAREST),
        np.array([3]),
    )[1]
    assert np.array_equal(big, out_label)


def test_copy_paste_in_training_pastes_only_rare_classes_from_images_that_hold_them(tmp_path):
    """Class 3 is in one image only: it is the rare class and that image the only donor.

    With copy-paste on, every other training image gets that image's class-3 pixels.
    """
    pairs = []
    for i in range(4):
        label = np.repeat(np.array([0] * 18 + [1] * 15 + [2] * 15, np.uint8)[:, None], 64, 1)
        if i == 2:
            label[0:16, 16:32] = 3
        image = COLOURS[label]
        pairs.append((tmp_path / f"{i}.png", tmp_path / f"{i}_L.png"))
        cv2.imwrite(str(pairs[-1][0]), image[..., ::-1])
        cv2.imwrite(str(pairs[-1][1]), label)

    def dataset(copy_paste):
        aug = Augmentation(
            crop=(48, 64), scale_range=(1, 1), flip=False, jitter=0.0, copy_paste=copy_paste
        )
        return SegmentationDataset(
            pairs, num_classes=4, ignore_index=IGNORE, size=(48, 64), augment=aug
        )

    rare, donors = dataset(1.0).paste_donors()
    assert list(rare) == [3] and donors == [2]
    for index in (0, 1, 3):
        out_image, out_label = dataset(1.0)[index]
        assert (out_label == 3).sum() == 16 * 16
        assert (dataset(0.0)[index][1] == 3).sum() == 0
    assert (dataset(1.0)[2][1] == 3).sum() == 16 * 16  # the donor itself gets nothing more


def test_each_photometric_change_alone():
    image, label = _scene()
    image = np.clip(image.astype(int) // 2 + 60, 0, 255).astype(np.uint8)  # room to move
    for key, value in PHOTOMETRIC.items():
        settings = dict.fromkeys(PHOTOMETRIC, 0.0) | {key: value}
        aug = Augmentation(crop=image.shape[:2], scale_range=(1, 1), flip=False, **settings)
        changed = [
            not np.array_equal(photometric(image, aug, np.random.default_rng(s)), image)
            for s in range(4)
        ]
        assert any(changed), key
    off = Augmentation(crop=image.shape[:2], **dict.fromkeys(PHOTOMETRIC, 0.0))
    assert photometric(image, off, np.random.default_rng(0)) is image
    grey = np.full((8, 8, 3), 128, np.uint8)  # hue leaves grey grey
    hue = Augmentation(crop=(8, 8), **(dict.fromkeys(PHOTOMETRIC, 0.0) | {"hue": 90.0}))
    assert np.abs(photometric(grey, hue, np.random.default_rng(0)).astype(int) - 128).max() <= 1
