"""Element-wise building blocks with their backward passes: RMSNorm, sigmoid, SiLU, the embedding's backward.

Each layer is a pair ``*_forward`` / ``*_backward``; forward returns ``(out, cache)``
where ``cache`` is a NamedTuple of what the backward needs, and never mutates inputs.

Taught in chapter 3 (``chapters/03-manual-backprop-and-gradient-checking.md``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import NORM_EPS   # 1e-6: every RMSNorm of the released model (SPEC §2)


# ----------------------------------------------------------------------------- RMSNorm

class RMSNormCache(NamedTuple):
    x: np.ndarray       # (..., C) input
    rstd: np.ndarray    # (..., 1) 1 / sqrt(mean(x^2) + eps)
    w: np.ndarray       # (C,) gain


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float = NORM_EPS):
    """RMSNorm(x; w) = x / sqrt(mean(x^2, axis=-1) + eps) * w  (no mean subtraction, no bias).

    Shapes: x (..., C), w (C,) -> y (..., C).
    """
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + x.dtype.type(eps))  # (..., 1)
    y = (x * rstd) * w
    return y, RMSNormCache(x, rstd, w)


def rmsnorm_backward(dy: np.ndarray, cache: RMSNormCache):
    """Backward of RMSNorm. Returns (dx, dw).

    With n = x * rstd:  dw = sum over tokens of dy * n;
    dx = rstd * (dn - n * mean(dn * n)),  where dn = dy * w.
    Shapes: dy (..., C) -> dx (..., C), dw (C,).
    """
    x, rstd, w = cache
    n = x * rstd                                               # (..., C)
    dw = np.sum((dy * n).reshape(-1, n.shape[-1]), axis=0)     # (C,)
    dn = dy * w
    dx = rstd * (dn - n * np.mean(dn * n, axis=-1, keepdims=True))
    return dx, dw


# ----------------------------------------------------------------------------- activations

def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + e^-x), computed without overflow for large |x| (and with full relative
    precision for very negative x, where σ is tiny)."""
    e = np.exp(-np.abs(x))                       # in (0, 1]: never overflows
    r = 1.0 / (1.0 + e)
    return np.where(x >= 0, r, e * r)


def sigmoid_backward(dy: np.ndarray, s: np.ndarray) -> np.ndarray:
    """d σ(x) = σ(x) (1 - σ(x)) dx; takes the forward output s = σ(x)."""
    return dy * s * (1.0 - s)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU (swish): silu(x) = x σ(x)."""
    return x * sigmoid(x)


def silu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """d silu(x) = (σ(x) + x σ(x) (1 - σ(x))) dx; takes the forward input x."""
    s = sigmoid(x)
    return dy * (s * (1.0 + x * (1.0 - s)))


# ----------------------------------------------------------------------------- embedding

def embedding_backward(ids: np.ndarray, dh: np.ndarray, V: int) -> np.ndarray:
    """Backward of the lookup h = E[ids]: dE[v] = sum of dh over the positions where ids == v.

    Shapes: ids (B, T) int, dh (B, T, H) -> dE (V, H).
    """
    H = dh.shape[-1]
    dE = np.zeros((V, H), dtype=dh.dtype)
    np.add.at(dE, ids.reshape(-1), dh.reshape(-1, H))        # rows used several times sum
    return dE
