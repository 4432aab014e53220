"""Sub-commands of the `seg_ros` CLI (see seg_ros/cli.py)."""
