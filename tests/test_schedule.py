"""Tests for minimmf/schedule.py: the paper's learning-rate recipe, one function for every training loop."""
import math

import pytest

from minimmf.schedule import Schedule, learning_rate


def test_warmup_rises_linearly_to_the_peak():
    """During warm-up the rate is lr * step / warmup_steps (times the cosine factor at that progress)."""
    s = Schedule(lr=1e-2, warmup_steps=10, min_lr_ratio=1.0, halve_lr_midway=False)   # cosine factor held at 1
    assert [learning_rate(k, 0.0, s) for k in (1, 5, 10, 20)] == pytest.approx([1e-3, 5e-3, 1e-2, 1e-2])


def test_cosine_decays_to_min_lr_ratio_of_the_peak():
    """Without warm-up or halving: lr at progress 0, the cosine's midpoint value at 0.5, lr * min_lr_ratio at 1."""
    s = Schedule(lr=4e-3, min_lr_ratio=0.1, halve_lr_midway=False)
    assert learning_rate(1, 0.0, s) == pytest.approx(4e-3)
    assert learning_rate(1, 0.5, s) == pytest.approx(4e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(1, 1.0, s) == pytest.approx(4e-3 * 0.1)
    assert learning_rate(1, 2.0, s) == learning_rate(1, 1.0, s)          # progress past the budget stays at the floor


def test_the_rate_is_halved_at_the_midpoint():
    """The paper's recipe: the rate drops by exactly one half when progress reaches 0.5."""
    s = Schedule(lr=4e-3, min_lr_ratio=0.1)
    just_before, at = learning_rate(100, 0.5 - 1e-12, s), learning_rate(100, 0.5, s)
    assert at == pytest.approx(just_before / 2, rel=1e-9)
    cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75))
    assert learning_rate(100, 0.75, s) == pytest.approx(4e-3 * cos * 0.5)
