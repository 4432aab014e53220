"""The learning-rate schedule: poly decay over the run's steps (its only definition)."""

from __future__ import annotations


def learning_rate(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """Return base * (1 - step/total)^power, 0 at and after the end.

    A run extended with more epochs recomputes it over the new total, so
    the rate rises again smoothly from where the longer schedule would be.
    """
    if total_steps <= 0:
        return 0.0
    return base_lr * max(0.0, 1.0 - step / total_steps) ** power
