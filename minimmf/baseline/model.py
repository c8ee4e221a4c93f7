"""Transformer++: the paper's float baseline (Llama-2 style), with the same public interface as MMfreeLM.

    h = E[ids]                                          # (B, T, H), positions enter through RoPE only
    for l in range(L):
        h = h + Attention(RMSNorm(h; attn_norm))        # layers.attention_forward, KV cache
        h = h + SwiGLU(RMSNorm(h; mlp_norm))            # layers.swiglu_forward
    logits = RMSNorm(h; norm) W_head^T                  # untied, like MMfreeLM's head

Parameter tree (minimmf's names; checkpoints store it under these paths):

    {"embeddings": (V, H),
     "layers": [{"attn_norm": (H,), "attn": {"q_proj", "k_proj", "v_proj", "o_proj": {"W": (H, H)}},
                 "mlp_norm": (H,),
                 "mlp": {"gate_proj": {"W": (I, H)}, "up_proj": {"W": (I, H)}, "down_proj": {"W": (H, I)}}},
                ...],
     "norm": (H,), "lm_head": {"W": (V, H)}}

At equal (V, H, L, I) this has the same matrix sizes as MMfreeLM (4 H×H mixer matrices, 3 H×I channel-mixer
matrices, a V×H head), so the two are compared at the same parameter count.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import validate
from ..config import NORM_EPS, intermediate_size_for
from ..functional import RMSNormCache
from ..lm import LanguageModel
from ..seam import op
from ..tree import leaves
from .layers import (AttentionCache, LinearCache, SwiGLUCache, attention_backward, attention_forward,
                     linear_backward, linear_forward)

ARCHITECTURE = "transformer++"
HEAD_DIM = 32     # head width used by ``TransformerConfig.for_width`` (nanoGPT's baby model: 128 wide, 4 heads)


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 32000                # V
    hidden_size: int = 1024                # H
    num_hidden_layers: int = 24            # L
    num_heads: int = 8                     # n; head width d = H / n (even, for RoPE)
    intermediate_size: int | None = None   # I of SwiGLU; None -> MMfreeLM's rule (same matrix sizes)
    rope_theta: float = 10000.0            # RoPE base
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02        # std of the N(0, σ) init of every matrix

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"hidden_size ({self.hidden_size}) / num_heads ({self.num_heads}) must be "
                             f"an even integer (the head width that RoPE rotates in pairs)")

    @property
    def I(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None \
            else intermediate_size_for(self.hidden_size)

    @classmethod
    def for_width(cls, vocab_size: int, hidden_size: int, num_hidden_layers: int,
                  intermediate_size: int | None = None) -> "TransformerConfig":
        """Heads of width HEAD_DIM (one head if H < 2 HEAD_DIM or H is not a multiple of it)."""
        n = hidden_size // HEAD_DIM if hidden_size % HEAD_DIM == 0 and hidden_size >= HEAD_DIM else 1
        return cls(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                   num_heads=n, intermediate_size=intermediate_size)

    def to_json(self) -> dict:
        """config.json of a Transformer++ checkpoint (``architecture`` tells the loader which model)."""
        return {"architecture": ARCHITECTURE, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, cfg: dict) -> "TransformerConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in fields})


# ----------------------------------------------------------------------------- initialization

def param_shapes(config: TransformerConfig) -> dict:
    """The tree of parameter shapes for a configuration."""
    H, I, V, L = config.hidden_size, config.I, config.vocab_size, config.num_hidden_layers
    lin = lambda o, i: {"W": (o, i)}                                            # noqa: E731
    layer = {"attn_norm": (H,), "attn": {n: lin(H, H) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
             "mlp_norm": (H,), "mlp": {"gate_proj": lin(I, H), "up_proj": lin(I, H), "down_proj": lin(H, I)}}
    return {"embeddings": (V, H), "layers": [layer] * L, "norm": (H,), "lm_head": lin(V, H)}


def init_params(config: TransformerConfig, seed: int = 0, dtype=np.float32) -> dict:
    """Every matrix N(0, initializer_range), every norm gain 1 (the Hugging Face Llama init)."""
    rng = np.random.default_rng(seed)

    def build(node):
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(v) for v in node]
        if len(node) == 1:
            return np.ones(node, dtype)
        return (rng.standard_normal(node) * config.initializer_range).astype(dtype)
    return build(param_shapes(config))


# ----------------------------------------------------------------------------- forward / backward

class KVCache(NamedTuple):
    """The decoding state: every layer's keys and values so far, each (B, n, S, d). It grows by one
    position per token — a MatMul-free model's state (one (B, H) vector per layer) does not."""
    k: tuple
    v: tuple

    @property
    def length(self) -> int:
        return self.k[0].shape[2]


class BlockCache(NamedTuple):
    attn_norm: RMSNormCache
    attn: AttentionCache
    mlp_norm: RMSNormCache
    mlp: SwiGLUCache


def block_forward(x: np.ndarray, p: dict, n_heads: int, past_kv=None, eps: float = NORM_EPS,
                  theta: float = 10000.0):
    """r = x + Attention(RMSNorm(x)); out = r + SwiGLU(RMSNorm(r)). Returns (out, cache, (K, V)).

    Shapes: x (B, T, H) -> out (B, T, H).
    """
    n1, c_n1 = op.rmsnorm_forward(x, p["attn_norm"], eps)
    a, c_attn, kv = attention_forward(n1, p["attn"], n_heads, past_kv, theta)
    r = x + a                                                             # residual 1
    n2, c_n2 = op.rmsnorm_forward(r, p["mlp_norm"], eps)
    m, c_mlp = op.swiglu_forward(n2, p["mlp"])
    return r + m, BlockCache(c_n1, c_attn, c_n2, c_mlp), kv               # residual 2


