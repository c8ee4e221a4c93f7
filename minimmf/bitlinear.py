"""BitLinear: RMSNorm -> 8-bit activations -> ternary weights, with the STE backward.

SPEC §2. Every projection of the model, the LM head included, is a BitLinear:

    n = RMSNorm(x; g, eps=1e-6)                         # its own learnable gain g
    y = quant_act(n) @ quant_weight(W).T                # no bias
      = (q_x @ q_w.T) / (s_x * s_w)                     # integer form: adds and subtracts only

``q_x @ q_w.T`` is an exact integer (each term is +q_x, 0 or -q_x). Training computes it
with BLAS on integer-valued floats — exact, because every partial sum is an integer far
below 2**24 — and inference computes it with the packed add/sub kernel
(``kernels/ternary.py``). Both give the same bits.

Backward (straight-through estimator: both quantizers act as the identity):

    dn = dy @ W_q          W_q = q_w / s_w   (dequantized ternary weights)
    dW = dy.T @ x_q        x_q = q_x / s_x   (dequantized 8-bit activations)
    dx, dg = RMSNorm backward of dn

Parameters: ``p = {"W": (O, I), "g": (I,)}``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .functional import RMSNormCache, rmsnorm_backward, rmsnorm_forward
from .kernels import fused
from .kernels.ternary import PackedTernary, pack_ternary, ternary_matmul
from . import quant
from .quant import ACT_EPS, ACT_QMAX, WEIGHT_EPS, activation_quant, weight_quant

BITLINEAR_EPS = 1e-6   # fixed: the fused kernel the released model runs ignores the module's eps (SPEC §2)


class BitLinearCache(NamedTuple):
    norm: RMSNormCache   # the RMSNorm in front
    x_q: np.ndarray      # (N, I) dequantized 8-bit activations, flattened over tokens
    W_q: np.ndarray      # (O, I) dequantized ternary weights
    lead: tuple          # leading shape of x, e.g. (B, T)


def bitlinear_forward(x: np.ndarray, p: dict):
    """y = (q_x @ q_w.T) / (s_x s_w) with q_x, s_x = quant_act(RMSNorm(x; g)), q_w, s_w = quant_weight(W).

    Shapes: x (..., I) float, p["W"] (O, I), p["g"] (I,) -> y (..., O).
    ``p`` may also be a ``PackedBitLinear`` (see ``pack_bitlinear``): the same numbers come
    from the packed add/sub kernel, and no cache is kept (inference only).
    """
    if isinstance(p, PackedBitLinear):                       # a packed model: integer inference
        return bitlinear_packed_forward(x, p), None
    W, g = p["W"], p["g"]
    if fused.use_fused(x, W, g) and _library_quantizers():  # same bits, one pass per row instead of ~15
        return _bitlinear_forward_fused(x, W, g)
    n, norm_cache = rmsnorm_forward(x, g, BITLINEAR_EPS)     # (..., I)
    n2 = n.reshape(-1, n.shape[-1])                           # (N, I)
    q_x, s_x = activation_quant(n2)                           # (N, I) int8, (N, 1)
    q_w, s_w = weight_quant(W)                                # (O, I) int8, scalar
    ft = x.dtype.type
    acc = q_x.astype(x.dtype) @ q_w.astype(x.dtype).T         # (N, O) integer-valued, exact
    y = acc / (s_x * s_w)                                     # one rescale per output
    cache = BitLinearCache(norm_cache, q_x.astype(x.dtype) / s_x, q_w.astype(x.dtype) / ft(s_w),
                           x.shape[:-1])
    return y.reshape(*x.shape[:-1], W.shape[0]), cache


def _library_quantizers() -> bool:
    """True unless someone swapped this module's quantizers (the gradient checks' STE surrogate does):
    the fused kernels have quant.py's quantizers built in, so a substitute must run on the reference path."""
    return activation_quant is quant.activation_quant and weight_quant is quant.weight_quant


def _bitlinear_forward_fused(x: np.ndarray, W: np.ndarray, g: np.ndarray):
    """``bitlinear_forward`` on the fused kernels (kernels/fused.py): the same numbers and cache."""
    q_x, x_q, s_x, rstd = fused.bitlinear_front(x, g, BITLINEAR_EPS, ACT_QMAX, ACT_EPS)  # (N, I) x2, (N, 1) x2
    q_w, W_q, s_w = fused.weight_quant(W, WEIGHT_EPS)        # (O, I) codes as floats, (O, I), scalar
    y = q_x @ q_w.T                                          # (N, O) integer-valued, exact
    y /= s_x * s_w
    cache = BitLinearCache(RMSNormCache(x, rstd.reshape(*x.shape[:-1], 1), g), x_q, W_q, x.shape[:-1])
    return y.reshape(*x.shape[:-1], W.shape[0]), cache


def bitlinear_backward(dy: np.ndarray, cache: BitLinearCache):
    """STE backward. Returns (dx, {"W": dW, "g": dg}).

    Shapes: dy (..., O) -> dx (..., I), dW (O, I), dg (I,).
    """
    dy2 = dy.reshape(-1, dy.shape[-1])                        # (N, O)
    dn = (dy2 @ cache.W_q).reshape(*cache.lead, -1)           # (..., I)
    dW = dy2.T @ cache.x_q                                    # (O, I): a real matmul
    dx, dg = rmsnorm_backward(dn, cache.norm)
    return dx, {"W": dW, "g": dg}


# ----------------------------------------------------------------------------- inference path

class PackedBitLinear(NamedTuple):
    """A BitLinear frozen for inference: 2-bit codes, one weight scale, the norm gain."""
    codes: PackedTernary   # (O, I) ternary codes, 4 per byte
    s_w: float             # the matrix's absmean scale
    g: np.ndarray          # (I,) RMSNorm gain

    @property
    def out_features(self) -> int:
        return self.codes.out_features


def pack_bitlinear(p: dict) -> PackedBitLinear:
    """Quantize W once and pack its codes: the float weights are not needed afterwards."""
    q_w, s_w = weight_quant(p["W"])
    return PackedBitLinear(pack_ternary(q_w), float(s_w), p["g"])


def bitlinear_packed_forward(x: np.ndarray, pb: PackedBitLinear) -> np.ndarray:
    """Integer inference: RMSNorm -> int8 codes -> add/sub kernel (int32) -> one rescale.

    Gives the same numbers as ``bitlinear_forward`` without touching float weights.
    Shapes: x (..., I) float -> y (..., O).
    """
    if fused.use_fused(x, pb.g) and _library_quantizers():  # same codes in one pass per row
        q, _, s_x, _ = fused.bitlinear_front(x, pb.g, BITLINEAR_EPS, ACT_QMAX, ACT_EPS)
        q_x = q.astype(np.int8)                               # (N, I) int8, (N, 1)
    else:
        n, _ = rmsnorm_forward(x, pb.g, BITLINEAR_EPS)
        q_x, s_x = activation_quant(n.reshape(-1, n.shape[-1]))   # (N, I) int8, (N, 1)
    acc = ternary_matmul(q_x, pb.codes)                       # (N, O) int32, adds and subtracts only
    y = acc.astype(x.dtype) / (s_x * x.dtype.type(pb.s_w))
    return y.reshape(*x.shape[:-1], pb.out_features)
