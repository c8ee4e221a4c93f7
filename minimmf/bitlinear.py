"""BitLinear: RMSNorm -> 8-bit activations -> ternary weights, with the STE backward.

SPEC §2. Every projection of the model, the LM head included, is a BitLinear:

    n = RMSNorm(x; g, eps=1e-6)                         # its own learnable gain g
    y = quant_act(n) @ quant_weight(W).T                # no bias
      = (q_x @ q_w.T) / (s_x * s_w)                     # integer form: adds and subtracts only

``q_x @ q_w.T`` is an exact integer (each term is +q_x, 0 or -q_x). This layer computes it
with BLAS on integer-valued floats — exact, because every partial sum is an integer far
below 2**24; its fast twin with byte multiply-adds on many tokens at once (``ternary_gemm``,
``kernels/ternary_gemm.py``); and inference on packed 2-bit codes w + 1 with the offset kernel
(``offset_matmul``, ``kernels/ternary.py``). All give the same bits.

Backward (straight-through estimator: both quantizers act as the identity):

    dn = dy @ W_q          W_q = q_w / s_w   (dequantized ternary weights)
    dW = dy.T @ x_q        x_q = q_x / s_x   (dequantized 8-bit activations)
    dx, dg = RMSNorm backward of dn

Parameters: ``p = {"W": (O, I), "g": (I,)}``.

Taught in chapter 2 (``chapters/02-bitlinear-and-the-ste.md``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import BITLINEAR_EPS   # 1e-6, fixed: the released fused kernel ignores the module's eps (SPEC §2)
from .functional import RMSNormCache, rmsnorm_backward, rmsnorm_forward
from .kernels.ternary import OffsetPacked, as_offset, offset_matmul, pack_offset
from .quant import activation_quant, weight_quant


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
    """A BitLinear frozen for inference: 2-bit codes, one weight scale, the norm gain.

    ``codes`` is an ``OffsetPacked`` (w + 1, ``pack_offset``); one built before offset codes holds a
    ``PackedTernary``, which is read through ``as_offset`` (converted)."""
    codes: OffsetPacked    # (O, I) ternary codes w + 1, 4 per byte
    s_w: float             # the matrix's absmean scale
    g: np.ndarray          # (I,) RMSNorm gain

    @property
    def out_features(self) -> int:
        return self.codes.out_features


def pack_bitlinear(p: dict) -> PackedBitLinear:
    """Quantize W once and pack its codes: the float weights are not needed afterwards."""
    q_w, s_w = weight_quant(p["W"])
    return PackedBitLinear(pack_offset(q_w), float(s_w), p["g"])


def bitlinear_packed_forward(x: np.ndarray, pb: PackedBitLinear) -> np.ndarray:
    """Integer inference: RMSNorm -> int8 codes -> ternary product on offset codes (exact int32) -> one rescale.

    Gives the same numbers as ``bitlinear_forward`` without touching float weights.
    Shapes: x (..., I) float -> y (..., O).
    """
    n, _ = rmsnorm_forward(x, pb.g, BITLINEAR_EPS)            # (..., I)
    q_x, s_x = activation_quant(n.reshape(-1, n.shape[-1]))   # (N, I) int8, (N, 1)
    acc = offset_matmul(q_x, as_offset(pb.codes))             # (N, O) int32, exact
    y = acc.astype(x.dtype) / (s_x * x.dtype.type(pb.s_w))
    return y.reshape(*x.shape[:-1], pb.out_features)
