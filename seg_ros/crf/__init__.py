"""Dense CRF refinement: the post-hoc CRF and the trainable CRF-as-RNN layer, one set of operators.

- ``posthoc``: ``dense_crf`` / ``dense_crf_tensor`` (numpy/torch in, refined probabilities out).
- ``layer``: ``CrfRnn`` / ``CrfRnnNetwork`` (torch modules, trainable, exportable to ONNX).
- Shared operators: ``lattice`` (permutohedral bilateral filter), ``gaussian`` (separable blur),
  ``window`` (truncated-window kernels), ``compatibility`` (Potts or learned μ), ``meanfield``
  (the update loop), ``grid`` (the coarse message-passing grid of the post-hoc CRF).
"""

from seg_ros.crf.grid import area_mean, auto_downsample
from seg_ros.crf.posthoc import (
    DEFAULT_ITERATIONS,
    DEFAULT_KERNELS,
    KERNELS,
    build_operators,
    dense_crf,
    dense_crf_tensor,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_KERNELS",
    "KERNELS",
    "area_mean",
    "auto_downsample",
    "build_operators",
    "dense_crf",
    "dense_crf_tensor",
]
