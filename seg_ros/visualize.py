"""Colour masks and overlays for RViz (pure numpy / OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Label image (H×W, uint8/uint16) -> RGB colour mask through a lookup table."""
    return palette[label]


def overlay(image_rgb: np.ndarray, color_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """Blend the colour mask over the camera image: alpha=0 is the image, 1 the mask."""
    if image_rgb.ndim == 2:
        image_rgb = cv2.cvtColor(image_rgb, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(color_rgb, float(alpha), image_rgb, 1.0 - float(alpha), 0.0)
