"""Hypothesis strategies for the kernel tests: ternary products and scan inputs of random shapes.

Sizes are capped by a work budget so that one example stays cheap also under NUMBA_DISABLE_JIT=1, where every
kernel runs as plain Python (about a microsecond per scalar operation).
"""
import os

import numpy as np
from hypothesis import strategies as st

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
WEIGHT_BUDGET = 60_000 if NO_JIT else 3_000_000  # N * O * I (I padded to 128) per ternary example
SCAN_BUDGET = 20_000 if NO_JIT else 2_000_000  # B * T * D per scan example


@st.composite
def ternary_problems(draw, max_dim=300):
    """(q_x (N, I) int8 over the full [-128, 127], q_w (O, I) int8 in {-1, 0, 1}) with a random density."""
    I = draw(st.integers(1, max_dim))
    O = draw(st.integers(1, max_dim))
    N = draw(st.integers(1, max_dim))
    I_pad = -(-I // 128) * 128
    O = min(O, max(1, WEIGHT_BUDGET // I_pad))
    N = min(N, max(1, WEIGHT_BUDGET // (O * I_pad)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p_zero = draw(st.sampled_from([0.0, 0.3, 0.9]))
    q_w = rng.choice(np.array([-1, 0, 1], np.int8), size=(O, I), p=[(1 - p_zero) / 2, p_zero, (1 - p_zero) / 2])
    q_x = rng.integers(-128, 128, size=(N, I), dtype=np.int8)
    return q_x, q_w


@st.composite
def scan_problems(draw, dtype=np.float64, max_B=6, max_T=40, max_D=300):
    """(f in (0, 1), i ~ N(0, 1), h0 ~ N(0, 1)) of shapes (B, T, D), (B, T, D), (B, D)."""
    B = draw(st.integers(1, max_B))
    T = draw(st.integers(1, max_T))
    D = draw(st.integers(1, max_D))
    D = min(D, max(1, SCAN_BUDGET // (B * T)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    f = rng.uniform(0.0, 1.0, size=(B, T, D)).astype(dtype)
    i = rng.standard_normal((B, T, D)).astype(dtype)
    h0 = rng.standard_normal((B, D)).astype(dtype)
    return f, i, h0
