"""seg_ros: semantic segmentation for ROS 2.

Data flows one way: message -> numpy (image_codec) -> pipeline (backend, CRF)
-> numpy -> messages (node). Only ``node``, ``evaluator_node`` and
``image_codec``'s message builders touch ROS.
"""

__version__ = "0.1.0"
