"""The canary: each fast twin run beside its readable layer on a small input, compared bit for bit.

``mismatch(name)`` runs layer ``name`` of ``seam.TWINS`` both ways (forward values, the caches, the backward's
gradients; the packed step over two tokens) and returns what differs first, or None. The seam runs it once per
process before the twins are used (``auto``); ``tests/test_fast_twins.py`` runs it for every layer.
Inputs are float32, a few tokens wide, drawn from a fixed seed. Everything must agree bit for bit, as the tests
promise, except the loss value (to 1e-6 relative: the twin takes its log in Numba).
"""
from __future__ import annotations

import importlib

import numba
import numpy as np

from ..seam import TWINS


def _rng():
    return np.random.default_rng(20240606)


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _bitlinear_params(rng, out, inp):
    return {"W": _normal(rng, out, inp) * np.float32(0.2), "g": np.float32(1) + _normal(rng, inp) * np.float32(0.1)}


class Close(float):
    """A value the project promises to a few ulps, not bit for bit (the loss: Numba's log is not NumPy's)."""
    RTOL = 1e-6


def _first_difference(a, b, where: str) -> str | None:
    """Where two results differ (values, dtypes, shapes or structure), or None if they are bit for bit the same."""
    if isinstance(a, Close) and isinstance(b, Close):
        return None if abs(a - b) <= Close.RTOL * abs(b) else f"{where}: {float(a)!r} vs {float(b)!r}"
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        same = np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        return None if same else f"{where}: values differ (max |difference| {np.max(np.abs(a - b))})"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where}: keys {sorted(a)} vs {sorted(b)}"
        return next((d for k in a if (d := _first_difference(a[k], b[k], f"{where}[{k!r}]"))), None)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{where}: {type(a).__name__} of {len(a)} vs {type(b).__name__} of {len(b)}"
        names = getattr(a, "_fields", range(len(a)))
        return next((d for n, x, y in zip(names, a, b) if (d := _first_difference(x, y, f"{where}.{n}"))), None)
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)):
        same = a == b or (np.isnan(a) and np.isnan(b))
        return None if same and type(a) is type(b) else f"{where}: {a!r} vs {b!r}"
    return None if (type(a) is type(b) and a == b) or (a is None and b is None) else f"{where}: {a!r} vs {b!r}"


# ----------------------------------------------------------------------------- one run per layer

def _rmsnorm(f, rng):
    x, w = _normal(rng, 2, 3, 8), np.float32(1) + _normal(rng, 8)
    y, cache = f.rmsnorm_forward(x, w, 1e-6)
    return {"forward": y, "cache": cache, "backward": f.rmsnorm_backward(_normal(rng, 2, 3, 8), cache)}


def _embedding(f, rng):
    ids = np.array([[0, 3, 3], [4, 0, 3]])
    return {"backward": f.embedding_backward(ids, _normal(rng, 2, 3, 4), 5)}


def _bitlinear(f, rng):
    from ..bitlinear import pack_bitlinear
    x, p = _normal(rng, 2, 3, 8), _bitlinear_params(rng, 6, 8)
    y, cache = f.bitlinear_forward(x, p)
    # W s_w = ±1/2, ±3/2 exactly (mean|W| = 1/4): the weight quantizer's rounding ties are on the canary too
    ties = {"W": np.float32(0.25) * np.array([[0.5, -1.5, 0.5, -1.5, 1, -1, 1, -1]] * 6, np.float32), "g": p["g"]}
    return {"forward": y, "cache": cache, "backward": f.bitlinear_backward(_normal(rng, 2, 3, 6), cache),
            "packed forward": f.bitlinear_forward(x, pack_bitlinear(p)), "ties": f.bitlinear_forward(x, ties)}


def _mlgru(f, rng):
    H = 8
    p = {k: _bitlinear_params(rng, H, H) for k in ("i_proj", "f_proj", "g_proj", "o_proj")}
    p["g_norm"] = np.float32(1) + _normal(rng, H)
    x, h0, lb = _normal(rng, 2, 3, H), _normal(rng, 2, H), rng.uniform(0, 0.9, H).astype(np.float32)
    out = {}
    for bounded in (False, True):
        y, cache = f.mlgru_forward(x, p, lb if bounded else None, h0, 1e-6)
        out[f"bounded={bounded}"] = {"forward": y, "cache": cache,
                                     "backward": f.mlgru_backward(_normal(rng, 2, 3, H), cache)}
    return out


def _glu(f, rng):
    p = {"gate_proj": _bitlinear_params(rng, 16, 8), "down_proj": _bitlinear_params(rng, 8, 8)}
    y, cache = f.glu_forward(_normal(rng, 2, 3, 8), p)
    return {"forward": y, "cache": cache, "backward": f.glu_backward(_normal(rng, 2, 3, 8), cache)}


def _cross_entropy(f, rng):
    labels = np.array([[1, 4, -100, 2], [0, 6, 5, 3]])
    loss, cache = f.cross_entropy_forward(_normal(rng, 2, 4, 7) * np.float32(3), labels)
    return {"forward": Close(loss), "cache": cache, "backward": f.cross_entropy_backward(cache)}


def _adamw(f, rng):
    p, g, m, v = _normal(rng, 4, 5), _normal(rng, 4, 5), _normal(rng, 4, 5), np.abs(_normal(rng, 4, 5))
    f.adamw_update(p, g, m, v, 1e-2, 0.9, 0.95, 1 - 0.9 ** 3, 1 - 0.95 ** 3, 1e-8, 0.01)
    return {"parameter": p, "first moment": m, "second moment": v}


def _swiglu(f, rng):
    p = {"gate_proj": {"W": _normal(rng, 6, 8)}, "up_proj": {"W": _normal(rng, 6, 8)},
         "down_proj": {"W": _normal(rng, 8, 6)}}
    y, cache = f.swiglu_forward(_normal(rng, 2, 3, 8), p)
    return {"forward": y, "cache": cache, "backward": f.swiglu_backward(_normal(rng, 2, 3, 8), cache)}


def _packed_step(f, rng):
    from ..config import MMfreeConfig
    from ..model import MMfreeLM
    cfg = MMfreeConfig(vocab_size=11, hidden_size=8, num_hidden_layers=2, intermediate_size=16)
    model = MMfreeLM.init(cfg, seed=3)
    model.params["lower_bounds"][:] = _normal(rng, 2, 8)
    packed = model.pack()
    state = packed.init_state(1)
    out = {}
    for t, tok in enumerate((3, 7)):
        logits, state = f.packed_step(packed, np.array([tok]), state)
        out[f"token {t}"] = {"logits": logits, "state": state}
    return out


RUNS = {"rmsnorm": _rmsnorm, "embedding": _embedding, "bitlinear": _bitlinear, "mlgru": _mlgru, "glu": _glu,
        "cross_entropy": _cross_entropy, "adamw": _adamw, "swiglu": _swiglu, "packed_step": _packed_step}


def mismatch(name: str) -> str | None:
    """Run layer ``name`` from its readable file and from its twin on the same input; what differs, or None.

    (On one Numba thread: the inputs are tiny, and on a busy machine a parallel region waits for every thread.)
    """
    t = TWINS[name]
    ref, twin = importlib.import_module(t.reference), importlib.import_module(t.twin)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return _first_difference(RUNS[name](ref, _rng()), RUNS[name](twin, _rng()), name)
    except Exception as e:                     # an edit that breaks the layer shows when the layer runs, not here
        return f"{name}: {type(e).__name__}: {e}"
    finally:
        numba.set_num_threads(threads)


def agrees(name: str) -> bool:
    return mismatch(name) is None
