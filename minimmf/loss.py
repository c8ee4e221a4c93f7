"""Shifted cross-entropy, as the released model computes it (SPEC §5).

Position t predicts ``labels[t + 1]``: the model shifts the labels itself, so callers pass
``labels = input_ids``. The last position and every label equal to -100 are ignored; the
loss is the mean over the positions that remain.

Taught in chapter 3 (``chapters/03-manual-backprop-and-gradient-checking.md``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = -100


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray    # (B, T, V) softmax of the logits
    target: np.ndarray   # (B, T) shifted labels, IGNORE_INDEX where unscored
    count: int           # number of scored positions


def shift_labels(labels: np.ndarray) -> np.ndarray:
    """target[:, t] = labels[:, t + 1]; the last position gets IGNORE_INDEX."""
    target = np.full_like(labels, IGNORE_INDEX)
    target[:, :-1] = labels[:, 1:]
    return target


def cross_entropy_forward(logits: np.ndarray, labels: np.ndarray):
    """loss = mean over scored t of  logsumexp(logits[t]) - logits[t, labels[t+1]].

    Shapes: logits (B, T, V) float, labels (B, T) int -> loss scalar float.
    """
    target = shift_labels(labels)
    valid = target != IGNORE_INDEX                                # (B, T)
    count = int(valid.sum())
    if count == 0:
        raise ValueError("labels: every position is ignored (-100 or the last position), "
                         "so there is nothing to score; pass at least 2 tokens with real labels")
    z = logits - np.max(logits, axis=-1, keepdims=True)           # (B, T, V)
    e = np.exp(z)
    sum_e = np.sum(e, axis=-1, keepdims=True)
    probs = e / sum_e
    safe = np.where(valid, target, 0)
    picked = np.take_along_axis(z, safe[..., None], axis=-1)[..., 0]   # (B, T)
    nll = np.log(sum_e[..., 0]) - picked
    loss = float(np.sum(np.where(valid, nll, 0.0), dtype=np.float64) / count)
    return loss, CrossEntropyCache(probs, target, count)


def cross_entropy_backward(cache: CrossEntropyCache) -> np.ndarray:
    """dlogits = (softmax(logits) - onehot(target)) / count at scored positions, 0 elsewhere.

    Shapes: probs (B, T, V) -> dlogits (B, T, V).
    """
    probs, target, count = cache
    valid = target != IGNORE_INDEX
    dlogits = probs.copy()
    b, t = np.nonzero(valid)
    dlogits[b, t, target[b, t]] -= 1.0
    dlogits[~valid] = 0.0
    return dlogits / probs.dtype.type(count)
