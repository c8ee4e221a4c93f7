"""Checks at the public entry points: bad input fails here, with a message naming the argument.

Deeper code may assume what these functions guarantee (integer ids in range, finite floats,
the expected shapes), so a mistake surfaces as one clear ``ValueError`` — never as a
traceback from inside NumPy or as a silently wrong number.
"""
from __future__ import annotations

import numpy as np


def token_ids(ids, vocab_size: int, name: str = "input_ids", ndim: int = 2) -> np.ndarray:
    """Return ``ids`` as an int64 array of ``ndim`` dims with every value in [0, vocab_size)."""
    arr = np.asarray(ids)
    want = "(B, T)" if ndim == 2 else "(B,)"
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); pass at least one token per row")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return arr.astype(np.int64, copy=False)


def labels(lab, input_shape: tuple, vocab_size: int) -> np.ndarray:
    """Labels: same shape as input_ids, each in [0, vocab_size) or -100 (ignored)."""
    arr = np.asarray(lab)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must hold integer token ids, got dtype {arr.dtype}")
    if arr.shape != tuple(input_shape):
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_shape)}, got {arr.shape}")
    bad = (arr != -100) & ((arr < 0) | (arr >= vocab_size))
    if bad.any():
        raise ValueError(f"labels holds {int(arr[bad][0])}: labels must be in [0, {vocab_size}) "
                         f"or -100 (ignored)")
    return arr.astype(np.int64, copy=False)


def finite_array(x, name: str, shape: tuple | None = None) -> np.ndarray:
    """A floating array with the given shape (if any) and no NaN or inf."""
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        n = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {n} NaN or inf value(s)")
    return arr


def _float_arrays(leaf):
    """The floating arrays a parameter leaf holds: the leaf itself, or the array fields of a packed
    BitLinear (a NamedTuple: its gain ``g``). Other packed objects (the compact embedding table) are
    built once from checked arrays and never written, so they are not re-read on every call."""
    if isinstance(leaf, np.ndarray):
        return [("", leaf)] if np.issubdtype(leaf.dtype, np.floating) else []
    if isinstance(leaf, tuple) and hasattr(leaf, "_fields"):
        return [(f".{k}", a) for k, a in zip(leaf._fields, leaf)
                if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating)]
    return []


def _all_finite(a: np.ndarray) -> bool:
    """True when no entry is NaN or inf (one fast reduction; the exact test only when the sum is not finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(a, axis=None)):
            return True
    return bool(np.isfinite(a).all())


def finite_tree(tree, what: str = "parameter") -> None:
    """Raise ValueError naming the first array of ``tree`` that holds NaN or inf.

    Called at the top of every public model entry point (forward, prefill, step, loss,
    loss_and_grads), so a parameter changed after construction (``m.params["norm"][0] = np.nan``)
    is named instead of turning every output into NaN.
    """
    from .tree import leaves
    for path, leaf in leaves(tree):
        for attr, a in _float_arrays(leaf):
            if not _all_finite(a):
                n = int(a.size - np.count_nonzero(np.isfinite(a)))
                raise ValueError(f"{what} {path}{attr} contains {n} NaN or inf value(s); "
                                 f"the model cannot compute with it")


def finite_logits(params, logits: np.ndarray, state):
    """(logits, state) of a decoding step, after one cheap check of the (B, V) logits: a decode step
    must stay fast, so the parameters are walked only when the logits are not finite, to name the
    parameter responsible (every parameter that matters reaches the logits)."""
    if not _all_finite(logits):
        finite_tree(params)
        raise FloatingPointError("the logits are NaN or inf although every parameter is finite: "
                                 "the computation overflowed")
    return logits, state


def optimizer_inputs(params, grads, m, v) -> None:
    """Before any kernel sees them: params, grads and the moments m, v are trees of the same paths,
    and each leaf has the parameter's shape and dtype (a kernel trusting a wrong shape reads past
    the end of an array). Gradients must be finite: one NaN would poison every moment."""
    from .tree import leaves
    p_leaves = dict(leaves(params))
    for name, tree in (("grads", grads), ("optimizer moment m", m), ("optimizer moment v", v)):
        if tree is None:
            if name == "grads":
                raise ValueError("grads is None: pass the gradient tree from loss_and_grads")
            continue
        got = dict(leaves(tree))
        if list(got) != list(p_leaves):
            missing = sorted(set(p_leaves) - set(got))[:3]
            extra = sorted(set(got) - set(p_leaves))[:3]
            raise ValueError(f"{name} does not match the parameter tree: missing {missing}, unexpected "
                             f"{extra}" + ("" if missing or extra else " (different order)"))
        for path, p in p_leaves.items():
            a = got[path]
            if not isinstance(a, np.ndarray) or a.shape != p.shape or a.dtype != p.dtype:
                shape = getattr(a, "shape", None)
                dtype = getattr(a, "dtype", type(a).__name__)
                raise ValueError(f"{name} {path} has shape {shape} and dtype {dtype}; "
                                 f"expected the parameter's {p.shape} {p.dtype}")
    for path, g in leaves(grads):
        if not _all_finite(g):
            raise ValueError(f"gradient {path} contains NaN or inf; the update was not applied "
                                     f"(the parameters and optimizer moments are unchanged)")


def int_in_range(value, flag: str, lo: int, hi: int, what: str = "") -> int:
    """An integer in [lo, hi], or ValueError naming ``flag``, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{flag} must be an integer{' (' + what + ')' if what else ''}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{flag} must be between {lo:,} and {hi:,}{' (' + what + ')' if what else ''}, "
                         f"got {value:,}")
    return int(value)
