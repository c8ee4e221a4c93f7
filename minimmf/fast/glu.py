"""Fast twin of ``minimmf/glu.py``: silu(gate) up and its backward each in one pass (``kernels/fused.py``)."""
from __future__ import annotations

import numpy as np

from .. import glu
from ..glu import GLUCache
from ..kernels import fused
from ..seam import op


def glu_forward(x: np.ndarray, p: dict):
    """glu.glu_forward. Shapes: x (B, T, H) -> out (B, T, H) (+ cache)."""
    if not fused.fusable(x):
        return glu.glu_forward(x, p)
    y, c_gate = op.bitlinear_forward(x, p["gate_proj"])                  # (B, T, 2I)
    I = y.shape[-1] // 2
    gate, up = y[..., :I], y[..., I:]                                     # (B, T, I) each
    a = fused.glu_act_forward(gate, up).reshape(gate.shape)               # silu(gate) up
    out, c_down = op.bitlinear_forward(a, p["down_proj"])
    return out, GLUCache(c_gate, c_down, gate, up)


def glu_backward(dout: np.ndarray, cache: GLUCache):
    """glu.glu_backward. Returns (dx, grads). Shapes: dout (B, T, H) -> dx (B, T, H)."""
    if not fused.fusable(dout, cache.gate):
        return glu.glu_backward(dout, cache)
    da, g_down = op.bitlinear_backward(dout, cache.down_proj)             # (B, T, I)
    dy = fused.glu_act_backward(da, cache.gate, cache.up).reshape(*da.shape[:-1], -1)   # (B, T, 2I)
    dx, g_gate = op.bitlinear_backward(dy, cache.gate_proj)
    return dx, {"gate_proj": g_gate, "down_proj": g_down}
