"""Fast twin of ``minimmf/baseline/layers.py``'s SwiGLU: silu(gate) up in one pass (MMfreeLM's GLU kernel)."""
from __future__ import annotations

import numpy as np

from ..baseline import layers
from ..baseline.layers import SwiGLUCache, linear_backward, linear_forward
from ..kernels import fused


def swiglu_forward(x: np.ndarray, p: dict):
    """layers.swiglu_forward. Shapes: x (B, T, H) -> out (B, T, H) (+ cache)."""
    if not fused.fusable(x):
        return layers.swiglu_forward(x, p)
    gate, c_gate = linear_forward(x, p["gate_proj"])                      # (B, T, I)
    up, c_up = linear_forward(x, p["up_proj"])
    a = fused.glu_act_forward(gate, up).reshape(gate.shape)               # silu(gate) up
    out, c_down = linear_forward(a, p["down_proj"])
    return out, SwiGLUCache(c_gate, c_up, c_down, gate, up)


def swiglu_backward(dout: np.ndarray, cache: SwiGLUCache):
    """layers.swiglu_backward. Returns (dx, grads). Shapes: dout (B, T, H) -> dx (B, T, H)."""
    if not fused.fusable(dout, cache.gate, cache.up):
        return layers.swiglu_backward(dout, cache)
    da, g_down = linear_backward(dout, cache.down_proj)                   # (B, T, I)
    dy = fused.glu_act_backward(da, cache.gate, cache.up).reshape(*da.shape[:-1], -1)
    I = da.shape[-1]
    dx_gate, g_gate = linear_backward(dy[..., :I], cache.gate_proj)
    dx_up, g_up = linear_backward(dy[..., I:], cache.up_proj)
    return dx_gate + dx_up, {"gate_proj": g_gate, "up_proj": g_up, "down_proj": g_down}
