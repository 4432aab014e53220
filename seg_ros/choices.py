"""The names every entry point accepts: model family, backend, precision, device.

The node's parameters, the CLI flags and the backends all read these, so a
new backend or family is added in one place. Families are the model zoo's own
list (seg_ros.models.zoo), re-exported here.
"""

from __future__ import annotations

from seg_ros.models.zoo import FAMILIES

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
# torch: cpu|cuda; onnxruntime: its execution provider cpu|cuda|tensorrt.
DEVICES = ("cpu", "cuda", "tensorrt")

__all__ = ["BACKENDS", "DEVICES", "FAMILIES", "PRECISIONS"]
