"""The model architectures minimmf trains and saves, each described once.

    "mmfree"         MMfreeLM (model.py): saved in the released layout (config.json with model_type
                     "hgrn_bit", released key names, interop.py), so the reference code reads it too
    "transformer++"  the float baseline (baseline/): saved under minimmf's own parameter paths, with
                     ``"architecture": "transformer++"`` in config.json

Everything that has to tell them apart (building, saving, loading, describing) asks this table
instead of comparing strings: ``architecture_of(model)``, ``architecture_of_config(config_json)``,
``ARCHITECTURES[name]``. A new architecture is one more entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .tree import leaves, paths, tree_map


@dataclass(frozen=True)
class Architecture:
    name: str                    # the --architecture value and the config.json "architecture" field
    title: str                   # for people: "MMfreeLM", "Transformer++"
    ternary: bool                # BitLinear weights (packed inference, ternary-code statistics)
    build: Callable              # (vocab_size, hidden_size, layers, intermediate_size, seed) -> model
    to_saved: Callable           # model -> (config.json dict, {name: array})
    from_saved: Callable         # (config.json dict, {name: array}) -> model (ValueError/KeyError if they disagree)


def _mmfree_build(vocab_size, hidden_size, layers, intermediate_size, seed):
    from .config import MMfreeConfig
    from .model import MMfreeLM
    return MMfreeLM.init(MMfreeConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                                      intermediate_size=intermediate_size), seed=seed)


def _mmfree_to_saved(model):
    from .interop import to_reference
    return model.config.to_reference(), to_reference(model)


def _mmfree_from_saved(config, state_dict):
    from .interop import from_reference
    return from_reference(config, state_dict)


def _tpp_build(vocab_size, hidden_size, layers, intermediate_size, seed):
    from .baseline import TransformerConfig, TransformerPP
    return TransformerPP.init(TransformerConfig.for_width(vocab_size, hidden_size, layers, intermediate_size),
                              seed=seed)


def _tpp_to_saved(model):
    return model.config.to_json(), dict(leaves(model.params))


def _tpp_from_saved(config, state_dict):
    from .baseline import TransformerConfig, TransformerPP, param_shapes
    tc = TransformerConfig.from_json(config)
    shapes = param_shapes(tc)
    return TransformerPP(tc, tree_map(lambda _, p: np.asarray(state_dict[p]), shapes, paths(shapes)))


MMFREE = Architecture("mmfree", "MMfreeLM", True, _mmfree_build, _mmfree_to_saved, _mmfree_from_saved)
TRANSFORMER_PP = Architecture("transformer++", "Transformer++", False, _tpp_build, _tpp_to_saved, _tpp_from_saved)
ARCHITECTURES = {a.name: a for a in (MMFREE, TRANSFORMER_PP)}


def architecture_of(model) -> Architecture:
    """The entry of a model (MMfreeLM and PackedMMfreeLM: "mmfree")."""
    return ARCHITECTURES[getattr(model, "architecture", MMFREE.name)]


def architecture_of_config(config: dict) -> Architecture:
    """The entry a saved config.json describes: its "architecture" field, else a released MMfreeLM."""
    name = config.get("architecture", MMFREE.name) if isinstance(config, dict) else MMFREE.name
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"config.json names architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]
