"""The learning-rate recipe every training loop in minimmf uses (Zhu et al. 2024, §4).

Linear warm-up to a large peak (ternary weights only move when a latent weight crosses a rounding
threshold, so they need a larger step than the 3e-4 of a float Transformer), cosine decay to
``min_lr_ratio`` of the peak, and the rate halved at the midpoint of training:

    lr(step, progress) = lr * min(1, step / warmup_steps)
                            * (min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * progress)) / 2)
                            * (0.5 if halve_lr_midway and progress >= 0.5 else 1)

``step`` counts optimizer steps from 1; ``progress`` is the fraction of the training budget used
before this step: ``(step - 1) / total_steps`` for a step budget (a wall-clock budget may be ahead).
``minimmf train`` (its ``TrainConfig`` has these four fields), ``minimmf demo``, the examples and
``fpga_model``'s tiny model all call this one function.

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    lr: float                        # the peak learning rate
    warmup_steps: int = 0            # linear warm-up from 0 over this many steps
    min_lr_ratio: float = 0.1        # the cosine ends at lr * min_lr_ratio
    halve_lr_midway: bool = True     # the paper's recipe: the rate is halved at the midpoint


def learning_rate(step: int, progress: float, schedule) -> float:
    """The learning rate of optimizer step ``step`` (1-based) at training ``progress`` in [0, 1].

    ``schedule``: a ``Schedule`` or anything with its four fields (``TrainConfig`` has them).
    """
    s = schedule
    warm = min(1.0, step / s.warmup_steps) if s.warmup_steps else 1.0
    cos = s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    half = 0.5 if (s.halve_lr_midway and progress >= 0.5) else 1.0
    return s.lr * warm * cos * half
