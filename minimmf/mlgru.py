"""The MLGRU token mixer (the released code's ``HGRNBitAttention``), forward and backward.

Paper (§3.3):  f_t = σ(x W_f),  c_t = τ(x W_c),  h_t = f_t ⊙ h_{t-1} + (1 - f_t) ⊙ c_t,
               g_t = σ(x W_g),  o_t = (g_t ⊙ h_t) W_o

Released code, which minimmf follows (SPEC §3), for the attention-normed input x (B, T, H):

    f   = σ(BitLinear_f(x))
    f   = lb + (1 - lb) f                      # layers l > 0: per-channel lower bound
    i   = silu(BitLinear_i(x)) (1 - f)          # candidate: τ = SiLU (the paper leaves τ unnamed), (1 - f) folded in
    h_t = f_t h_{t-1} + i_t                     # element-wise recurrence (kernels/scan.py)
    o   = RMSNorm(BitLinear_g(x); w_gnorm) silu(h)   # the norm is on g, the SiLU gate on h
    out = BitLinear_o(o)

``num_heads`` only reshapes H into heads; every formula is per channel, so it never
appears here. Parameters: ``p = {"i_proj", "f_proj", "g_proj", "o_proj": BitLinear params,
"g_norm": (H,)}``.

Taught in chapter 4 (``chapters/04-the-mlgru.md``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .bitlinear import BitLinearCache, bitlinear_backward, bitlinear_forward
from .functional import (RMSNormCache, rmsnorm_backward, rmsnorm_forward, sigmoid,
                         sigmoid_backward, silu, silu_backward)
from .config import NORM_EPS
from .kernels.scan import scan_backward, scan_forward


class MLGRUCache(NamedTuple):
    f_proj: BitLinearCache
    i_proj: BitLinearCache
    g_proj: BitLinearCache
    o_proj: BitLinearCache
    g_norm: RMSNormCache
    sf: np.ndarray        # (B, T, H) σ(BitLinear_f(x)), before the lower bound
    f: np.ndarray         # (B, T, H) forget gate after the lower bound
    zi: np.ndarray        # (B, T, H) BitLinear_i(x)
    h: np.ndarray         # (B, T, H) hidden states
    h0: np.ndarray        # (B, H) state before the first token
    gn: np.ndarray        # (B, T, H) RMSNorm(BitLinear_g(x))
    lb: np.ndarray | None # (H,) lower bound, or None (layer 0 / use_lower_bound=False)


def mlgru_forward(x: np.ndarray, p: dict, lb: np.ndarray | None = None,
                  h0: np.ndarray | None = None, eps: float = NORM_EPS):
    """One MLGRU over a sequence. Returns (out, cache); ``cache.h[:, -1]`` is the next state.

    Shapes: x (B, T, H), lb (H,) or None, h0 (B, H) or None (zeros) -> out (B, T, H).
    """
    B, T, H = x.shape
    if h0 is None:
        h0 = np.zeros((B, H), dtype=x.dtype)
    zf, c_f = bitlinear_forward(x, p["f_proj"])              # (B, T, H)
    zi, c_i = bitlinear_forward(x, p["i_proj"])              # (B, T, H)
    sf = sigmoid(zf)
    f = sf if lb is None else lb + (1 - lb) * sf            # lower-bounded forget gate
    i = silu(zi) * (1 - f)                                   # candidate times input gate
    h = scan_forward(f, i, h0)                               # (B, T, H) h_t = f_t h_{t-1} + i_t
    zg, c_g = bitlinear_forward(x, p["g_proj"])              # (B, T, H)
    gn, c_gn = rmsnorm_forward(zg, p["g_norm"], eps)         # norm on g ...
    o = gn * silu(h)                                         # ... SiLU on h
    out, c_o = bitlinear_forward(o, p["o_proj"])             # (B, T, H)
    return out, MLGRUCache(c_f, c_i, c_g, c_o, c_gn, sf, f, zi, h, h0, gn, lb)


def mlgru_backward(dout: np.ndarray, cache: MLGRUCache):
    """Backward of ``mlgru_forward``. Returns (dx, grads, dlb, dh0).

    ``grads`` has the keys and shapes of ``p``; ``dlb`` (H,) is the gradient of the lower
    bound (None if there was none); ``dh0`` (B, H) that of the initial state.
    Shapes: dout (B, T, H) -> dx (B, T, H).
    """
    c = cache
    do, g_o = bitlinear_backward(dout, c.o_proj)            # (B, T, H)
    dgn = do * silu(c.h)                                     # o = gn silu(h)
    dh = silu_backward(do * c.gn, c.h)
    dzg, dw_gnorm = rmsnorm_backward(dgn, c.g_norm)
    dx_g, g_g = bitlinear_backward(dzg, c.g_proj)
    df, di, dh0 = scan_backward(dh, c.f, c.h, c.h0)          # reverse-time recurrence
    dzi = silu_backward(di * (1 - c.f), c.zi)                # i = silu(zi) (1 - f)
    df = df - di * silu(c.zi)
    if c.lb is None:
        dsf, dlb = df, None
    else:                                                    # f = lb + (1 - lb) sf
        dsf = df * (1 - c.lb)
        dlb = np.sum((df * (1 - c.sf)).reshape(-1, df.shape[-1]), axis=0)
    dzf = sigmoid_backward(dsf, c.sf)
    dx_f, g_f = bitlinear_backward(dzf, c.f_proj)
    dx_i, g_i = bitlinear_backward(dzi, c.i_proj)
    dx = dx_f + dx_i + dx_g                                  # x feeds three projections
    grads = {"i_proj": g_i, "f_proj": g_f, "g_proj": g_g, "o_proj": g_o, "g_norm": dw_gnorm}
    return dx, grads, dlb, dh0


# ----------------------------------------------------------------------------- lower bounds

class LowerBoundCache(NamedTuple):
    a: np.ndarray   # (L, H) softmax over layers


def lower_bounds_forward(lower_bounds: np.ndarray):
    """Per-layer forget-gate floors from the model-level parameter (SPEC §3).

    a = softmax(lower_bounds, axis=0);  lb = cumsum(a, axis=0) - a[0]   (so lb[0] = 0,
    and lb increases with depth: deeper layers remember longer).
    Shapes: lower_bounds (L, H) -> lb (L, H).
    """
    z = lower_bounds - np.max(lower_bounds, axis=0, keepdims=True)
    e = np.exp(z)
    a = e / np.sum(e, axis=0, keepdims=True)
    lb = np.cumsum(a, axis=0) - a[0]
    return lb, LowerBoundCache(a)


def lower_bounds_backward(dlb: np.ndarray, cache: LowerBoundCache) -> np.ndarray:
    """Backward of ``lower_bounds_forward``: (L, H) -> (L, H).

    lb_l = a_1 + ... + a_l, so da_k = sum_{l >= k} dlb_l for k >= 1 and da_0 = 0;
    then the softmax backward  d(lower_bounds) = a (da - sum_k a_k da_k).
    """
    a = cache.a
    da = np.cumsum(dlb[::-1], axis=0)[::-1].copy()          # sum over l >= k
    da[0] = 0.0
    return a * (da - np.sum(a * da, axis=0, keepdims=True))
