"""Labelled image sets for training and validation: CamVid, Cityscapes and plain folders.

Each reader returns a list of (image, label) file pairs; `SegmentationDataset`
turns them into normalised tensors with the training augmentation (random
scale, crop, flip, colour jitter) or the evaluation resize. Labels are remapped
so that void / out-of-range pixels are `IGNORE` (255) whatever the source used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from seg_ros.image_sources import IMAGE_SUFFIXES
from seg_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD

IGNORE = 255  # label value the loss and the metrics skip, after remapping


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset kind implies: class count, class table and its void label."""

    kind: str
    num_classes: int
    class_table: str
    ignore_index: int


DATASET_KINDS = {
    "camvid": DatasetInfo("camvid", 11, "camvid", 11),
    "cityscapes": DatasetInfo("cityscapes", 19, "cityscapes", 255),
    "folders": DatasetInfo("folders", 0, "", 255),
}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def camvid_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """Read CamVid's SegNet layout: <root>/<split>/*.png, labels in <root>/<split>annot/."""
    root = Path(root)
    images_dir, labels_dir = root / split, root / f"{split}annot"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"CamVid folder {folder} is missing "
                f"(expected {split}/ and {split}annot/ in {root})"
            )
    pairs = []
    for image in _images_in(images_dir):
        label = labels_dir / image.name
        if not label.is_file():
            raise FileNotFoundError(f"CamVid image {image} has no label file {label}")
        pairs.append((image, label))
    return pairs


def cityscapes_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """Read Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png, gtFine/*_labelTrainIds."""
    root = Path(root)
    images_dir = root / "leftImg8bit" / split
    if not images_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes folder {images_dir} is missing")
    pairs = []
    for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        if not label.is_file():
            raise FileNotFoundError(
                f"Cityscapes image {image} has no {label.name} "
                "(create labelTrainIds with cityscapesscripts)"
            )
        pairs.append((image, label))
    return pairs


def folder_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """Read plain folders: <root>/<split>/images/* and <root>/<split>/labels/<same stem>.png.

    Labels hold a class index per pixel.

    Without split sub-folders, <root>/images and <root>/labels are the training split.
    """
    root = Path(root)
    base = root / split
    if not (base / "images").is_dir():
        if split == "train" and (root / "images").is_dir():
            base = root
        else:
            raise FileNotFoundError(
                f"no {base / 'images'} (expected <data>/<split>/images and .../labels)"
            )
    labels_dir = base / "labels"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"no label folder {labels_dir}")
    labels = {p.stem: p for p in _images_in(labels_dir)}
    pairs = []
    for image in _images_in(base / "images"):
        if image.stem not in labels:
            raise FileNotFoundError(
                f"image {image} has no label in {labels_dir} (same file stem expected)"
            )
        pairs.append((image, labels[image.stem]))
    return pairs


PAIR_READERS = {"camvid": camvid_pairs, "cityscapes": cityscapes_pairs, "folders": folder_pairs}


