"""Fast twin of ``minimmf/mlgru.py``: the gates, the candidate and the output gate each in one pass.

The same lines as the readable layer, with its element-wise groups on ``kernels/fused.py``
(``mlgru_gates_*``: σ, the lower bound and silu(zi)(1 - f); ``mlgru_output_*``: gn silu(h)) and its BitLinears and
RMSNorm through the seam. The scan is the layer's own (``kernels/scan.py``).
"""
from __future__ import annotations

import numpy as np

from .. import mlgru
from ..config import NORM_EPS
from ..kernels import fused
from ..kernels.scan import scan_backward, scan_forward
from ..mlgru import MLGRUCache
from ..seam import op


def mlgru_forward(x: np.ndarray, p: dict, lb: np.ndarray | None = None,
                  h0: np.ndarray | None = None, eps: float = NORM_EPS):
    """mlgru.mlgru_forward. Shapes: x (B, T, H), lb (H,) or None, h0 (B, H) or None -> out (B, T, H) (+ cache)."""
    if not fused.fusable(x, *(() if lb is None else (lb,))):
        return mlgru.mlgru_forward(x, p, lb, h0, eps)
    B, T, H = x.shape
    if h0 is None:
        h0 = np.zeros((B, H), dtype=x.dtype)
    zf, c_f = op.bitlinear_forward(x, p["f_proj"])                       # (B, T, H)
    zi, c_i = op.bitlinear_forward(x, p["i_proj"])
    sf, f, i = (a.reshape(B, T, H) for a in fused.mlgru_gates_forward(zf, zi, lb))
    h = scan_forward(f, i, h0)                                           # (B, T, H)
    zg, c_g = op.bitlinear_forward(x, p["g_proj"])
    gn, c_gn = op.rmsnorm_forward(zg, p["g_norm"], eps)
    o = fused.mlgru_output_forward(gn, h).reshape(B, T, H)               # gn silu(h)
    out, c_o = op.bitlinear_forward(o, p["o_proj"])
    return out, MLGRUCache(c_f, c_i, c_g, c_o, c_gn, sf, f, zi, h, h0, gn, lb)


def mlgru_backward(dout: np.ndarray, cache: MLGRUCache):
    """mlgru.mlgru_backward. Returns (dx, grads, dlb, dh0). Shapes: dout (B, T, H) -> dx (B, T, H)."""
    c = cache
    if not fused.fusable(dout, c.h, *(() if c.lb is None else (c.lb,))):
        return mlgru.mlgru_backward(dout, cache)
    shape = c.h.shape                                                    # (B, T, H)
    do, g_o = op.bitlinear_backward(dout, c.o_proj)
    dgn, dh = (a.reshape(shape) for a in fused.mlgru_output_backward(do, c.gn, c.h))
    dzg, dw_gnorm = op.rmsnorm_backward(dgn, c.g_norm)
    dx_g, g_g = op.bitlinear_backward(dzg, c.g_proj)
    df, di, dh0 = scan_backward(dh, c.f, c.h, c.h0)
    dzf, dzi, dlb = fused.mlgru_gates_backward(df, di, c.f, c.sf, c.zi, c.lb)
    dx_f, g_f = op.bitlinear_backward(dzf.reshape(shape), c.f_proj)
    dx_i, g_i = op.bitlinear_backward(dzi.reshape(shape), c.i_proj)
    dx = np.add(dx_f, dx_i, out=dx_f)                                    # (dx_f + dx_i) + dx_g, in place
    dx += dx_g
    grads = {"i_proj": g_i, "f_proj": g_f, "g_proj": g_g, "o_proj": g_o, "g_norm": dw_gnorm}
    return dx, grads, dlb, dh0
