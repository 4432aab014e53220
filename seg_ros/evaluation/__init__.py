"""Accuracy and latency evaluation, offline (bags, folders) and live (evaluator_node).

ROS-free: bags are read and written with the ``rosbags`` library.
"""

from seg_ros.evaluation.metrics import (
    BoundaryF1,
    ConfusionMatrix,
    Evaluation,
    FrameCounter,
    LatencyStats,
)

__all__ = ["BoundaryF1", "ConfusionMatrix", "Evaluation", "FrameCounter", "LatencyStats"]
