"""The pre-norm block: token mixer then channel mixer, each behind an RMSNorm and a residual.

SPEC §5:
    r   = x + MLGRU(RMSNorm(x; w_attn_norm))
    out = r + GLU(RMSNorm(r; w_mlp_norm))

Parameters: ``p = {"attn_norm": (H,), "attn": MLGRU params, "mlp_norm": (H,), "mlp": GLU params}``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .functional import RMSNormCache, rmsnorm_backward, rmsnorm_forward
from .glu import GLUCache, glu_backward, glu_forward
from .mlgru import MLGRUCache, mlgru_backward, mlgru_forward


class BlockCache(NamedTuple):
    attn_norm: RMSNormCache
    attn: MLGRUCache
    mlp_norm: RMSNormCache
    mlp: GLUCache


def block_forward(x: np.ndarray, p: dict, lb: np.ndarray | None = None,
                  h0: np.ndarray | None = None, eps: float = 1e-6):
    """One block. Returns (out, cache, h_last); h_last (B, H) is the MLGRU state after the last token.

    Shapes: x (B, T, H), lb (H,) or None, h0 (B, H) or None -> out (B, T, H).
    """
    n1, c_n1 = rmsnorm_forward(x, p["attn_norm"], eps)
    a, c_attn = mlgru_forward(n1, p["attn"], lb, h0, eps)
    r = x + a                                                # residual 1
    n2, c_n2 = rmsnorm_forward(r, p["mlp_norm"], eps)
    m, c_mlp = glu_forward(n2, p["mlp"])
    out = r + m                                              # residual 2
    return out, BlockCache(c_n1, c_attn, c_n2, c_mlp), c_attn.h[:, -1]


def block_backward(dout: np.ndarray, cache: BlockCache):
    """Backward of ``block_forward``. Returns (dx, grads, dlb, dh0)."""
    dn2, g_mlp = glu_backward(dout, cache.mlp)
    dr_norm, dw_mlp_norm = rmsnorm_backward(dn2, cache.mlp_norm)
    dr = dout + dr_norm                                      # residual 2: both paths
    dn1, g_attn, dlb, dh0 = mlgru_backward(dr, cache.attn)
    dx_norm, dw_attn_norm = rmsnorm_backward(dn1, cache.attn_norm)
    dx = dr + dx_norm                                        # residual 1: both paths
    grads = {"attn_norm": dw_attn_norm, "attn": g_attn, "mlp_norm": dw_mlp_norm, "mlp": g_mlp}
    return dx, grads, dlb, dh0
