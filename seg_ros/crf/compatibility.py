"""Label compatibility μ(l, l'): how much a neighbour's label l' argues against label l.

The post-hoc CRF uses Potts (μ = 1 - I), for which the mean-field update is
just log prior + messages (the per-pixel constant Σ messages cancels in the
softmax); CRF-as-RNN learns a full C×C matrix, initialised to Potts.
"""

from __future__ import annotations

import torch


def potts_compatibility(num_classes: int) -> torch.Tensor:
    """μ = 1 - I: any two different labels cost the same, equal labels nothing."""
    return 1.0 - torch.eye(num_classes)


def mean_field_update(log_prior, messages, compatibility=None, class_dim: int = 0):
    """Return the mean-field logits log prior - μ · messages; ``None`` is Potts (fast path)."""
    if compatibility is None:
        return log_prior + messages
    if class_dim == 0:  # C × pixels
        return log_prior - compatibility @ messages
    # N × C × H × W: a 1x1 convolution with μ as weights (ONNX Conv, TensorRT takes it).
    return log_prior - torch.nn.functional.conv2d(messages, compatibility[:, :, None, None])
