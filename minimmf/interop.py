"""The one table between minimmf's parameter names and the released checkpoint's key names.

SPEC §7. ``from_reference(config, state_dict)`` builds a model from a released ``config.json``
dict and a ``{key: array}`` state dict; ``to_reference(model, tree=None)`` goes back, for the
model's parameters or for any tree of the same shape (e.g. gradients). Nothing else in the
package knows the released key names.

Taught in chapter 10 (``chapters/10-released-models.md``).
"""
from __future__ import annotations

import numpy as np

from .config import MMfreeConfig
from .model import MMfreeLM, param_shapes
from .tree import leaves, paths, tree_map


def key_table(config: MMfreeConfig) -> dict[str, str]:
    """{minimmf path: released key}, e.g. 'layers.0.attn.f_proj.W' -> 'model.layers.0.attn.f_proj.weight'."""
    table = {"lower_bounds": "model.lower_bounds",            # in the released state-dict order
             "embeddings": "model.embeddings.weight"}

    def bitlinear(ours, theirs):
        table[ours + ".W"] = theirs + ".weight"        # latent float weights
        table[ours + ".g"] = theirs + ".norm.weight"   # BitLinear's own RMSNorm gain

    for l in range(config.num_hidden_layers):
        ours, theirs = f"layers.{l}.", f"model.layers.{l}."
        table[ours + "attn_norm"] = theirs + "attn_norm.weight"
        for proj in ("i_proj", "f_proj", "g_proj"):
            bitlinear(ours + "attn." + proj, theirs + "attn." + proj)
        table[ours + "attn.g_norm"] = theirs + "attn.g_norm.weight"
        bitlinear(ours + "attn.o_proj", theirs + "attn.o_proj")
        table[ours + "mlp_norm"] = theirs + "mlp_norm.weight"
        bitlinear(ours + "mlp.gate_proj", theirs + "mlp.gate_proj")
        bitlinear(ours + "mlp.down_proj", theirs + "mlp.down_proj")
    table["norm"] = "model.norm.weight"
    bitlinear("lm_head", "lm_head")
    return table


def from_reference(config: dict, state_dict: dict, dtype=np.float32) -> MMfreeLM:
    """A model from a released ``config.json`` dict and a state dict with the released key names.

    Weights may be float16/bfloat16-as-float32/float32/float64 arrays; they are cast to ``dtype``.
    Raises ValueError naming the key on missing, extra or mis-shaped tensors, and
    ConfigError on unsupported options (use_short_conv, expand_ratio != 1, ...).
    """
    cfg = MMfreeConfig.from_reference(config)
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict must be a dict {{key: array}}, got {type(state_dict).__name__}")
    table = key_table(cfg)
    shapes = dict(leaves(param_shapes(cfg)))
    wanted = set(table.values())
    missing = sorted(wanted - set(state_dict))
    extra = sorted(set(state_dict) - wanted)
    if missing:
        raise ValueError(f"state_dict is missing {len(missing)} key(s) the config needs, e.g. "
                         f"{missing[:3]} (config: {cfg.num_hidden_layers} layers, "
                         f"hidden_size {cfg.hidden_size})")
    if extra:
        raise ValueError(f"state_dict has {len(extra)} key(s) this config does not use, e.g. "
                         f"{extra[:3]} (does num_hidden_layers={cfg.num_hidden_layers} match the "
                         f"checkpoint?)")

    def param(ours):
        theirs = table[ours]
        arr = np.asarray(state_dict[theirs])
        if arr.shape != shapes[ours]:
            raise ValueError(f"state_dict[{theirs!r}] has shape {arr.shape}, but the config implies "
                             f"{shapes[ours]} (vocab_size={cfg.vocab_size}, hidden_size={cfg.hidden_size}, "
                             f"intermediate size {cfg.I})")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"state_dict[{theirs!r}] has dtype {arr.dtype}; expected floating point")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"state_dict[{theirs!r}] contains NaN or inf")
        return np.array(arr, dtype=dtype)                              # a copy: never alias the input
    params = tree_map(param, paths(param_shapes(cfg)))
    return MMfreeLM(cfg, params)


def to_reference(model: MMfreeLM, tree: dict | None = None) -> dict[str, np.ndarray]:
    """The model's parameters (``tree=None``) or a tree shaped like them (gradients, optimizer
    moments), as ``{released key: array}`` in the released shapes."""
    src = model.params if tree is None else tree
    table = key_table(model.config)
    flat = dict(leaves(src))
    if set(flat) != set(table):
        raise ValueError("tree does not have the shape of the model's parameters: "
                         f"missing {sorted(set(table) - set(flat))[:3]}, "
                         f"unexpected {sorted(set(flat) - set(table))[:3]}")
    return {table[path]: np.asarray(flat[path]) for path in table}
