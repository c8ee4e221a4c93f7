"""The GLU channel mixer (the released code's ``HGRNBitMLP``), forward and backward.

SPEC §4:
    y          = BitLinear_gate(x)               # W_gate (2I, H): gate and up in one matrix
    gate, up   = y[..., :I], y[..., I:]
    out        = BitLinear_down(silu(gate) * up) # W_down (H, I)

The configured ``hidden_act`` is ignored by the released code: it is always SiLU.
Parameters: ``p = {"gate_proj": BitLinear (2I, H), "down_proj": BitLinear (H, I)}``.

Taught in chapter 5 (``chapters/05-the-glu.md``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .bitlinear import BitLinearCache, bitlinear_backward, bitlinear_forward
from .config import intermediate_size_for  # noqa: F401  (the rule for I lives with the config)
from .functional import silu, silu_backward


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
    a = silu(gate) * up                                     # (B, T, I)
    out, c_down = bitlinear_forward(a, p["down_proj"])      # (B, T, H)
    return out, GLUCache(c_gate, c_down, gate, up)


def glu_backward(dout: np.ndarray, cache: GLUCache):
    """Backward of ``glu_forward``. Returns (dx, grads) with grads shaped like p.

    dgate = silu'(gate) (da up),  dup = da silu(gate),  then both BitLinears' STE backward.
    Shapes: dout (B, T, H) -> dx (B, T, H).
    """
    da, g_down = bitlinear_backward(dout, cache.down_proj)  # (B, T, I)
    dgate = silu_backward(da * cache.up, cache.gate)        # (B, T, I)
    dup = da * silu(cache.gate)                             # (B, T, I)
    dy = np.concatenate([dgate, dup], axis=-1)              # (B, T, 2I)
    dx, g_gate = bitlinear_backward(dy, cache.gate_proj)
    return dx, {"gate_proj": g_gate, "down_proj": g_down}
