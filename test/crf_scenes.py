"""A synthetic scene both CRF test modules use: two colour regions and a misplaced soft edge."""

from __future__ import annotations

import numpy as np


def two_regions(height=64, width=96, edge=48, offset=5, seed=0):
    """Make a red | blue image split at column `edge`, and probabilities with a misplaced edge.

    Their soft boundary sits `offset` pixels to the right of it (a network that blurred and
    misplaced the edge), with a third class of noise.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 60, 200)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    columns = np.arange(width, dtype=np.float32)
    right = 1.0 / (1.0 + np.exp(-(columns - edge - offset) / 3.0))  # soft, shifted boundary
    probabilities = np.zeros((3, height, width), np.float32)
    probabilities[0] = 0.8 * (1 - right)
    probabilities[1] = 0.8 * right
    probabilities[2] = 0.2
    probabilities += rng.uniform(0, 0.15, probabilities.shape).astype(np.float32)
    probabilities /= probabilities.sum(0, keepdims=True)
    truth = np.zeros((height, width), np.int64)
    truth[:, edge:] = 1
    return image, probabilities, truth
