"""Fast twin of ``minimmf/bitlinear.py``: RMSNorm + int8 codes in one pass per row, the ternary codes in one more.

The readable layer runs ~15 NumPy passes over its input (RMSNorm, absmax, round, clip, casts); here BitLinear's
input side is ``fused.bitlinear_front`` (the same one-row building block the decode step uses), the weight
quantizer is ``fused.weight_quant``, and the product of the two codes is ``kernels/ternary_gemm.py``'s (exact
integer sums: the bits of the layer's float product, in 0.5-0.8 of its time on one thread; chapter 6.9). The
constants are read from the layer modules at every call, so ``bitlinear.BITLINEAR_EPS`` and ``quant.ACT_QMAX``
stay the ones that count.
"""
from __future__ import annotations

import numpy as np

from .. import bitlinear, quant
from ..bitlinear import BitLinearCache, PackedBitLinear
from ..functional import RMSNormCache
from ..kernels import fused
from ..kernels.ternary import as_offset, offset_matmul
from ..kernels.ternary_gemm import ternary_gemm
from ..seam import op


def bitlinear_forward(x: np.ndarray, p):
    """bitlinear.bitlinear_forward. Shapes: x (..., I), p["W"] (O, I), p["g"] (I,) -> y (..., O) (+ cache)."""
    if isinstance(p, PackedBitLinear):
        return bitlinear_packed_forward(x, p), None
    W, g = p["W"], p["g"]
    if not fused.fusable(x, W, g):
        return bitlinear.bitlinear_forward(x, p)
    q_x, x_q, s_x, rstd = fused.bitlinear_front(x, g, bitlinear.BITLINEAR_EPS, quant.ACT_QMAX, quant.ACT_EPS)
    q_w, W_q, s_w = fused.weight_quant(W, quant.WEIGHT_EPS)  # (O, I) codes as floats, (O, I), scalar
    y = ternary_gemm(q_x, q_w, s_x * s_w, quant.ACT_QMAX)    # (q_x @ q_w.T) / (s_x s_w), in exact integer sums
    cache = BitLinearCache(RMSNormCache(x, rstd.reshape(*x.shape[:-1], 1), g), x_q, W_q, x.shape[:-1])
    return y.reshape(*x.shape[:-1], W.shape[0]), cache


def bitlinear_backward(dy: np.ndarray, cache: BitLinearCache):
    """bitlinear.bitlinear_backward (its RMSNorm backward through the seam). Shapes: dy (..., O) -> dx (..., I)."""
    dy2 = dy.reshape(-1, dy.shape[-1])                        # (N, O)
    dn = (dy2 @ cache.W_q).reshape(*cache.lead, -1)           # (..., I)
    dW = dy2.T @ cache.x_q                                    # (O, I)
    dx, dg = op.rmsnorm_backward(dn, cache.norm)
    return dx, {"W": dW, "g": dg}


def bitlinear_packed_forward(x: np.ndarray, pb: PackedBitLinear) -> np.ndarray:
    """bitlinear.bitlinear_packed_forward with the one-pass input side. Shapes: x (..., I) -> y (..., O)."""
    if not fused.fusable(x, pb.g):
        return bitlinear.bitlinear_packed_forward(x, pb)
    q, _, s_x, _ = fused.bitlinear_front(x, pb.g, bitlinear.BITLINEAR_EPS, quant.ACT_QMAX, quant.ACT_EPS)
    acc = offset_matmul(q.astype(np.int8), as_offset(pb.codes))   # (N, O) int32, exact
    y = acc.astype(x.dtype) / (s_x * x.dtype.type(pb.s_w))
    return y.reshape(*x.shape[:-1], pb.out_features)
