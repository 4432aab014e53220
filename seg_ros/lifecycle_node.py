"""The managed (lifecycle) variant of the segmentation node: same name, parameters and topics.

- configure: load the model and build or load the engine;
- activate: create the cameras' topics, start segmenting;
- deactivate: stop segmenting and remove the topics, keep the model;
- cleanup: free the model and its GPU memory.

A failed configure goes back to unconfigured; an error in any transition goes
through ErrorProcessing to unconfigured with everything freed. Either way
/diagnostics says why (level ERROR) until the next successful configure.
Parameters fixed at start-up for the plain node may change while unconfigured.
"""

from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from seg_ros import node_parameters as params
from seg_ros.node import SegmentationCore, run_node

_LOAD_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


class SegmentationLifecycleNode(LifecycleNode):
    def __init__(self, **node_kwargs):
        super().__init__(params.NODE_NAME, **node_kwargs)
        self.core = None  # rclpy's shutdown destroys the node even when the constructor failed
        self.core = SegmentationCore(self)

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self.core.load()
        except _LOAD_ERRORS as exc:
            self.core.error = f"configure failed: {exc}"
            self.get_logger().error(self.core.error)
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _transition(self, name: str, step) -> TransitionCallbackReturn:
        try:
            step()
        except Exception as exc:  # ErrorProcessing frees everything and says why
            self.core.error = f"{name} failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self.core.error)
            return TransitionCallbackReturn.ERROR
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        return self._transition("activate", self.core.start)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        return self._transition("deactivate", self.core.stop)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        return self._transition("cleanup", self.core.unload)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        return self._transition("shutdown", self.core.shutdown)

    def on_error(self, state) -> TransitionCallbackReturn:
        error = self.core.error
        try:
            self.core.shutdown()
        except Exception as exc:
            self.get_logger().error(f"freeing after an error failed too: {exc}")
        self.core.error = error or "error"
        return TransitionCallbackReturn.SUCCESS  # -> unconfigured, ready to configure again

    def destroy_node(self) -> None:
        if self.core is not None:
            self.core.shutdown()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script ``segmentation_lifecycle_node``: 1 only when the parameters are unusable."""
    # The model loads in configure, where failures become a state with a reason, not an exit.
    return run_node(SegmentationLifecycleNode, args, (ValueError,))


if __name__ == "__main__":
    sys.exit(main())