def dataset_pairs(kind: str, root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """List the (image, label) pairs of a split; ValueError for an unknown kind or empty split."""
    if kind not in PAIR_READERS:
        raise ValueError(f"unknown dataset kind {kind!r}: expected one of {sorted(PAIR_READERS)}")
    pairs = PAIR_READERS[kind](root, split)
    if not pairs:
        raise ValueError(f"the {split} split of {kind} data in {root} holds no images")
    return pairs


HELD_OUT_DRIVE = "0006R0"  # CamVid's new-drive validation: no other split holds a frame of it
SPLITS = {
    "val": "train on train/, validate on val/ (CamVid: val is drive 0016E5, which 204 training "
    "frames also come from, so it measures memory of a drive)",
    "new-drive": f"train on train/ + val/ without drive {HELD_OUT_DRIVE}, validate on "
    f"{HELD_OUT_DRIVE} (CamVid: 367 / 101 frames): predicts a new street",
    "all": "train on train/ + val/ (CamVid: 468 frames), no validation: a fixed schedule, "
    "no selection (the bundled models)",
}


def drive_of(path: str | Path) -> str:
    """Name the CamVid drive of a frame from its file name: 0006R0_f02370.png -> 0006R0."""
    return Path(path).name.split("_", 1)[0]


def split_pairs(kind: str, root: str | Path, split: str) -> tuple[list, list]:
    """Return (training pairs, validation pairs) of a split in SPLITS; no validation for "all"."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(SPLITS)}")
    if split == "new-drive" and kind != "camvid":
        raise ValueError("--split new-drive needs CamVid (its drives come from the file names)")
    train = dataset_pairs(kind, root, "train")
    try:
        val = dataset_pairs(kind, root, "val")
    except (FileNotFoundError, ValueError):
        if split == "new-drive":
            raise
        val = []
    if split == "val":
        return train, val
    pool = train + val
    if split == "all":
        return pool, []
    held = [pair for pair in pool if drive_of(pair[0]) == HELD_OUT_DRIVE]
    if not held:
        raise ValueError(f"no frame of drive {HELD_OUT_DRIVE} in {root}: cannot hold it out")
    return [pair for pair in pool if drive_of(pair[0]) != HELD_OUT_DRIVE], held


def seen_in_training(training: dict, kind: str, root: str | Path, images) -> tuple[int, str]:
    """Count the ``images`` that weights with this recipe trained on (by folder and name); say so.

    ``training`` is a bundled model's recipe (``ModelSpec.metrics["training"]``), matched against
    its split of the same dataset at ``root``. Weights bundled before splits existed trained on
    the train folder, the "val" split's training side. Unknown recipes count nothing. The line
    is empty when no image was seen.
    """
    split = training.get("split") or "val"
    if training.get("dataset") != kind or split not in SPLITS:
        return 0, ""

    def key(image) -> tuple[str, str]:
        return Path(image).parent.name, Path(image).name

    trained = {key(image) for image, _ in split_pairs(kind, root, split)[0]}
    seen = sum(key(image) in trained for image in images)
    if not seen:
        return 0, ""
    return seen, (
        f"{seen} of {len(images)} frames here were in these weights' training data (their "
        f"split `{split}`): not a held-out figure"
    )


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Read a class-index PNG as uint8 H×W, void and out-of-range values set to IGNORE."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f"cannot read label {path}")
    if label.ndim != 2:
        raise ValueError(
            f"label {path} must be a single-channel class-index image, got shape {label.shape}"
        )
    out = label.astype(np.int64)
    out[(out == ignore_index) | (out >= num_classes) | (out < 0)] = IGNORE
    return out.astype(np.uint8)


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: geometric (scale, crop, flip), then photometric (a new camera).

    Scale is relative to the network size. The photometric part imitates
    what changes between drives: exposure (brightness, gamma), contrast,
    white balance (hue, saturation), focus (blur) and sensor noise.
    """

    crop: tuple[int, int]  # (height, width) of the training crop
    scale_range: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    jitter: float = 0.2  # max relative change of brightness, contrast and saturation
    gamma: float = 0.0  # gamma drawn log-uniformly in [1/(1+gamma), 1+gamma]
    hue: float = 0.0  # max hue shift in degrees
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.3-1.5 px)
    noise: float = 0.0  # max standard deviation of Gaussian pixel noise (0-255 scale)
    copy_paste: float = 0.0  # probability of pasting another image's rare-class pixels first


