"""Transformer++ layers with their backward passes: linear, rotary embeddings, causal attention, SwiGLU.

Transformer++ is the paper's baseline (Zhu et al. 2024, §4: "Transformer++", the Llama-2 recipe): pre-norm
blocks with RMSNorm, rotary position embeddings, SwiGLU, no biases, full-precision weights. Every product
here is a real floating-point matrix product — the multiplications the MatMul-free model removes.

Dims: B batch, T new tokens, P tokens already in the KV cache, S = P + T keys, H width, n heads, d = H / n
head width, I SwiGLU width.

Taught in chapter 14 (``chapters/14-matmul-free-vs-transformer.md``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..functional import silu, silu_backward


# ----------------------------------------------------------------------------- linear

class LinearCache(NamedTuple):
    x: np.ndarray       # (..., I) input
    W: np.ndarray       # (O, I) weights


def linear_forward(x: np.ndarray, p: dict):
    """y = x W^T, no bias (full precision: O·I multiplications per token).

    Shapes: x (..., I), p["W"] (O, I) -> y (..., O).
    """
    W = p["W"]
    return x @ W.T, LinearCache(x, W)


def linear_backward(dy: np.ndarray, cache: LinearCache):
    """dx = dy W;  dW = sum over tokens of dy^T x.  Returns (dx, {"W": dW})."""
    x, W = cache
    dW = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])     # (O, I)
    return dy @ W, {"W": dW}


# ----------------------------------------------------------------------------- rotary embeddings

def rope_tables(positions: np.ndarray, d: int, theta: float = 10000.0, dtype=np.float32):
    """cos and sin of the rotation angles pos · θ^(-2k/d), k = 0 .. d/2 - 1, each repeated for both
    halves of the head (the Llama / Hugging Face "rotate_half" layout).

    Shapes: positions (T,) int -> cos, sin (T, d).
    """
    assert d % 2 == 0, f"rotary embeddings need an even head width, got {d}"
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)       # (d/2,)
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]  # (T, d/2)
    ang = np.concatenate([ang, ang], axis=-1)                             # (T, d)
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[x1, x2] -> [-x2, x1] on the last axis (a 90° turn of every (x1[k], x2[k]) pair)."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """RoPE(x) = x cos + rotate_half(x) sin: each pair (x1[k], x2[k]) turned by its angle.

    Shapes: x (B, n, T, d), cos/sin (T, d) -> (B, n, T, d). No parameters, no cache needed.
    """
    return x * cos + rotate_half(x) * sin


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """A rotation's backward is the rotation by the opposite angle: dx = dy cos - rotate_half(dy) sin."""
    return dy * cos - rotate_half(dy) * sin


# ----------------------------------------------------------------------------- causal attention core

class SDPACache(NamedTuple):
    q: np.ndarray        # (B, n, T, d) rotated queries
    k: np.ndarray        # (B, n, S, d) rotated keys, past and new
    v: np.ndarray        # (B, n, S, d) values, past and new
    probs: np.ndarray    # (B, n, T, S) attention weights
    scale: float         # 1 / sqrt(d)


def causal_mask(T: int, S: int) -> np.ndarray:
    """(T, S) True where query t (at absolute position S - T + t) may see key s: s <= S - T + t."""
    return np.arange(S)[None, :] <= (S - T) + np.arange(T)[:, None]


def sdpa_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray):
    """Causal scaled dot-product attention: out = softmax(q k^T / sqrt(d) + mask) v.

    The T queries are the last T positions of the S keys (earlier keys come from the KV cache).
    Shapes: q (B, n, T, d), k and v (B, n, S, d) -> out (B, n, T, d).
    """
    T, S, d = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / np.sqrt(d)
    scores = (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale)              # (B, n, T, S)
    scores = np.where(causal_mask(T, S), scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))              # masked entries -> 0
    probs = e / e.sum(axis=-1, keepdims=True)
    return probs @ v, SDPACache(q, k, v, probs, scale)


def sdpa_backward(dout: np.ndarray, cache: SDPACache):
    """Backward of ``sdpa_forward``. Returns (dq, dk, dv) with the shapes of q, k, v.

    dv = P^T dout;  dP = dout v^T;  dscores = P (dP - sum_s(P dP));  dq = dscores k / sqrt(d);
    dk = dscores^T q / sqrt(d).  (Masked entries have P = 0, so they get no gradient.)
    """
    q, k, v, probs, scale = cache
    dv = probs.swapaxes(-1, -2) @ dout                                    # (B, n, S, d)
    dP = dout @ v.swapaxes(-1, -2)                                        # (B, n, T, S)
    ds = probs * (dP - np.sum(dP * probs, axis=-1, keepdims=True))
    ds *= q.dtype.type(scale)
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


# ----------------------------------------------------------------------------- the attention mixer

class AttentionCache(NamedTuple):
    q_proj: LinearCache
    k_proj: LinearCache
    v_proj: LinearCache
    o_proj: LinearCache
    sdpa: SDPACache
    cos: np.ndarray      # (T, d)
    sin: np.ndarray      # (T, d)
    past: int            # P, tokens that were already in the KV cache


