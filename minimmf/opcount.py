"""The op counter: multiplications, additions and bytes of weights read for one generated token.

Derived from shapes, not instrumented: each function below walks the same code path as the model's
``step`` and writes down, per operation, what that code computes. ``tests/test_opcount.py`` checks the
derivation against the code by wrapping the real matrix-product functions during a real ``step`` and
counting what they are given.

What is counted (per generated token, batch 1):

- **mults**: multiplications and divisions of real numbers (a division counted as one multiplication).
- **adds**: additions and subtractions (a dot product of length n: n multiplications, n - 1 additions;
  a ternary dot product: n additions/subtractions — the packed kernel is branch-free, so a 0 code
  adds a masked 0 and costs the same as ±1).
- **special**: exponentials, square roots, sines and cosines (sigmoid, softmax, RMSNorm, RoPE).
- **weight_bytes**: bytes of parameters read: MMfreeLM's packed 2-bit codes (4 per byte, each row
  padded to blocks of 128 inputs), scales and float32 gains; Transformer++'s float32 weights. The
  embedding contributes the one float32 row it reads.
- **cache_bytes** (Transformer++ only): bytes of the KV cache read by attention, which grows with the
  context S; MMfreeLM reads its (L, H) recurrent state instead, counted there.

Not counted: comparisons (max, clip, masks), rounding, copies, the Python around them.

The MatMul-free model's matrix products are the ``kind == "matrix product"`` rows: their ``mults`` are 0.
The multiplications it still performs are element-wise (gates, norms, the per-row rescale) and grow like
H per layer, not H².

Taught in chapter 14 (``chapters/14-matmul-free-vs-transformer.md``).
"""
from __future__ import annotations

from typing import NamedTuple

from .architectures import architecture_of
from .config import MMfreeConfig
from .kernels.ternary import BLOCK, BLOCK_BYTES

F32 = 4   # bytes per float32 number


class Ops(NamedTuple):
    part: str           # e.g. "mlgru.f_proj", "attn.scores"
    kind: str           # "matrix product", "attention", "element-wise", "norm"
    count: int          # how many times per token (e.g. the number of layers)
    mults: int          # per occurrence
    adds: int
    special: int
    weight_bytes: int
    cache_bytes: int = 0


def totals(rows: list[Ops]) -> dict:
    """Sum of every column over all rows (each row times its count)."""
    keys = ("mults", "adds", "special", "weight_bytes", "cache_bytes")
    return {k: sum(r.count * getattr(r, k) for r in rows) for k in keys}


def by_kind(rows: list[Ops]) -> dict:
    """{kind: totals of the rows of that kind}."""
    return {k: totals([r for r in rows if r.kind == k]) for k in dict.fromkeys(r.kind for r in rows)}


# ----------------------------------------------------------------------------- element-wise pieces

def _rmsnorm(part, C, count=1):
    """rstd = 1/sqrt(mean(x*x) + eps); y = x * rstd * w: C + 2 + 2C mults, C adds, 1 sqrt, C gains read."""
    return Ops(part, "norm", count, 3 * C + 2, C, 1, C * F32)


def _sigmoid(C):
    """σ = where(x >= 0, r, e r) with e = exp(-|x|), r = 1 / (1 + e): 2C mults, C adds, C exps."""
    return 2 * C, C, C


def _silu(C):
    m, a, s = _sigmoid(C)
    return m + C, a, s


# ----------------------------------------------------------------------------- MMfreeLM

