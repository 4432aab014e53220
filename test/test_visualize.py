"""Colour legend: every class gets its own row with its exact colour."""

from __future__ import annotations

import numpy as np

from seg_ros.classes import load_class_table
from seg_ros.visualize import legend_image


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
