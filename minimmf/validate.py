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
