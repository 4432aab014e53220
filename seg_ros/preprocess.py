"""Turn a camera image into the network's input batch: resize and normalise.

One definition shared by the pipeline (every frame) and INT8 calibration (so
the calibration sees exactly what inference will see), without either
depending on the other.
"""

from __future__ import annotations

import cv2
import numpy as np

# torchvision's ImageNet statistics, which every bundled backbone was pretrained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessor:
    """RGB (or mono) uint8 image of any size -> 1×3×height×width float32 batch."""

    def __init__(self, height: int, width: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.height, self.width = int(height), int(width)
        # Normalisation folded into one multiply-add on 0..255 pixels.
        std_arr = np.asarray(std, np.float32) * 255.0
        self._scale = (1.0 / std_arr).reshape(1, 1, 3)
        self._offset = (-np.asarray(mean, np.float32) * 255.0 / std_arr).reshape(1, 1, 3)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (network-size RGB uint8 image, 1×3×h×w float32 batch); ValueError if bad."""
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 image, got shape {image.shape} dtype {image.dtype}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError("empty image")
        size = (self.width, self.height)
        small = (
            image
            if image.shape[1::-1] == size
            else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        )
        # Plane by plane into the N×C×H×W layout: 8x faster than broadcasting over H×W×3.
        batch = np.empty((1, 3, self.height, self.width), np.float32)
        for c, plane in enumerate(cv2.split(small)):
            np.multiply(plane, self._scale[0, 0, c], out=batch[0, c], dtype=np.float32)
            batch[0, c] += self._offset[0, 0, c]
        return small, batch
