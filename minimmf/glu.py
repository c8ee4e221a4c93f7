"""The GLU channel mixer (the released code's ``HGRNBitMLP``), forward and backward.

SPEC §4:
    y          = BitLinear_gate(x)               # W_gate (2I, H): gate and up in one matrix
    gate, up   = y[..., :I], y[..., I:]
    out        = BitLinear_down(silu(gate) * up) # W_down (H, I)

The configured ``hidden_act`` is ignored by the released code: it is always SiLU.
Parameters: ``p = {"gate_proj": BitLinear (2I, H), "down_proj": BitLinear (H, I)}``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .bitlinear import BitLinearCache, bitlinear_backward, bitlinear_forward
from .functional import silu, silu_backward
from .kernels import fused


def intermediate_size_for(hidden_size: int, hidden_ratio: int = 4) -> int:
    """I = 256 * ceil(int(H * hidden_ratio * 2/3) / 256): the released default (SPEC §4)."""
    i = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((i + 255) // 256)


class GLUCache(NamedTuple):
    gate_proj: BitLinearCache
    down_proj: BitLinearCache
    gate: np.ndarray   # (B, T, I)
    up: np.ndarray     # (B, T, I)


def glu_forward(x: np.ndarray, p: dict):
    """out = BitLinear_down(silu(gate) * up), [gate, up] = BitLinear_gate(x).

    Shapes: x (B, T, H) -> out (B, T, H).
    """
    y, c_gate = bitlinear_forward(x, p["gate_proj"])        # (B, T, 2I)
    I = y.shape[-1] // 2
    gate, up = y[..., :I], y[..., I:]                       # (B, T, I) each
    if fused.use_fused(y):                                  # silu(gate) * up in one pass
        a = fused.glu_act_forward(gate, up).reshape(gate.shape)
    else:
        a = silu(gate) * up
    out, c_down = bitlinear_forward(a, p["down_proj"])      # (B, T, H)
    return out, GLUCache(c_gate, c_down, gate, up)


def glu_backward(dout: np.ndarray, cache: GLUCache):
    """Backward of ``glu_forward``. Returns (dx, grads) with grads shaped like p."""
    da, g_down = bitlinear_backward(dout, cache.down_proj)  # (B, T, I)
    if fused.use_fused(da, cache.gate):                     # the three lines below, in one pass
        dy = fused.glu_act_backward(da, cache.gate, cache.up).reshape(*da.shape[:-1], -1)
    else:
        dgate = silu_backward(da * cache.up, cache.gate)
        dup = da * silu(cache.gate)
        dy = np.concatenate([dgate, dup], axis=-1)          # (B, T, 2I)
    dx, g_gate = bitlinear_backward(dy, cache.gate_proj)
    return dx, {"gate_proj": g_gate, "down_proj": g_down}