class SegmentationDataset(Dataset):
    """(image, label) pairs -> (3×H×W float32 normalised, H×W int64 with IGNORE for void).

    Training (augment given): the image is scaled to size × s, s uniform in
    scale_range, then cropped (padded with IGNORE where smaller). Evaluation
    (augment None): the image is resized to `size` and the label is kept at
    its own resolution, so metrics are measured against the original pixels.
    Decoded images are kept in memory when `cache` is set (CamVid: ~250 MB).
    """

    def __init__(
        self,
        pairs,
        *,
        num_classes: int,
        ignore_index: int,
        size: tuple[int, int],
        augment: Augmentation | None = None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        cache: bool = True,
        seed: int = 0,
    ):
        self.pairs = list(pairs)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.size = tuple(size)
        self.augment = augment
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.std = np.asarray(std, np.float32) * 255.0
        self.cache = cache
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.seed = seed
        self.epoch = 0  # set by the trainer so augmentation differs per epoch yet is reproducible
        self._paste_donors: tuple[np.ndarray, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode the RGB image and remapped label of one pair (from the cache when enabled)."""
        if index in self._cached:
            return self._cached[index]
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        label = read_label(label_path, self.num_classes, self.ignore_index)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"{image_path} is {image.shape[:2]} but its label {label_path} is {label.shape}"
            )
        if self.cache:
            self._cached[index] = (image, label)
        return image, label

    def preload(self) -> None:
        """Decode every pair now (with a progress bar), so DataLoader workers share the cache."""
        from tqdm import tqdm

        for index in tqdm(range(len(self)), desc="loading images", unit="img", leave=False):
            self.load(index)

    def _normalise(self, image: np.ndarray) -> torch.Tensor:
        array = (image.astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.augment is None:
            height, width = self.size
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            return self._normalise(image), torch.from_numpy(label.astype(np.int64))
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.augment.copy_paste > 0 and rng.random() < self.augment.copy_paste:
            rare, donors = self.paste_donors()
            donors = [d for d in donors if d != index]
            if donors:
                donor_image, donor_label = self.load(donors[int(rng.integers(len(donors)))])
                image, label = paste_objects(
                    image, label, donor_image, donor_label, rare, flip=bool(rng.random() < 0.5)
                )
        image, label = augment_pair(image, label, self.size, self.augment, rng)
        return self._normalise(image), torch.from_numpy(label.astype(np.int64))

    def paste_donors(self) -> tuple[np.ndarray, list[int]]:
        """Find what copy-paste takes objects from: the rare classes and the images with them.

        Rare is a pixel frequency below the median class's, as median-frequency balancing
        measures it; a donor holds at least 64 such pixels.
        """
        if self._paste_donors is None:
            freq, present = class_frequencies(self)
            rare = (
                np.flatnonzero(present & (freq < np.median(freq[present])))
                if present.any()
                else []
            )
            donors = [i for i in range(len(self)) if np.isin(self.load(i)[1], rare).sum() >= 64]
            self._paste_donors = (np.asarray(rare, np.int64), donors)
        return self._paste_donors


def paste_objects(
    image: np.ndarray,
    label: np.ndarray,
    donor_image: np.ndarray,
    donor_label: np.ndarray,
    classes: np.ndarray,
    *,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Copy-paste: the donor's pixels of `classes` (optionally mirrored) over a copy of the pair.

    Rare objects then appear in front of other streets' backgrounds, so the network cannot
    learn them as "whatever stands behind them" on the few drives they occur in.
    """
    height, width = label.shape
    if donor_label.shape != (height, width):
        donor_image = cv2.resize(donor_image, (width, height), interpolation=cv2.INTER_LINEAR)
        donor_label = cv2.resize(donor_label, (width, height), interpolation=cv2.INTER_NEAREST)
    if flip:
        donor_image, donor_label = donor_image[:, ::-1], donor_label[:, ::-1]
    mask = np.isin(donor_label, classes)
    image, label = image.copy(), label.copy()
    image[mask] = donor_image[mask]
    label[mask] = donor_label[mask]
    return image, label


def augment_pair(
    image: np.ndarray,
    label: np.ndarray,
    size: tuple[int, int],
    aug: Augmentation,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale (relative to the network size), crop, horizontal flip, then `photometric`."""
    scale = rng.uniform(*aug.scale_range)
    height, width = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    crop_h, crop_w = aug.crop
    pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE)
    top = int(rng.integers(0, image.shape[0] - crop_h + 1))
    left = int(rng.integers(0, image.shape[1] - crop_w + 1))
    image = image[top : top + crop_h, left : left + crop_w]
    label = label[top : top + crop_h, left : left + crop_w]
    if aug.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image = photometric(image, aug, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def photometric(image: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation, gamma, hue, blur and noise; the geometry is untouched."""
    if not (aug.jitter or aug.gamma or aug.hue or aug.blur or aug.noise):
        return image
    out = image.astype(np.float32)
    if aug.jitter > 0:
        amount = aug.jitter
        out *= rng.uniform(1 - amount, 1 + amount)  # brightness
        mean = out.mean()
        out = (out - mean) * rng.uniform(1 - amount, 1 + amount) + mean  # contrast
        grey = (out @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        out = (out - grey) * rng.uniform(1 - amount, 1 + amount) + grey  # saturation
        np.clip(out, 0, 255, out=out)
    if aug.gamma > 0:
        gamma = math.exp(rng.uniform(-1, 1) * math.log1p(aug.gamma))
        out = 255.0 * (out / 255.0) ** gamma
    if aug.hue > 0:
        hsv = cv2.cvtColor(out / 255.0, cv2.COLOR_RGB2HSV)  # float: hue in degrees
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-aug.hue, aug.hue)) % 360.0
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    if aug.blur > 0 and rng.random() < aug.blur:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.3, 1.5))
    if aug.noise > 0:
        out = out + rng.normal(0.0, rng.uniform(0, aug.noise), out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def class_pixel_counts(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per class: labelled pixels, and total pixels of the images where the class appears."""
    counts = np.zeros(dataset.num_classes, np.int64)
    image_pixels = np.zeros(dataset.num_classes, np.int64)
    for index in range(len(dataset)):
        label = dataset.load(index)[1]
        hist = np.bincount(label.ravel(), minlength=256)[: dataset.num_classes]
        counts += hist
        image_pixels[hist > 0] += label.size
    return counts, image_pixels


def class_frequencies(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per class: pixel frequency over the images holding it (0 where absent), and presence."""
    counts, image_pixels = class_pixel_counts(dataset)
    present = counts > 0
    freq = np.zeros(dataset.num_classes, np.float64)
    freq[present] = counts[present] / image_pixels[present]
    return freq, present


def median_frequency_weights(dataset: SegmentationDataset) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus, used by SegNet): w_c = median(f) / f_c.

    f_c is the pixel frequency of class c over the images that contain it.
    Classes absent from the data get weight 0 (they cannot be learnt anyway).
    """
    freq, present = class_frequencies(dataset)
    if not present.any():
        raise ValueError(
            "the training labels hold no valid class pixels (all void or out of range?)"
        )
    weights = np.zeros(dataset.num_classes, np.float32)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights
