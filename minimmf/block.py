"""The pre-norm block: token mixer then channel mixer, each behind an RMSNorm and a residual.

SPEC §5:
    r   = x + MLGRU(RMSNorm(x; w_attn_norm))
    out = r + GLU(RMSNorm(r; w_mlp_norm))

Parameters: ``p = {"attn_norm": (H,), "attn": MLGRU params, "mlp_norm": (H,), "mlp": GLU params}``.

Each layer is called through ``op`` (``seam.py``): ``op.mlgru_forward`` is ``mlgru.mlgru_forward``, or its fast
twin when that gives the same bits (an edit to ``mlgru.py`` therefore takes effect here).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import NORM_EPS
from .functional import RMSNormCache
from .glu import GLUCache
from .mlgru import MLGRUCache
from .seam import op


class BlockCache(NamedTuple):
    attn_norm: RMSNormCache
    attn: MLGRUCache
    mlp_norm: RMSNormCache
    mlp: GLUCache


def block_forward(x: np.ndarray, p: dict, lb: np.ndarray | None = None,
                  h0: np.ndarray | None = None, eps: float = NORM_EPS):
    """One block. Returns (out, cache, h_last); h_last (B, H) is the MLGRU state after the last token.

    Shapes: x (B, T, H), lb (H,) or None, h0 (B, H) or None -> out (B, T, H).
    """
    n1, c_n1 = op.rmsnorm_forward(x, p["attn_norm"], eps)
    a, c_attn = op.mlgru_forward(n1, p["attn"], lb, h0, eps)
    r = x + a                                                # residual 1
    n2, c_n2 = op.rmsnorm_forward(r, p["mlp_norm"], eps)
    m, c_mlp = op.glu_forward(n2, p["mlp"])
    out = r + m                                              # residual 2
    return out, BlockCache(c_n1, c_attn, c_n2, c_mlp), c_attn.h[:, -1].copy()   # a copy: frees h with the cache


def block_backward(dout: np.ndarray, cache: BlockCache):
    """Backward of ``block_forward``. Returns (dx, grads, dlb, dh0). Shapes: dout (B, T, H) -> dx (B, T, H)."""
    dn2, g_mlp = op.glu_backward(dout, cache.mlp)
    dr_norm, dw_mlp_norm = op.rmsnorm_backward(dn2, cache.mlp_norm)
    dr = dout + dr_norm                                      # residual 2: both paths
    dn1, g_attn, dlb, dh0 = op.mlgru_backward(dr, cache.attn)
    dx_norm, dw_attn_norm = op.rmsnorm_backward(dn1, cache.attn_norm)
    dx = dr + dx_norm                                        # residual 1: both paths
    grads = {"attn_norm": dw_attn_norm, "attn": g_attn, "mlp_norm": dw_mlp_norm, "mlp": g_mlp}
    return dx, grads, dlb, dh0
