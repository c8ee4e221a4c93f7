"""Parameter trees: nested dicts and lists of arrays, walked in one fixed order.

The model's parameters, its gradients and the optimizer's moments are all trees of the same
shape. ``leaves`` names each array by its path (``layers.0.attn.f_proj.W``), ``tree_map``
builds a new tree of the same shape. Lists and dicts are containers; anything else
(an array, a shape tuple) is a leaf.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def leaves(tree, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Yield (path, array) for every array in the tree, in a fixed order."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for k, v in enumerate(tree):
            yield from leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


def tree_map(fn: Callable, tree, *rest):
    """A tree of the same shape with ``fn(leaf, *matching_leaves_of_rest)`` at each leaf."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree)]
    return fn(tree, *rest)


def paths(tree, prefix: str = ""):
    """A tree of the same shape whose leaves are their own paths (the names ``leaves`` gives them)."""
    if isinstance(tree, dict):
        return {k: paths(v, f"{prefix}{k}.") for k, v in tree.items()}
    if isinstance(tree, list):
        return [paths(v, f"{prefix}{i}.") for i, v in enumerate(tree)]
    return prefix[:-1]
