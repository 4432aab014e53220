"""Exponential moving average of a network's weights: what validation and export use.

Averaging the last few thousand steps smooths out the noise of small
batches; it typically adds a point or two of mIoU over the raw weights.
"""

from __future__ import annotations

import copy

import torch


class ModelEma:
    """ema <- d * ema + (1 - d) * weights after every step, d = min(decay, (1 + n) / (10 + n)).

    The warm-up on d (n = updates so far) keeps the first average from being
    dominated by the random initialisation. Float parameters and buffers
    (BatchNorm statistics) are averaged; integer buffers are copied.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(module).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    def current_decay(self) -> float:
        """Return the decay the next update uses."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Fold the module's current weights into the average."""
        decay = self.current_decay()
        source = module.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(source[name].detach(), alpha=1.0 - decay)
            else:
                value.copy_(source[name])
        self.updates += 1

    def state_dict(self) -> dict:
        """Plain tensors and numbers (weights_only-safe)."""
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore an average saved with `state_dict`."""
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["model"])
