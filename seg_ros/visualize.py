"""Colour masks and overlays for RViz (pure numpy / OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize(
    label: np.ndarray, palette: np.ndarray, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Label image (H×W, uint8/uint16) -> RGB colour mask through a lookup table.

    uint8 labels go through OpenCV's one-channel LUT once per colour channel, then one merge:
    2.4 ms at 1080×1920 against 3.9 ms for a three-channel LUT of the grey image and 21 ms for
    numpy fancy indexing (1.3, 1.3 and 3.4 ms at 480×640). Others through ``np.take``.

    ``size`` (H, W): the mask of ``label`` resized there by nearest neighbour, which is the mask
    of the label resized the same way, so a network-size label can be coloured before it is
    enlarged (``SegmentationResult.color_mask`` decides when that is cheaper).
    """
    if label.dtype == palette.dtype == np.uint8 and palette.shape == (256, 3) and label.ndim == 2:
        color = cv2.merge([cv2.LUT(label, np.ascontiguousarray(palette[:, c])) for c in range(3)])
    else:
        color = np.take(palette, label, axis=0)
    if size is not None and tuple(size) != label.shape[:2]:
        color = cv2.resize(color, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return color


def overlay(image_rgb: np.ndarray, color_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """Blend the colour mask over the camera image: alpha=0 is the image, 1 the mask."""
    if image_rgb.ndim == 2:
        image_rgb = cv2.cvtColor(image_rgb, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(color_rgb, float(alpha), image_rgb, 1.0 - float(alpha), 0.0)


def legend_image(names: list[str], colors: np.ndarray, *, row_height: int = 22) -> np.ndarray:
    """Draw an RGB legend: one swatch and class name per row, so colours can be read as classes."""
    width = 28 + 9 * max((len(n) for n in names), default=4) + 12
    legend = np.full((row_height * len(names) + 8, width, 3), 255, np.uint8)
    for index, (name, color) in enumerate(zip(names, colors)):
        top = 4 + index * row_height
        swatch = tuple(int(c) for c in color)
        cv2.rectangle(legend, (6, top + 3), (22, top + row_height - 4), swatch, thickness=-1)
        cv2.rectangle(legend, (6, top + 3), (22, top + row_height - 4), (0, 0, 0), thickness=1)
        cv2.putText(
            legend,
            f"{index} {name}",
            (28, top + row_height - 7),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return legend
