"""The MLGRU recurrence h_t = f_t * h_{t-1} + i_t (element-wise), forward and reverse-time backward.

The recurrence is sequential in time T but independent across the B x D channels, so the kernels loop over T
inside and split B x D across threads. Each kernel has a plain-NumPy reference beside it (a loop over T,
vectorised over B x D); ``tests/test_kernels_scan.py`` proves them equal and checks the backward by finite
differences.

Backward: with g_t the total gradient reaching h_t (its own dh_t plus what flows back through h_{t+1}):

    g_{T-1} = dh_{T-1};   g_t = dh_t + g_{t+1} * f_{t+1}
    di_t = g_t;           df_t = g_t * h_{t-1}  (h_{-1} = h0);        dh0 = g_0 * f_0

T = 0 is rejected with a ValueError: an empty sequence has no step to run, and the callers (MLGRU forward, a
decode step) always have T >= 1, so an empty input is a bug we want to hear about.
"""

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

import numpy as np
from numba import njit, prange

CHUNK = 512  # channels per work item: whole rows of up to 512 channels stream best (measured at D = 512)
SERIAL_BELOW = 1 << 17  # B * T * D element-steps under which one thread beats a prange launch (measured at (12, 64, 128))


def _check_float(name, a, ndim, dtype=None):
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise ValueError(f"{name} must have the dtype of f ({dtype}), got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _check_inputs(f, i, h0, i_name="i"):
    """Validate f, i (B, T, D) and h0 (B, D) of one float dtype; return them C-contiguous."""
    f = _check_float("f", f, 3)
    i = _check_float(i_name, i, 3, f.dtype)
    h0 = _check_float("h0", h0, 2, f.dtype)
    if i.shape != f.shape:
        raise ValueError(f"{i_name} must have the shape of f {f.shape}, got {i.shape}")
    B, T, D = f.shape
    if T == 0:
        raise ValueError(f"f and i must have at least one time step (T >= 1), got shape {f.shape}")
    if h0.shape != (B, D):
        raise ValueError(f"h0 must have shape (B, D) = {(B, D)}, got {h0.shape}")
    return np.ascontiguousarray(f), np.ascontiguousarray(i), np.ascontiguousarray(h0)


# ---------------------------------------------------------------- forward

def scan_forward_ref(f, i, h0) -> np.ndarray:
    """Specification: h_t = f_t * h_{t-1} + i_t, with h_{-1} = h0.

    Shapes: f (B, T, D), i (B, T, D), h0 (B, D) float32|float64 -> h (B, T, D)
    """
    f, i, h0 = _check_inputs(f, i, h0)
    h = np.empty_like(f)
    prev = h0
    for t in range(f.shape[1]):
        h[:, t] = f[:, t] * prev + i[:, t]
        prev = h[:, t]
    return h


@njit(inline="always")
def _forward_item(f, i, h0, h, item, nchunks):
    """Channels [d0, d1) of sequence b, all T steps; the running state lives in a private buffer."""
    b = item // nchunks
    d0 = (item % nchunks) * CHUNK
    d1 = min(d0 + CHUNK, f.shape[2])
    hp = h0[b, d0:d1].copy()  # (d1 - d0,) h_{t-1}; private, so the loop below vectorises without alias checks
    for t in range(f.shape[1]):
        ft, it, ht = f[b, t, d0:d1], i[b, t, d0:d1], h[b, t, d0:d1]  # 1-D row views vectorise
        for d in range(d1 - d0):
            v = ft[d] * hp[d] + it[d]
            hp[d] = v
            ht[d] = v


@njit(parallel=True, cache=True)
def _forward_parallel(f, i, h0, h, nchunks):
    for item in prange(f.shape[0] * nchunks):
        _forward_item(f, i, h0, h, item, nchunks)


@njit(cache=True)
def _forward_serial(f, i, h0, h, nchunks):
    for item in range(f.shape[0] * nchunks):
        _forward_item(f, i, h0, h, item, nchunks)


def scan_forward(f, i, h0) -> np.ndarray:
    """h_t = f_t * h_{t-1} + i_t: parallel over B x D, sequential over T (equals scan_forward_ref exactly).

    Shapes: f (B, T, D), i (B, T, D), h0 (B, D) float32|float64 -> h (B, T, D)
    """
    f, i, h0 = _check_inputs(f, i, h0)
    B, T, D = f.shape
    h = np.empty_like(f)
    nchunks = -(-D // CHUNK)
    if B * T * D < SERIAL_BELOW:
        _forward_serial(f, i, h0, h, nchunks)
    else:
        _forward_parallel(f, i, h0, h, nchunks)
    return h


# ---------------------------------------------------------------- backward

def _check_backward(dh, f, h, h0):
    f, h, h0 = _check_inputs(f, h, h0, i_name="h")  # h has the shape and dtype f has
    dh = _check_float("dh", dh, 3, f.dtype)
    if dh.shape != f.shape:
        raise ValueError(f"dh must have the shape of f {f.shape}, got {dh.shape}")
    return np.ascontiguousarray(dh), f, h, h0


def scan_backward_ref(dh, f, h, h0):
    """Specification of the reverse-time backward (module docstring): g_t = dh_t + g_{t+1} * f_{t+1}.

    Shapes: dh, f, h (B, T, D), h0 (B, D) -> df (B, T, D), di (B, T, D), dh0 (B, D)
    """
    dh, f, h, h0 = _check_backward(dh, f, h, h0)
    T = f.shape[1]
    df = np.empty_like(f)
    di = np.empty_like(f)
    g = dh[:, T - 1].copy()  # (B, D)
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            g = dh[:, t] + g * f[:, t + 1]
        di[:, t] = g
        df[:, t] = g * (h[:, t - 1] if t > 0 else h0)
    dh0 = g * f[:, 0]
    return df, di, dh0


@njit(inline="always")
def _backward_item(dh, f, h, h0, df, di, dh0, item, nchunks):
    """Channels [d0, d1) of sequence b, T steps in reverse; g_t lives in a private buffer."""
    b = item // nchunks
    d0 = (item % nchunks) * CHUNK
    d1 = min(d0 + CHUNK, f.shape[2])
    n = d1 - d0
    T = f.shape[1]
    g = dh[b, T - 1, d0:d1].copy()  # (n,) g_{T-1} = dh_{T-1}
    for t in range(T - 1, -1, -1):
        hp = h[b, t - 1, d0:d1] if t > 0 else h0[b, d0:d1]  # h_{t-1}
        dit, dft = di[b, t, d0:d1], df[b, t, d0:d1]
        if t == T - 1:
            for d in range(n):
                dit[d] = g[d]
                dft[d] = g[d] * hp[d]
        else:
            dht, fn = dh[b, t, d0:d1], f[b, t + 1, d0:d1]
            for d in range(n):
                gd = dht[d] + g[d] * fn[d]  # g_t = dh_t + g_{t+1} f_{t+1}
                g[d] = gd
                dit[d] = gd
                dft[d] = gd * hp[d]
    f0 = f[b, 0, d0:d1]
    for d in range(n):
        dh0[b, d0 + d] = g[d] * f0[d]


@njit(parallel=True, cache=True)
def _backward_parallel(dh, f, h, h0, df, di, dh0, nchunks):
    for item in prange(f.shape[0] * nchunks):
        _backward_item(dh, f, h, h0, df, di, dh0, item, nchunks)


@njit(cache=True)
def _backward_serial(dh, f, h, h0, df, di, dh0, nchunks):
    for item in range(f.shape[0] * nchunks):
        _backward_item(dh, f, h, h0, df, di, dh0, item, nchunks)


def scan_backward(dh, f, h, h0):
    """Reverse-time backward of scan_forward (equals scan_backward_ref exactly).

    Shapes: dh, f, h (B, T, D), h0 (B, D) float32|float64 -> df (B, T, D), di (B, T, D), dh0 (B, D)
    """
    dh, f, h, h0 = _check_backward(dh, f, h, h0)
    B, T, D = f.shape
    df = np.empty_like(f)
    di = np.empty_like(f)
    dh0 = np.empty_like(h0)
    nchunks = -(-D // CHUNK)
    if B * T * D < SERIAL_BELOW:
        _backward_serial(dh, f, h, h0, df, di, dh0, nchunks)
    else:
        _backward_parallel(dh, f, h, h0, df, di, dh0, nchunks)
    return df, di, dh0