def packed_row_bytes(in_features: int) -> int:
    """Bytes of one packed ternary weight row: 2 bits per weight, rows padded to blocks of 128 inputs."""
    return -(-in_features // BLOCK) * BLOCK_BYTES


def _bitlinear(part, I, O, count=1):
    """Packed BitLinear (bitlinear_packed_forward): RMSNorm -> int8 codes -> add/sub product -> rescale."""
    norm = _rmsnorm(part + ".norm", I, count)
    quant = Ops(part + ".act_quant", "element-wise", count, I + 1, 0, 0, 0)   # 127 / absmax; round(n * s)
    prod = Ops(part, "matrix product", count, 0, O * I, 0, O * packed_row_bytes(I) + 8)   # codes + s_w
    rescale = Ops(part + ".rescale", "element-wise", count, O + 1, 0, 0, 0)  # acc / (s_x s_w)
    return [norm._replace(kind="norm"), quant, prod, rescale]


def mmfree_ops(config: MMfreeConfig) -> list[Ops]:
    """Per generated token of the packed MMfreeLM (``PackedMMfreeLM.step``); independent of the context."""
    c = config
    H, I, V, L = c.hidden_size, c.I, c.vocab_size, c.num_hidden_layers
    rows = [Ops("embedding", "element-wise", 1, 0, 0, 0, H * F32)]
    if c.use_lower_bound:                                          # recomputed on every call (L, H)
        rows.append(Ops("lower_bounds", "element-wise", 1, L * H, 2 * L * H, L * H, L * H * F32))
    rows.append(_rmsnorm("attn_norm", H, L))
    for name in ("f_proj", "i_proj", "g_proj", "o_proj"):
        rows += _bitlinear(f"mlgru.{name}", H, H, L)
    sm, sa, ss = _sigmoid(H)
    rows.append(Ops("mlgru.f = σ(zf)", "element-wise", L, sm, sa, ss, 0))
    n_lb = (L - 1) if c.use_lower_bound else 0                     # layer 0 has no lower bound
    if n_lb:
        rows.append(Ops("mlgru.f = lb + (1 - lb) f", "element-wise", n_lb, H, 2 * H, 0, 0))
    um, ua, us = _silu(H)
    rows.append(Ops("mlgru.i = silu(zi) (1 - f)", "element-wise", L, um + H, ua + H, us, 0))
    rows.append(Ops("mlgru.h = f h + i", "element-wise", L, H, H, 0, H * F32))   # reads the state
    rows.append(_rmsnorm("mlgru.g_norm", H, L))
    rows.append(Ops("mlgru.o = g silu(h)", "element-wise", L, um + H, ua, us, 0))
    rows.append(Ops("residual", "element-wise", L, 0, 2 * H, 0, 0))
    rows.append(_rmsnorm("mlp_norm", H, L))
    rows += _bitlinear("glu.gate_proj", H, 2 * I, L)
    gm, ga, gs = _silu(I)
    rows.append(Ops("glu.silu(gate) up", "element-wise", L, gm + I, ga, gs, 0))
    rows += _bitlinear("glu.down_proj", I, H, L)
    rows.append(_rmsnorm("norm", H))
    rows += _bitlinear("lm_head", H, V)
    return rows


# ----------------------------------------------------------------------------- Transformer++

def _linear(part, I, O, count=1):
    """y = x W^T in float32: O I mults, O (I - 1) adds, O I weights read."""
    return Ops(part, "matrix product", count, O * I, O * (I - 1), 0, O * I * F32)


def transformer_ops(config, context: int) -> list[Ops]:
    """Per generated token of ``TransformerPP.step`` with ``context`` tokens in the KV cache after it
    (the new token included, S >= 1). Attention's cost grows with S; every other row is fixed."""
    c = config
    H, I, V, L, n = c.hidden_size, c.I, c.vocab_size, c.num_hidden_layers, c.num_heads
    d, S = H // n, int(context)
    assert S >= 1, "context counts the new token: S >= 1"
    rows = [Ops("embedding", "element-wise", 1, 0, 0, 0, H * F32), _rmsnorm("attn_norm", H, L)]
    for name in ("q_proj", "k_proj", "v_proj"):
        rows.append(_linear(f"attn.{name}", H, H, L))
    rows.append(Ops("attn.rope tables", "element-wise", L, d // 2, 0, 2 * d, 0))    # angles, cos, sin
    rows.append(Ops("attn.rope(q), rope(k)", "element-wise", L, 4 * H, 2 * H, 0, 0))
    rows.append(Ops("attn.scores q K^T / sqrt(d)", "attention", L, n * S * d + n * S, n * S * (d - 1), 0, 0,
                    S * H * F32))                                                # reads K
    rows.append(Ops("attn.softmax", "attention", L, n * S, n * S + n * (S - 1), n * S, 0))
    rows.append(Ops("attn.P V", "attention", L, n * S * d, n * d * (S - 1), 0, 0, S * H * F32))  # reads V
    rows.append(_linear("attn.o_proj", H, H, L))
    rows.append(Ops("residual", "element-wise", L, 0, 2 * H, 0, 0))
    rows.append(_rmsnorm("mlp_norm", H, L))
    rows.append(_linear("mlp.gate_proj", H, I, L))
    rows.append(_linear("mlp.up_proj", H, I, L))
    gm, ga, gs = _silu(I)
    rows.append(Ops("mlp.silu(gate) up", "element-wise", L, gm + I, ga, gs, 0))
    rows.append(_linear("mlp.down_proj", I, H, L))
    rows.append(_rmsnorm("norm", H))
    rows.append(_linear("lm_head", H, V))
    return rows


# ----------------------------------------------------------------------------- models and training

def ops_per_token(model, context: int = 1) -> list[Ops]:
    """The rows for an ``MMfreeLM`` / ``PackedMMfreeLM`` or a ``TransformerPP`` (``context`` used by the latter)."""
    if not architecture_of(model).ternary:
        return transformer_ops(model.config, context)
    return mmfree_ops(model.config)


def training_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token, derived: 3 × (mults + adds) of a forward pass over a window of seq_len
    (forward, then backward ≈ 2 forwards: one product for dx, one for dW — Kaplan et al. 2020's rule).

    Training runs MMfreeLM's ternary products as float products on dequantized values (bitlinear.py), so
    here each of them costs the same O·I multiplications and O·I additions as a float one. For
    Transformer++ the attention rows are averaged over the window's causal contexts S = 1 .. seq_len.
    """
    cfg = model.config
    if not architecture_of(model).ternary:
        per = [totals(transformer_ops(cfg, S)) for S in (1, seq_len)]              # linear in S: average ends
        fwd = (per[0]["mults"] + per[0]["adds"] + per[1]["mults"] + per[1]["adds"]) / 2
    else:
        rows = [r._replace(mults=r.adds) if r.kind == "matrix product" else r for r in mmfree_ops(cfg)]
        t = totals(rows)
        fwd = t["mults"] + t["adds"]
    return 3.0 * fwd