def block_backward(dout: np.ndarray, cache: BlockCache):
    """Backward of ``block_forward``. Returns (dx, grads)."""
    dn2, g_mlp = op.swiglu_backward(dout, cache.mlp)
    dr_norm, dw_mlp_norm = op.rmsnorm_backward(dn2, cache.mlp_norm)
    dr = dout + dr_norm                                                   # residual 2: both paths
    dn1, g_attn = attention_backward(dr, cache.attn)
    dx_norm, dw_attn_norm = op.rmsnorm_backward(dn1, cache.attn_norm)
    return dr + dx_norm, {"attn_norm": dw_attn_norm, "attn": g_attn,       # residual 1: both paths
                          "mlp_norm": dw_mlp_norm, "mlp": g_mlp}


class ModelCache(NamedTuple):
    ids: np.ndarray          # (B, T)
    blocks: list             # [BlockCache] * L
    norm: RMSNormCache
    lm_head: LinearCache
    V: int


def model_forward(params: dict, config: TransformerConfig, ids: np.ndarray, state: KVCache | None = None,
                  keep_cache: bool = True):
    """Full-sequence forward, continuing ``state`` if given. Returns (logits, cache, new_state).

    Shapes: ids (B, T) int -> logits (B, T, V) in the dtype of the parameters.
    ``keep_cache=False`` is inference: no block's cache is kept for a backward (``cache`` is None);
    the KV cache, which is the decoding state, is kept either way.
    """
    h = params["embeddings"][ids]                                         # (B, T, H)
    blocks, ks, vs = [], [], []
    for l in range(config.num_hidden_layers):
        past = None if state is None else (state.k[l], state.v[l])
        h, c_block, (k, v) = block_forward(h, params["layers"][l], config.num_heads, past,
                                           config.rms_norm_eps, config.rope_theta)
        blocks.append(c_block if keep_cache else None)
        ks.append(k)
        vs.append(v)
    hn, c_norm = op.rmsnorm_forward(h, params["norm"], config.rms_norm_eps)
    logits, c_head = linear_forward(hn, params["lm_head"])                # (B, T, V)
    cache = ModelCache(ids, blocks, c_norm, c_head, config.vocab_size) if keep_cache else None
    return logits, cache, KVCache(tuple(ks), tuple(vs))


def model_backward(dlogits: np.ndarray, cache: ModelCache) -> dict:
    """Backward of ``model_forward`` (from an empty state): the gradient tree, shaped like the parameters."""
    dhn, g_head = linear_backward(dlogits, cache.lm_head)
    dh, g_norm = op.rmsnorm_backward(dhn, cache.norm)
    g_layers = []
    for c_block in reversed(cache.blocks):                                # reverse order of the forward
        dh, g_block = block_backward(dh, c_block)
        g_layers.append(g_block)
    g_layers.reverse()
    dE = op.embedding_backward(cache.ids, dh, cache.V)                   # (V, H): rows used several times sum
    return {"embeddings": dE, "layers": g_layers, "norm": g_norm, "lm_head": g_head}


# ----------------------------------------------------------------------------- the model object

class TransformerPP(LanguageModel):
    """A Transformer++ LM with MMfreeLM's interface (``lm.py``): ``forward``, ``prefill``, ``loss_and_grads``,
    ``loss``, ``init_state`` / ``step`` (KV-cache decoding), ``num_params``, ``params``, ``config``."""

    architecture = ARCHITECTURE
    _model_forward = staticmethod(model_forward)
    _model_backward = staticmethod(model_backward)
    _check_params = staticmethod(lambda params, config: check_params(params, config))   # defined below
    _init_params = staticmethod(init_params)

    def init_state(self, batch_size: int) -> KVCache:
        """An empty KV cache: S = 0 positions in every layer."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        c = self.config
        empty = lambda: np.zeros((batch_size, c.num_heads, 0, c.hidden_size // c.num_heads), self.dtype)  # noqa
        L = c.num_hidden_layers
        return KVCache(tuple(empty() for _ in range(L)), tuple(empty() for _ in range(L)))

    def kv_cache_bytes(self, batch_size: int, length: int) -> int:
        """Bytes of the KV cache after ``length`` tokens: 2 L B S H numbers."""
        c = self.config
        return 2 * c.num_hidden_layers * batch_size * length * c.hidden_size * np.dtype(self.dtype).itemsize

    def _check_state(self, state, B: int):
        c = self.config
        if not isinstance(state, KVCache) or len(state.k) != c.num_hidden_layers:
            raise ValueError(f"state must be a KVCache with {c.num_hidden_layers} layers, as returned by "
                             f"init_state() or step()")
        if state.k[0].shape[:2] != (B, c.num_heads):
            raise ValueError(f"state is for a batch of {state.k[0].shape[0]}, got {B} tokens: "
                             f"use init_state({B})")


def check_params(params: dict, config: TransformerConfig) -> None:
    """Every parameter present, with the shape the config implies, floating and finite."""
    shapes = dict(leaves(param_shapes(config)))
    have = dict(leaves(params)) if isinstance(params, dict) else {}
    missing, extra = sorted(set(shapes) - set(have)), sorted(set(have) - set(shapes))
    if missing or extra:
        raise ValueError(f"parameter tree does not match the config: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for path, shape in shapes.items():
        validate.finite_array(have[path], f"parameter {path}", shape)
