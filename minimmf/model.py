"""The MatMul-free language model: embedding, L blocks, final RMSNorm, ternary LM head.

SPEC §5:
    h = E[ids]                                   # (B, T, H), no positional encoding
    lb = lower_bounds_forward(lower_bounds)      # (L, H) forget-gate floors
    for l in range(L): h = block_l(h, lb[l] if l > 0 else None)
    h = RMSNorm(h; w_final)
    logits = BitLinear_head(h)                   # ternary, its own RMSNorm, NOT tied to E

Parameter tree (minimmf's names; ``interop.py`` maps them to the released key names):

    {"embeddings": (V, H), "lower_bounds": (L, H),
     "layers": [{"attn_norm": (H,),
                 "attn": {"i_proj", "f_proj", "g_proj", "o_proj": {"W": (H, H), "g": (H,)},
                          "g_norm": (H,)},
                 "mlp_norm": (H,),
                 "mlp": {"gate_proj": {"W": (2I, H), "g": (H,)},
                         "down_proj": {"W": (H, I), "g": (I,)}}}, ...],
     "norm": (H,), "lm_head": {"W": (V, H), "g": (H,)}}

Layers are called through ``op`` (``seam.py``): the readable layer, or its fast twin when that gives the same bits.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import validate
from .bitlinear import BitLinearCache
from .block import block_backward, block_forward
from .config import MMfreeConfig
from .functional import RMSNormCache
from .lm import LanguageModel
from .mlgru import LowerBoundCache, lower_bounds_backward, lower_bounds_forward
from .seam import op
from .tree import leaves

MLGRU_PROJECTIONS = ("i_proj", "f_proj", "g_proj", "o_proj")


# ----------------------------------------------------------------------------- initialization

def init_params(config: MMfreeConfig, seed: int = 0, dtype=np.float32) -> dict:
    """The reference initialization (SPEC §6).

    MLGRU projections (i, f, g, o): Xavier-uniform with gain 2**-2.5, i.e. U(-a, a) with
    a = 2**-2.5 * sqrt(6 / (fan_in + fan_out)). Every other weight: N(0, 0.02). Norm gains 1,
    ``lower_bounds`` 0.
    """
    c = config
    rng = np.random.default_rng(seed)
    H, I, V, L = c.hidden_size, c.I, c.vocab_size, c.num_hidden_layers
    std = c.initializer_range

    def normal(*shape):
        return (rng.standard_normal(shape) * std).astype(dtype)

    def xavier(out, inp):
        a = 2 ** -2.5 * np.sqrt(6.0 / (inp + out))
        return rng.uniform(-a, a, size=(out, inp)).astype(dtype)

    def ones(n):
        return np.ones(n, dtype=dtype)

    layers = []
    for _ in range(L):
        attn = {name: {"W": xavier(H, H), "g": ones(H)} for name in MLGRU_PROJECTIONS}
        attn["g_norm"] = ones(H)
        mlp = {"gate_proj": {"W": normal(2 * I, H), "g": ones(H)},
               "down_proj": {"W": normal(H, I), "g": ones(I)}}
        layers.append({"attn_norm": ones(H), "attn": attn, "mlp_norm": ones(H), "mlp": mlp})
    return {"embeddings": normal(V, H), "lower_bounds": np.zeros((L, H), dtype),
            "layers": layers, "norm": ones(H), "lm_head": {"W": normal(V, H), "g": ones(H)}}


def param_shapes(config: MMfreeConfig) -> dict:
    """The tree of parameter shapes for a configuration (what ``init_params`` builds)."""
    H, I, V, L = config.hidden_size, config.I, config.vocab_size, config.num_hidden_layers
    bl = lambda o, i: {"W": (o, i), "g": (i,)}                       # noqa: E731
    layer = {"attn_norm": (H,),
             "attn": {**{n: bl(H, H) for n in MLGRU_PROJECTIONS}, "g_norm": (H,)},
             "mlp_norm": (H,), "mlp": {"gate_proj": bl(2 * I, H), "down_proj": bl(H, I)}}
    return {"embeddings": (V, H), "lower_bounds": (L, H), "layers": [layer] * L,
            "norm": (H,), "lm_head": bl(V, H)}


# ----------------------------------------------------------------------------- forward / backward

class State(NamedTuple):
    """The recurrent decoding state: one MLGRU hidden state per layer, each (B, H)."""
    h: tuple


class ModelCache(NamedTuple):
    ids: np.ndarray                 # (B, T)
    lower_bounds: LowerBoundCache | None
    blocks: list                    # [BlockCache] * L
    norm: RMSNormCache
    lm_head: BitLinearCache
    V: int


def model_forward(params: dict, config: MMfreeConfig, ids: np.ndarray, state: State | None = None,
                  keep_cache: bool = True):
    """Full-sequence forward. Returns (logits, cache, state_after).

    Shapes: ids (B, T) int in [0, V) -> logits (B, T, V) in the dtype of the parameters.
    ``state`` (optional) continues from an earlier call: feeding a sequence in pieces with the
    state handed over gives the same logits as feeding it whole.
    ``keep_cache=False`` is inference: no block's cache is kept for a backward, so memory holds the
    activations of at most two blocks (the one running and the last one's, until it returns) instead
    of L, and ``cache`` is None.
    """
    L = config.num_hidden_layers
    h = params["embeddings"][ids]                                    # (B, T, H)
    lb, c_lb = (lower_bounds_forward(params["lower_bounds"]) if config.use_lower_bound
                else (None, None))
    blocks, h_last = [], []
    for l in range(L):
        lb_l = lb[l] if (lb is not None and l > 0) else None         # layer 0 is never bounded
        h0 = None if state is None else state.h[l]
        h, c_block, hl = block_forward(h, params["layers"][l], lb_l, h0, config.rms_norm_eps)
        blocks.append(c_block if keep_cache else None)
        h_last.append(hl)
    hn, c_norm = op.rmsnorm_forward(h, params["norm"], config.rms_norm_eps)
    logits, c_head = op.bitlinear_forward(hn, params["lm_head"])       # (B, T, V)
    cache = ModelCache(ids, c_lb, blocks, c_norm, c_head, config.vocab_size) if keep_cache else None
    return logits, cache, State(tuple(h_last))


def model_backward(dlogits: np.ndarray, cache: ModelCache) -> dict:
    """Backward of ``model_forward``: the gradient tree, shaped like the parameters."""
    dhn, g_head = op.bitlinear_backward(dlogits, cache.lm_head)
    dh, g_norm = op.rmsnorm_backward(dhn, cache.norm)
    g_layers, dlb = [], []
    for c_block in reversed(cache.blocks):                           # reverse order of the forward
        dh, g_block, dlb_l, _ = block_backward(dh, c_block)
        g_layers.append(g_block)
        dlb.append(dlb_l)
    g_layers.reverse()
    dlb.reverse()
    B, T, H = dh.shape
    dE = op.embedding_backward(cache.ids, dh, cache.V)               # (V, H): rows used several times sum
    if cache.lower_bounds is None:
        d_lower = np.zeros((len(cache.blocks), H), dtype=dh.dtype)
    else:
        dlb_full = np.stack([np.zeros(H, dh.dtype) if d is None else d for d in dlb])   # (L, H)
        d_lower = lower_bounds_backward(dlb_full, cache.lower_bounds)
    return {"embeddings": dE, "lower_bounds": d_lower, "layers": g_layers,
            "norm": g_norm, "lm_head": g_head}


# ----------------------------------------------------------------------------- the model object

class MMfreeLM(LanguageModel):
    """A MatMul-free LM: a config and a parameter tree, with the public API (``lm.py``).

    ``forward(input_ids) -> logits``; ``loss_and_grads(input_ids, labels) -> (loss, grads)``;
    ``init_state(B)`` and ``step(token_ids, state) -> (logits, state)`` for recurrent decoding;
    ``pack()`` for integer inference on packed 2-bit weights.
    """

    _model_forward = staticmethod(model_forward)
    _model_backward = staticmethod(model_backward)
    _check_params = staticmethod(lambda params, config: check_params(params, config))   # defined below
    _init_params = staticmethod(init_params)

    # -- recurrent decoding

    def init_state(self, batch_size: int) -> State:
        """The empty state: every layer's MLGRU hidden state is zero, (B, H)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        H = self.config.hidden_size
        return State(tuple(np.zeros((batch_size, H), self.dtype)
                           for _ in range(self.config.num_hidden_layers)))

    def _check_state(self, state, B: int):
        L, H = self.config.num_hidden_layers, self.config.hidden_size
        if not isinstance(state, State) or len(state.h) != L:
            raise ValueError(f"state must be a State with {L} layers, as returned by init_state() "
                             f"or step()")
        if any(np.shape(h) != (B, H) for h in state.h):
            raise ValueError(f"state holds arrays of shape {np.shape(state.h[0])}, expected ({B}, {H}) "
                             f"for a batch of {B}: use init_state({B})")

    # -- packed integer inference

    def pack(self) -> "PackedMMfreeLM":
        """A copy for inference whose BitLinears hold packed 2-bit codes and one scale each."""
        from .packed import PackedMMfreeLM                          # the inference variant builds on this class
        packed = PackedMMfreeLM(self.config, self.params)
        packed.tokenizer = getattr(self, "tokenizer", None)         # load_pretrained attaches one
        return packed


def check_params(params: dict, config: MMfreeConfig) -> None:
    """Every parameter present, with the shape the config implies, floating and finite."""
    shapes = dict(leaves(param_shapes(config)))
    have = dict(leaves(params)) if isinstance(params, dict) else {}
    missing = sorted(set(shapes) - set(have))
    extra = sorted(set(have) - set(shapes))
    if missing or extra:
        raise ValueError(f"parameter tree does not match the config: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    dtypes = set()
    for path, shape in shapes.items():
        validate.finite_array(have[path], f"parameter {path}", shape)
        dtypes.add(np.asarray(have[path]).dtype)
    if len(dtypes) > 1:
        raise ValueError(f"parameters mix dtypes {sorted(map(str, dtypes))}; cast them to one dtype")