def split_heads(x: np.ndarray, n: int) -> np.ndarray:
    """(B, T, H) -> (B, n, T, H / n)."""
    B, T, H = x.shape
    return x.reshape(B, T, n, H // n).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, n, T, d) -> (B, T, n d)."""
    B, n, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, n * d)


def attention_forward(x: np.ndarray, p: dict, n_heads: int, past_kv=None, theta: float = 10000.0):
    """Multi-head causal self-attention with rotary embeddings, continuing a KV cache.

        q, k, v = x W_q^T, x W_k^T, x W_v^T            (split into n heads of width d)
        q, k    = RoPE(q), RoPE(k)                      (positions P .. P + T - 1)
        K, V    = [past K; k], [past V; v]              (the KV cache grows by T)
        out     = merge(softmax(q K^T / sqrt(d) + causal mask) V) W_o^T

    Returns (out, cache, (K, V)). Shapes: x (B, T, H), past_kv None or two (B, n, P, d)
    -> out (B, T, H), K and V (B, n, P + T, d).
    """
    B, T, H = x.shape
    P = 0 if past_kv is None else past_kv[0].shape[2]
    cos, sin = rope_tables(np.arange(P, P + T), H // n_heads, theta, x.dtype)   # (T, d)
    zq, c_q = linear_forward(x, p["q_proj"])                              # (B, T, H)
    zk, c_k = linear_forward(x, p["k_proj"])
    zv, c_v = linear_forward(x, p["v_proj"])
    q = rope_forward(split_heads(zq, n_heads), cos, sin)                  # (B, n, T, d)
    k = rope_forward(split_heads(zk, n_heads), cos, sin)
    v = split_heads(zv, n_heads)
    if past_kv is not None:
        k = np.concatenate([past_kv[0], k], axis=2)                       # (B, n, S, d)
        v = np.concatenate([past_kv[1], v], axis=2)
    o, c_sdpa = sdpa_forward(q, k, v)                                     # (B, n, T, d)
    out, c_o = linear_forward(merge_heads(o), p["o_proj"])                # (B, T, H)
    return out, AttentionCache(c_q, c_k, c_v, c_o, c_sdpa, cos, sin, P), (k, v)


def attention_backward(dout: np.ndarray, cache: AttentionCache):
    """Backward of ``attention_forward`` (gradients for the new tokens; the cached past is constant).

    Returns (dx, grads) with grads shaped like p. Three uses of x sum in one place: dx = dx_q + dx_k + dx_v.
    """
    n = cache.sdpa.q.shape[1]
    do, g_o = linear_backward(dout, cache.o_proj)                         # (B, T, H)
    dq, dk, dv = sdpa_backward(split_heads(do, n), cache.sdpa)           # (B, n, T|S, d)
    P = cache.past
    dk, dv = dk[:, :, P:], dv[:, :, P:]                                   # drop the cached keys' part
    dzq = merge_heads(rope_backward(dq, cache.cos, cache.sin))            # (B, T, H)
    dzk = merge_heads(rope_backward(dk, cache.cos, cache.sin))
    dx_q, g_q = linear_backward(dzq, cache.q_proj)
    dx_k, g_k = linear_backward(dzk, cache.k_proj)
    dx_v, g_v = linear_backward(merge_heads(dv), cache.v_proj)
    return dx_q + dx_k + dx_v, {"q_proj": g_q, "k_proj": g_k, "v_proj": g_v, "o_proj": g_o}


# ----------------------------------------------------------------------------- SwiGLU

class SwiGLUCache(NamedTuple):
    gate_proj: LinearCache
    up_proj: LinearCache
    down_proj: LinearCache
    gate: np.ndarray     # (B, T, I) x W_gate^T
    up: np.ndarray       # (B, T, I) x W_up^T


def swiglu_forward(x: np.ndarray, p: dict):
    """out = (silu(x W_gate^T) * (x W_up^T)) W_down^T  (Shazeer 2020; the Llama MLP).

    Shapes: x (B, T, H), gate_proj/up_proj W (I, H), down_proj W (H, I) -> out (B, T, H).
    """
    gate, c_gate = linear_forward(x, p["gate_proj"])                      # (B, T, I)
    up, c_up = linear_forward(x, p["up_proj"])                            # (B, T, I)
    a = silu(gate) * up                                                   # (B, T, I)
    out, c_down = linear_forward(a, p["down_proj"])                       # (B, T, H)
    return out, SwiGLUCache(c_gate, c_up, c_down, gate, up)


def swiglu_backward(dout: np.ndarray, cache: SwiGLUCache):
    """Backward of ``swiglu_forward``. Returns (dx, grads); x's two uses sum in one place."""
    da, g_down = linear_backward(dout, cache.down_proj)                   # (B, T, I)
    dgate = silu_backward(da * cache.up, cache.gate)                      # (B, T, I)
    dup = da * silu(cache.gate)
    dx_gate, g_gate = linear_backward(dgate, cache.gate_proj)
    dx_up, g_up = linear_backward(dup, cache.up_proj)
    return dx_gate + dx_up, {"gate_proj": g_gate, "up_proj": g_up, "down_proj": g_down}
