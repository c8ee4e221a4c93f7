"""Fast twin of ``minimmf/functional.py``'s RMSNorm: one pass per row (``kernels/fused.py``), the same bits."""
from __future__ import annotations

import numpy as np

from .. import functional
from ..config import NORM_EPS
from ..functional import RMSNormCache
from ..kernels import fused


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float = NORM_EPS):
    """functional.rmsnorm_forward. Shapes: x (..., C), w (C,) -> y (..., C)."""
    if not fused.fusable(x, w):
        return functional.rmsnorm_forward(x, w, eps)
    y, rstd = fused.rmsnorm_forward(x, w, eps)               # (N, C), (N, 1)
    return y.reshape(x.shape), RMSNormCache(x, rstd.reshape(*x.shape[:-1], 1), w)


def rmsnorm_backward(dy: np.ndarray, cache: RMSNormCache):
    """functional.rmsnorm_backward. Shapes: dy (..., C) -> dx (..., C), dw (C,)."""
    x, rstd, w = cache
    if not fused.fusable(dy, x, w):
        return functional.rmsnorm_backward(dy, cache)
    dx, dw = fused.rmsnorm_backward(dy, x, rstd, w)
    return dx.reshape(x.shape), dw


def embedding_backward(ids: np.ndarray, dh: np.ndarray, V: int) -> np.ndarray:
    """functional.embedding_backward: a scatter-add loop instead of ``np.add.at`` (the same sums in the same order).

    Shapes: ids (B, T) int, dh (B, T, H) -> dE (V, H).
    """
    if not fused.fusable(dh):
        return functional.embedding_backward(ids, dh, V)
    return fused.embedding_backward(ids, dh, V)
