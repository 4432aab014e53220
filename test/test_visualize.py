"""Colour masks and legend: every label gets exactly its class colour."""

from __future__ import annotations

import cv2
import numpy as np

from seg_ros.classes import load_class_table
from seg_ros.visualize import colorize, legend_image


def test_legend_has_one_swatch_per_class_in_its_colour():
    table = load_class_table("camvid")
    legend = legend_image(list(table.names), table.colors, row_height=22)
    assert legend.dtype == np.uint8 and legend.shape[2] == 3
    assert legend.shape[0] == 22 * table.num_classes + 8
    for index, color in enumerate(table.colors):
        centre = legend[4 + index * 22 + 11, 14]  # middle of the row's swatch
        assert tuple(centre) == tuple(int(c) for c in color), table.names[index]
    # The names are written beside the swatches (dark text on white).
    assert (legend[:, 30:] < 128).any()


def test_colorize_gives_every_pixel_its_palette_colour():
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    label = rng.integers(0, 256, (37, 53), dtype=np.uint8)  # odd sizes, every value
    color = colorize(label, palette)
    assert color.shape == (37, 53, 3) and color.dtype == np.uint8
    np.testing.assert_array_equal(color, palette[label])
    # mono16 labels (over 254 classes) take the general path with a longer palette.
    wide = rng.integers(0, 256, (300, 3), dtype=np.uint8)
    label16 = rng.integers(0, 300, (9, 11), dtype=np.uint16)
    np.testing.assert_array_equal(colorize(label16, wide), wide[label16])


def test_colorize_to_a_size_is_the_mask_of_the_nearest_resized_label():
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    label = rng.integers(0, 11, (36, 48), dtype=np.uint8)
    for size in ((108, 192), (37, 53), (36, 48), (20, 30)):
        resized = cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(colorize(label, palette, size=size), palette[resized])
