"""Fast twin of ``minimmf/loss.py``: softmax and NLL in three passes over the logits, the gradient in one."""
from __future__ import annotations

import numpy as np

from .. import loss
from ..kernels import fused
from ..loss import IGNORE_INDEX, CrossEntropyCache, shift_labels


def cross_entropy_forward(logits: np.ndarray, labels: np.ndarray):
    """loss.cross_entropy_forward. Shapes: logits (B, T, V), labels (B, T) -> loss scalar (+ cache)."""
    if not fused.fusable(logits):
        return loss.cross_entropy_forward(logits, labels)
    target = shift_labels(labels)
    valid = target != IGNORE_INDEX                                         # (B, T)
    count = int(valid.sum())
    if count == 0:
        return loss.cross_entropy_forward(logits, labels)                  # its error message
    probs, nll = fused.cross_entropy_forward(logits, target)
    nll = nll.reshape(target.shape)
    value = float(np.sum(np.where(valid, nll, 0.0), dtype=np.float64) / count)
    return value, CrossEntropyCache(probs.reshape(logits.shape), target, count)


def cross_entropy_backward(cache: CrossEntropyCache) -> np.ndarray:
    """loss.cross_entropy_backward. Shapes: probs (B, T, V) -> dlogits (B, T, V)."""
    probs, target, count = cache
    if not fused.fusable(probs):
        return loss.cross_entropy_backward(cache)
    return fused.cross_entropy_backward(probs, target, count).reshape(probs.shape)
