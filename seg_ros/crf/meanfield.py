"""The mean-field loop both CRFs run: T - 1 updates on the coarse grid, the last at full size.

Q <- softmax(log prior - μ · Σ_m w_m K_m Q). The kernels (lattice, separable
blur or windowed), the layout (C × pixels or N × C × H × W) and the
compatibility (Potts or learned) come from the caller; the loop is one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seg_ros.crf.compatibility import mean_field_update


def mean_field(
    coarse_log_prior,
    full_log_prior,
    coarse_messages: Callable,
    full_messages: Callable,
    iterations: int,
    compatibility=None,
    class_dim: int = 0,
):
    """Return the refined logits after ``iterations`` (>= 1) updates (softmax over them is Q).

    coarse_messages(q) and full_messages(q) map a coarse Q to its messages on the coarse grid and
    at full resolution.
    """
    q = torch.softmax(coarse_log_prior, class_dim)
    for _ in range(iterations - 1):
        logits = mean_field_update(coarse_log_prior, coarse_messages(q), compatibility, class_dim)
        q = torch.softmax(logits, class_dim)
    return mean_field_update(full_log_prior, full_messages(q), compatibility, class_dim)
