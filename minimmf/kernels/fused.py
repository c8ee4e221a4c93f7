"""Fused element-wise kernels for training: one pass over memory where the NumPy reference makes five to ten.

Why this file exists: at the training shapes (tokens N = B*T of a few thousand, widths of 128-2048) a training
step spends more time in element-wise NumPy passes (RMSNorm, per-token quantization, gates, softmax; each pass
allocates and writes a fresh array) than in its BLAS products. Each kernel here does the work of one readable
NumPy function in one pass per row and gives the SAME numbers:

    kernel                      specification (plain NumPy, the readable version)
    rmsnorm_forward             functional.rmsnorm_forward
    rmsnorm_backward            functional.rmsnorm_backward
    bitlinear_front             functional.rmsnorm_forward + quant.activation_quant (BitLinear's input side)
    weight_quant                quant.weight_quant (+ the dequantized W_q the backward needs)
    mlgru_gates_forward/_backward, mlgru_output_forward/_backward       mlgru.mlgru_forward / mlgru_backward
    glu_act_forward/_backward   glu.glu_forward / glu_backward (silu(gate) * up)
    cross_entropy_forward/_backward                                     loss.py
    embedding_backward          np.add.at(dE, ids, dh)
    adamw_update                optim.AdamW.step (one leaf)
    divide_rows                 bitlinear.bitlinear_forward's y / (s_x s_w)
    neg_abs                     -|x|, the argument of the e^x every sigmoid needs (``_exp_neg_abs``)

How "the same numbers" is achieved (``tests/test_kernels_fused.py`` checks it, exactly):

* every operation is done in the dtype of the input (float32 or float64) in the reference's order; constants are
  passed in as scalars of that dtype (a bare ``0.5`` or ``1`` would promote float32 arithmetic to float64);
* a mean over a row uses NumPy's own pairwise summation (``_pairwise_sum``), bit for bit;
* every kernel is compiled with ``error_model="numpy"``: with Python's error model each float division checks
  for a zero divisor, and that check stops LLVM from vectorising the loop (3-10x slower, measured);
* e^x is NumPy's: LLVM's ``expf`` differs from NumPy's SIMD exp in the last bit, so the wrappers compute
  ``e = exp(-|x|)`` (and the softmax's e^z) with ``exp32.py``, NumPy's float32 algorithm written out in Numba, in
  one pass on every thread, and the kernel does the rest. Where that does not give this NumPy's bits (checked
  once per process: ``exp32.matches_numpy``), or for float64, they call ``np.exp`` itself on a -|x| made by
  ``neg_abs``.

Threads: each kernel is written for a range of rows ``[lo, hi)`` (serial code, which LLVM vectorises), and a
``*_par`` driver gives each Numba thread one contiguous part of the rows (``prange``). Every row is computed by the
same operations whichever thread does it, so the bits do not depend on the thread count. A sum over rows (a column
sum: RMSNorm's ``dw``, the lower bound's ``dlb``, the embedding's scatter-add) must add the rows in order to give
NumPy's bits, so it is split over *columns* instead: each thread adds every row, in order, into its own columns.

Rows: a row view (``x[r]``) handed to another compiled function costs two atomic reference-count updates, not
little beside a row of 128 values; so the one-row building blocks are inlined (``inline="always"``) and the other
loops index ``x[r, j]`` (3-10% faster per kernel at (2048, 128) float32, one thread, measured A/B).

Who calls them: the fast twins in ``minimmf/fast/`` (one per layer, same signatures and caches as the layer), chosen
by the switch in ``minimmf/seam.py``. ``rmsnorm_row`` and ``bitlinear_front_row`` are the one-row building blocks
that both these kernels and the one-token decode kernels (``decode.py``) are made of: BitLinear's input side is
written once here, and once, readably, in ``functional.py`` + ``quant.py``.
"""

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

import weakref

import numba
import numpy as np
from numba import njit, prange

from . import exp32

PW_BLOCK = 128  # NumPy's PW_BLOCKSIZE: rows up to this length are summed with 8 accumulators, longer ones split
SERIAL_BELOW = 1 << 14  # AdamW: parameters smaller than this are updated on one thread (norm gains, lower bounds)
EXP_SPLIT_ABOVE = 1 << 16  # e^x of arrays this large is split over two threads (a hand-over costs ~20 us)


def fusable(*arrays) -> bool:
    """True when these arrays can go to the kernels: all float32 or all float64 (else the caller runs NumPy)."""
    dt = arrays[0].dtype
    return (dt == np.float32 or dt == np.float64) and all(a.dtype == dt for a in arrays)


def _exp_neg_abs(y: np.ndarray, c0: int = 0, c1: int | None = None) -> np.ndarray:
    """e = exp(-|x|) for x = y[:, c0:c1] (y C-contiguous (N, W)), with NumPy's exp (the bits the reference sigmoid
    sees), in one fresh (N, c1 - c0) buffer.

    e^x is the most expensive operation of the element-wise kernels, and a backward pass needs it for the same
    activations its forward did (the gates, h, the GLU's gate). So it is computed once: the result is kept beside
    the activation for as long as the activation's memory lives (``_EXP_MEMO``, dropped when it is freed) and
    handed to the next caller that asks for the same memory. Activations are never written after they are made
    (forward never changes its inputs, backward never changes its cache), so the kept e is the e of the values.
    """
    x = y[:, c0:c1]
    root, b = x, x.base
    while b is not None:                             # the array that owns the memory (through views, as_strided)
        if isinstance(b, np.ndarray):
            root = b
        b = getattr(b, "base", None)
    where = (x.__array_interface__["data"][0], x.shape, x.strides, x.dtype.str)
    memo = _EXP_MEMO.get(id(root))
    if memo is not None and memo[0]() is root and where in memo[1]:
        return memo[1].pop(where)                    # its one reuse: the backward of the forward that made it
    C = x.shape[1]
    e = exp32.neg_abs_exp32(y, c0, C, _parts()) if exp32.usable(y) else exp_inplace(neg_abs(y, c0, C))
    if memo is None or memo[0]() is not root:
        memo = (weakref.ref(root, lambda _, key=id(root): _EXP_MEMO.pop(key, None)), {})
        _EXP_MEMO[id(root)] = memo
    memo[1][where] = e
    return e


@njit(cache=True, error_model="numpy")
def _neg_abs(y, c0, out, lo, hi):
    C = out.shape[1]
    for r in range(lo, hi):
        yr = y[r, c0:c0 + C]                                 # (a row slice: a loop over it from 0 vectorises)
        for j in range(C):
            out[r, j] = -abs(yr[j])


@njit(parallel=True, cache=True)
def _neg_abs_par(y, c0, out, P):
    N = y.shape[0]
    for k in prange(P):
        _neg_abs(y, c0, out, k * N // P, (k + 1) * N // P)


def neg_abs(y: np.ndarray, c0: int, C: int) -> np.ndarray:
    """-|y[:, c0:c0+C]| in a fresh array: ``np.negative(np.abs(x))`` (exact: only the sign bit changes) in one
    pass instead of two, on every thread. Shapes: y (N, W) C-contiguous -> (N, C)."""
    assert y.ndim == 2 and y.flags.c_contiguous and 0 <= c0 and c0 + C <= y.shape[1]
    out = np.empty((y.shape[0], C), y.dtype)
    _neg_abs_par(y, c0, out, _parts())
    return out


def exp_inplace(a: np.ndarray) -> np.ndarray:
    """a = e^a with NumPy's bits, in place: ``exp32``'s kernel on every thread where it gives them (float32, see
    ``exp32.matches_numpy``), else ``np.exp``, a large C-contiguous array split in two halves, one exponentiated
    by a helper thread (NumPy lets go of the GIL inside the loop), when two or more Numba threads are set."""
    if a.flags.c_contiguous and exp32.usable(a):
        return exp32.exp32_inplace(a, _parts())
    if a.size < EXP_SPLIT_ABOVE or _parts() < 2 or not a.flags.c_contiguous:
        return np.exp(a, out=a)
    flat = a.reshape(-1)
    half = flat.size // 2
    done = _exp_helper().submit(np.exp, flat[half:], out=flat[half:])
    np.exp(flat[:half], out=flat[:half])
    done.result()
    return a


def _exp_helper():
    global _EXP_POOL
    if _EXP_POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _EXP_POOL = ThreadPoolExecutor(1, thread_name_prefix="minimmf-exp")
    return _EXP_POOL


_EXP_POOL = None
_EXP_MEMO: dict = {}   # id(activation's root array) -> (weak reference to it, {(address, shape, strides, dtype): e})


def _rows(x: np.ndarray) -> np.ndarray:
    """(..., C) -> (N, C) C-contiguous (a view when x already is)."""
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]))


def _parts() -> int:
    """P: how many contiguous parts the ``*_par`` drivers split the rows into, one per Numba thread."""
    return numba.get_num_threads()


# ----------------------------------------------------------------------------- shared scalar helpers

@njit(cache=True, error_model="numpy")
def _pairwise_leaf(a, lo, n, zero):
    """NumPy's pairwise_sum for n <= 128: 8 running sums combined as a tree, then the tail in order."""
    if n < 8:
        res = zero
        for k in range(lo, lo + n):
            res += a[k]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    m = n - n % 8
    i = 8
    while i < m:
        k = lo + i
        r0 += a[k]
        r1 += a[k + 1]
        r2 += a[k + 2]
        r3 += a[k + 3]
        r4 += a[k + 4]
        r5 += a[k + 5]
        r6 += a[k + 6]
        r7 += a[k + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


def _pairwise_level(lower):
    """One level of NumPy's pairwise recursion, as its own function (Numba cannot cache a recursive one):
    pw(lo, n) = lower(lo, n2) + lower(lo + n2, n - n2), n2 = n // 2 rounded down to a multiple of 8, down to
    the 8-accumulator leaf at n <= 128. A level of depth k takes rows up to M_k = 2 M_(k-1) - 16 (the right half
    is at most n / 2 + 8), M_0 = 128."""
    @njit(cache=True, error_model="numpy")
    def level(a, lo, n, zero):
        if n <= PW_BLOCK:
            return _pairwise_leaf(a, lo, n, zero)
        n2 = n // 2
        n2 -= n2 % 8
        return lower(a, lo, n2, zero) + lower(a, lo + n2, n - n2, zero)
    return level


_PW_LEVELS = [_pairwise_leaf]
_PW_LIMITS = [PW_BLOCK]
for _ in range(16):                                          # rows up to 2**16 * 112 + 16 = 7,340,048 elements
    _PW_LEVELS.append(_pairwise_level(_PW_LEVELS[-1]))
    _PW_LIMITS.append(2 * _PW_LIMITS[-1] - 16)
_pairwise_deep = _PW_LEVELS[-1]
PW_MAX = _PW_LIMITS[-1]


@njit(cache=True, error_model="numpy")
def _pairwise_sum(a, lo, n, zero):
    """sum(a[lo:lo+n]) exactly as NumPy's pairwise summation adds a contiguous row (np.sum, np.mean).

    NumPy recurses: pw(lo, n) = pw(lo, n2) + pw(lo + n2, n - n2), n2 = n // 2 rounded down to a multiple of 8,
    until n <= 128 (``_pairwise_level`` writes out the levels; no allocation, no stack). A row is one token's
    activations or logits (at most 2**20, the largest vocabulary); a row longer than PW_MAX raises.
    """
    if n <= PW_BLOCK:
        return _pairwise_leaf(a, lo, n, zero)
    if n > PW_MAX:
        raise ValueError("row too long for the pairwise sum")
    return _pairwise_deep(a, lo, n, zero)


@njit(cache=True, inline="always", error_model="numpy")
def _round_half_away(v, half, one, zero):
    """quant.round_half_away on one scalar: copysign(floor(a) + (a - floor(a) >= 1/2), v), a = |v|."""
    a = abs(v)
    fa = np.floor(a)
    r = fa + one if a - fa >= half else fa
    return np.copysign(r, v)


@njit(cache=True, inline="always", error_model="numpy")
def _sigmoid_from_e(x, e, one):
    """functional.sigmoid given e = exp(-|x|): r = 1 / (1 + e); σ = r if x >= 0 else e r."""
    r = one / (one + e)
    return r if x >= 0 else e * r


# ----------------------------------------------------------------------------- RMSNorm

@njit(cache=True, inline="always", error_model="numpy")
def rmsnorm_row(x, w, eps, nC, one, sq, y):
    """functional.rmsnorm_forward on one row: y = (x rstd) w with rstd = 1 / sqrt(mean(x^2) + eps); returns rstd.

    Shapes: x, w, y (C,); sq (C,) scratch; nC = C and one = 1 in x's dtype.
    """
    C = x.shape[0]
    for j in range(C):
        sq[j] = x[j] * x[j]
    rs = one / np.sqrt(_pairwise_sum(sq, 0, C, one - one) / nC + eps)
    for j in range(C):
        y[j] = (x[j] * rs) * w[j]
    return rs


@njit(cache=True, error_model="numpy")
def _rmsnorm_fwd(x, w, eps, nC, one, y, rstd, lo, hi):
    sq = np.empty(x.shape[1], x.dtype)                       # row buffer: x * x
    for r in range(lo, hi):
        rstd[r] = rmsnorm_row(x[r], w, eps, nC, one, sq, y[r])


@njit(parallel=True, cache=True)
def _rmsnorm_fwd_par(x, w, eps, nC, one, y, rstd, P):
    N = x.shape[0]
    for k in prange(P):
        _rmsnorm_fwd(x, w, eps, nC, one, y, rstd, k * N // P, (k + 1) * N // P)


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float):
    """functional.rmsnorm_forward in one pass per row: y = (x rstd) w, rstd = 1 / sqrt(mean(x^2) + eps).

    Shapes: x (N, C) float, w (C,) -> y (N, C), rstd (N, 1).
    """
    ft = x.dtype.type
    x = _rows(x)
    N, C = x.shape
    y = np.empty_like(x)
    rstd = np.empty((N, 1), x.dtype)
    _rmsnorm_fwd_par(x, np.ascontiguousarray(w, x.dtype), ft(eps), ft(C), ft(1), y, rstd[:, 0], _parts())
    return y, rstd


@njit(cache=True, error_model="numpy")
def _rmsnorm_bwd_dx(dy, x, rstd, w, nC, dx, dw, with_dw, lo, hi):
    C = x.shape[1]
    zero = nC - nC
    buf = np.empty(C, x.dtype)                               # row buffer: dn * n
    for r in range(lo, hi):
        rs = rstd[r]
        for j in range(C):
            buf[j] = (dy[r, j] * w[j]) * (x[r, j] * rs)
        if with_dw:                                          # rows in order, while the row is in cache
            for j in range(C):
                dw[j] += dy[r, j] * (x[r, j] * rs)
        mean = _pairwise_sum(buf, 0, C, zero) / nC
        for j in range(C):
            dx[r, j] = rs * (dy[r, j] * w[j] - (x[r, j] * rs) * mean)


@njit(cache=True, error_model="numpy")
def _rmsnorm_bwd_dw(dy, x, rstd, dw, c0, c1):
    out = dw[c0:c1]                                          # (slices: a loop from 0 vectorises, one from c0 not)
    for r in range(x.shape[0]):                              # rows summed in order, as np.sum(axis=0)
        xr, dyr = x[r, c0:c1], dy[r, c0:c1]
        rs = rstd[r]
        for j in range(out.shape[0]):
            out[j] += dyr[j] * (xr[j] * rs)


@njit(parallel=True, cache=True)
def _rmsnorm_bwd_par(dy, x, rstd, w, nC, dx, dw, P):
    N, C = x.shape
    for j in range(C):
        dw[j] = nC - nC
    if P == 1:                                               # one thread: dw in the same pass as dx
        _rmsnorm_bwd_dx(dy, x, rstd, w, nC, dx, dw, True, 0, N)
        return
    for k in prange(P):                                      # dx: parts of the rows
        _rmsnorm_bwd_dx(dy, x, rstd, w, nC, dx, dw, False, k * N // P, (k + 1) * N // P)
    Q = min(P, C)
    for k in prange(Q):                                      # dw: parts of the columns, every row in order
        _rmsnorm_bwd_dw(dy, x, rstd, dw, k * C // Q, (k + 1) * C // Q)


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, rstd: np.ndarray, w: np.ndarray):
    """functional.rmsnorm_backward in one pass per row: dx = rstd (dn - n mean(dn n)), dn = dy w, n = x rstd.

    Shapes: dy, x (N, C), rstd (N, 1), w (C,) -> dx (N, C), dw (C,).
    """
    ft = x.dtype.type
    x, dy = _rows(x), _rows(dy)
    N, C = x.shape
    dx = np.empty_like(x)
    dw = np.empty(C, x.dtype)
    rstd = np.ascontiguousarray(rstd.reshape(-1))
    _rmsnorm_bwd_par(dy, x, rstd, np.ascontiguousarray(w, x.dtype), ft(C), dx, dw, _parts())
    if C == 1:                                               # NumPy sums a single column pairwise: so do we
        dw[0] = np.sum(dy[:, 0] * (x[:, 0] * rstd))
    return dx, dw


# ----------------------------------------------------------------------------- BitLinear: quantizers

@njit(cache=True, inline="always", error_model="numpy")
def bitlinear_front_row(x, g, eps, nC, qmax, act_eps, half, one, q, a, a_bits):
    """BitLinear's input side on one row: RMSNorm, then absmax int8 codes (as floats) in q. Returns (rstd, s_x).

        rstd = 1 / sqrt(mean(x^2) + eps),  n = (x rstd) g,
        s_x = qmax / max(max|n|, act_eps),  q = clip(round_half_away(n s_x), -qmax - 1, qmax).
    Shapes: x, g, q (C,); a (C,) scratch and a_bits the same buffer viewed as int32/int64; scalars in x's dtype.
    """
    C = x.shape[0]
    zero = one - one
    for j in range(C):
        q[j] = x[j] * x[j]
    rs = one / np.sqrt(_pairwise_sum(q, 0, C, zero) / nC + eps)          # RMSNorm
    for j in range(C):
        v = (x[j] * rs) * g[j]
        q[j] = v
        a[j] = abs(v)
    # max |n|: a float max-reduction does not vectorise, but for floats >= 0 the order of the bit
    # patterns (read as signed integers) is the order of the values, NaN above +inf as np.max has it
    m = a_bits[0]
    for j in range(1, C):
        m = max(m, a_bits[j])
    a_bits[0] = m
    s = qmax / max(a[0], act_eps)                                          # absmax scale
    lo, hi = -qmax - one, qmax
    for j in range(C):
        c = _round_half_away(q[j] * s, half, one, zero)
        q[j] = min(max(c, lo), hi) + zero                                  # clip; + 0 turns -0 into 0
    return rs, s


@njit(cache=True, error_model="numpy")
def _bitlinear_front(x, g, eps, nC, qmax, act_eps, half, one, q, xq, s_x, rstd, a, a_bits, lo, hi):
    C = x.shape[1]
    for r in range(lo, hi):
        qr, xqr = q[r], xq[r]
        rs, s = bitlinear_front_row(x[r], g, eps, nC, qmax, act_eps, half, one, qr, a, a_bits)
        for j in range(C):
            xqr[j] = qr[j] / s
        rstd[r] = rs
        s_x[r] = s


@njit(parallel=True, cache=True)
def _bitlinear_front_par(x, g, eps, nC, qmax, act_eps, half, one, q, xq, s_x, rstd, a, a_bits):
    N, P = x.shape[0], a.shape[0]
    for k in prange(P):                                      # a[k]: the row buffer |n| of part k
        _bitlinear_front(x, g, eps, nC, qmax, act_eps, half, one, q, xq, s_x, rstd, a[k], a_bits[k],
                         k * N // P, (k + 1) * N // P)


def bitlinear_front(x: np.ndarray, g: np.ndarray, eps: float, qmax: int, act_eps: float):
    """RMSNorm then per-token absmax int8 quantization, in one pass per row (BitLinear's input side).

    Same numbers as ``n = rmsnorm_forward(x, g, eps)[0]; q_x, s_x = activation_quant(n)``:
        rstd = 1 / sqrt(mean(x^2) + eps),  n = (x rstd) g,
        s_x = qmax / max(max|n|, act_eps),  q = clip(round_half_away(n s_x), -qmax - 1, qmax).
    Shapes: x (N, C) float, g (C,) -> q (N, C) integer-valued floats (the codes, ready for BLAS),
    x_q = q / s_x (N, C) (the STE's dequantized activations), s_x (N, 1), rstd (N, 1).
    """
    ft = x.dtype.type
    x = _rows(x)
    N, C = x.shape
    q, xq = np.empty_like(x), np.empty_like(x)
    s_x, rstd = np.empty((N, 1), x.dtype), np.empty((N, 1), x.dtype)
    a = np.empty((_parts(), C), x.dtype)                                 # row buffers: |n|, one per part
    _bitlinear_front_par(x, np.ascontiguousarray(g, x.dtype), ft(eps), ft(C), ft(qmax), ft(act_eps), ft(0.5),
                     ft(1), q, xq, s_x[:, 0], rstd[:, 0], a, a.view(np.int32 if ft is np.float32 else np.int64))
    return q, xq, s_x, rstd


@njit(cache=True, error_model="numpy")
def _divide_rows(y, d, lo, hi):
    for r in range(lo, hi):
        dr = d[r]
        for j in range(y.shape[1]):
            y[r, j] = y[r, j] / dr


@njit(parallel=True, cache=True)
def _divide_rows_par(y, d, P):
    N = y.shape[0]
    for k in prange(P):
        _divide_rows(y, d, k * N // P, (k + 1) * N // P)


def divide_rows(y: np.ndarray, d: np.ndarray) -> np.ndarray:
    """y /= d, row by row, in place, on every thread (the same correctly rounded divisions as NumPy's ``y /= d``):
    BitLinear's rescaling of its integer-valued product, ``y / (s_x s_w)``.

    Shapes: y (N, O) C-contiguous, d (N, 1) of y's dtype -> y.
    """
    assert y.flags.c_contiguous and d.shape == (y.shape[0], 1) and d.dtype == y.dtype
    _divide_rows_par(y, np.ascontiguousarray(d[:, 0]), _parts())
    return y


@njit(cache=True, error_model="numpy")
def _ternary_codes(W, s_w, half, one, qf, Wq):
    zero = one - one
    for k in range(W.size):
        c = _round_half_away(W[k] * s_w, half, one, zero)
        c = min(max(c, -one), one) + zero
        qf[k] = c
        Wq[k] = c / s_w


@njit(parallel=True, cache=True)
def _ternary_codes_par(W, s_w, half, one, qf, Wq, P):
    n = W.size
    for k in prange(P):                                      # parts of the flat matrix, as 1-D views
        lo, hi = k * n // P, (k + 1) * n // P
        _ternary_codes(W[lo:hi], s_w, half, one, qf[lo:hi], Wq[lo:hi])


def weight_quant(W: np.ndarray, eps: float):
    """quant.weight_quant plus the dequantized matrix: NumPy's absmean, then one pass for codes and W_q.

    s_w = 1 / max(mean|W|, eps),  q_w = clip(round_half_away(W s_w), -1, 1),  W_q = q_w / s_w.
    Shapes: W (O, I) float -> q_w (O, I) integer-valued floats, W_q (O, I), s_w scalar (dtype of W).
    """
    ft = W.dtype.type
    flat = np.ascontiguousarray(W).reshape(-1)
    s_w = ft(1.0) / np.maximum(np.mean(np.abs(flat)), ft(eps))       # quant.weight_quant's own line
    qf, Wq = np.empty_like(flat), np.empty_like(flat)
    _ternary_codes_par(flat, ft(s_w), ft(0.5), ft(1), qf, Wq, _parts())
    return qf.reshape(W.shape), Wq.reshape(W.shape), ft(s_w)


# ----------------------------------------------------------------------------- MLGRU element-wise

@njit(cache=True, error_model="numpy")
def _mlgru_gates_fwd(zf, ef, zi, ei, lb, has_lb, one, sf, f, i, lo, hi):
    N, C = zf.shape
    for r in range(lo, hi):
        zfr, efr, zir, eir = zf[r], ef[r], zi[r], ei[r]
        sfr, fr, ir = sf[r], f[r], i[r]
        for j in range(C):
            s = _sigmoid_from_e(zfr[j], efr[j], one)
            fj = lb[j] + (one - lb[j]) * s if has_lb else s
            sfr[j] = s
            fr[j] = fj
            ir[j] = (zir[j] * _sigmoid_from_e(zir[j], eir[j], one)) * (one - fj)


@njit(parallel=True, cache=True)
def _mlgru_gates_fwd_par(zf, ef, zi, ei, lb, has_lb, one, sf, f, i, P):
    N = zf.shape[0]
    for k in prange(P):
        _mlgru_gates_fwd(zf, ef, zi, ei, lb, has_lb, one, sf, f, i, k * N // P, (k + 1) * N // P)


def mlgru_gates_forward(zf: np.ndarray, zi: np.ndarray, lb: np.ndarray | None):
    """sf = σ(zf);  f = lb + (1 - lb) sf (or sf);  i = silu(zi) (1 - f)  — one pass.

    Shapes: zf, zi (N, H), lb (H,) or None -> sf, f, i (N, H).
    """
    ft = zf.dtype.type
    zf, zi = _rows(zf), _rows(zi)
    sf, f, i = np.empty_like(zf), np.empty_like(zf), np.empty_like(zf)
    lb_a = np.zeros(zf.shape[1], zf.dtype) if lb is None else np.ascontiguousarray(lb, zf.dtype)
    _mlgru_gates_fwd_par(zf, _exp_neg_abs(zf), zi, _exp_neg_abs(zi), lb_a, lb is not None, ft(1), sf, f, i, _parts())
    return sf, f, i


@njit(cache=True, error_model="numpy")
def _mlgru_gates_bwd(df, di, f, sf, zi, ei, lb, has_lb, one, dzf, dzi, t, lo, hi):
    C = df.shape[1]
    for r in range(lo, hi):
        dfr, dir_, fr, sfr, zir, eir = df[r], di[r], f[r], sf[r], zi[r], ei[r]
        dzfr, dzir = dzf[r], dzi[r]
        tr = t[r] if has_lb else t[0]                        # (without bounds t is one unused row)
        for j in range(C):
            z = zir[j]
            s = _sigmoid_from_e(z, eir[j], one)
            dzir[j] = (dir_[j] * (one - fr[j])) * (s * (one + z * (one - s)))   # silu backward
            d = dfr[j] - dir_[j] * (z * s)                                     # i = silu(zi) (1 - f)
            if has_lb:
                tr[j] = d * (one - sfr[j])                                     # summed over rows into dlb
                d = d * (one - lb[j])
            dzfr[j] = (d * sfr[j]) * (one - sfr[j])                            # sigmoid backward


@njit(cache=True, error_model="numpy")
def _column_sums(t, out, zero, c0, c1):
    """out[j] = 0 + the sum over rows r, in order, of t[r, j], for columns [c0, c1) (np.sum(t, axis=0)'s bits)."""
    o = out[c0:c1]                                           # (slices: a loop from 0 vectorises, one from c0 not)
    for j in range(o.shape[0]):
        o[j] = zero
    for r in range(t.shape[0]):
        tr = t[r, c0:c1]
        for j in range(o.shape[0]):
            o[j] += tr[j]


@njit(parallel=True, cache=True)
def _mlgru_gates_bwd_par(df, di, f, sf, zi, ei, lb, has_lb, one, dzf, dzi, t, dlb, P):
    N, C = df.shape
    for k in prange(P):
        _mlgru_gates_bwd(df, di, f, sf, zi, ei, lb, has_lb, one, dzf, dzi, t, k * N // P, (k + 1) * N // P)
    if has_lb and C > 1:
        Q = min(P, C)
        for k in prange(Q):                                  # dlb: parts of the columns, every row in order
            _column_sums(t, dlb, one - one, k * C // Q, (k + 1) * C // Q)


def mlgru_gates_backward(df, di, f, sf, zi, lb):
    """Backward of ``mlgru_gates_forward`` given the scan's df, di. Returns (dzf, dzi, dlb or None).

    dzi = di (1 - f) silu'(zi);  d = df - di silu(zi);  dlb = Σ_tokens d (1 - sf);  dzf = d (1 - lb) sf (1 - sf).
    Shapes: df, di, f, sf, zi (N, H), lb (H,) or None -> dzf, dzi (N, H), dlb (H,).
    """
    ft = df.dtype.type
    df, di, f, sf, zi = (_rows(a) for a in (df, di, f, sf, zi))
    dzf, dzi = np.empty_like(df), np.empty_like(df)
    dlb = np.empty(df.shape[1], df.dtype)
    lb_a = np.zeros(df.shape[1], df.dtype) if lb is None else np.ascontiguousarray(lb, df.dtype)
    t = np.empty_like(df) if lb is not None else np.empty((1, df.shape[1]), df.dtype)   # d (1 - sf) for dlb
    _mlgru_gates_bwd_par(df, di, f, sf, zi, _exp_neg_abs(zi), lb_a, lb is not None, ft(1), dzf, dzi, t, dlb,
                         _parts())
    if lb is not None and df.shape[1] == 1:                  # NumPy sums one column pairwise: so do we
        dlb[0] = np.sum(t[:, 0])
    return dzf, dzi, (dlb if lb is not None else None)


@njit(cache=True, error_model="numpy")
def _mlgru_output_fwd(gn, h, eh, one, o, lo, hi):
    N, C = h.shape
    for r in range(lo, hi):
        gnr, hr, ehr, orow = gn[r], h[r], eh[r], o[r]
        for j in range(C):
            orow[j] = gnr[j] * (hr[j] * _sigmoid_from_e(hr[j], ehr[j], one))


@njit(parallel=True, cache=True)
def _mlgru_output_fwd_par(gn, h, eh, one, o, P):
    N = h.shape[0]
    for k in prange(P):
        _mlgru_output_fwd(gn, h, eh, one, o, k * N // P, (k + 1) * N // P)


def mlgru_output_forward(gn: np.ndarray, h: np.ndarray) -> np.ndarray:
    """o = gn silu(h) — one pass. Shapes: gn, h (N, H) -> o (N, H)."""
    gn, h = _rows(gn), _rows(h)
    o = np.empty_like(h)
    _mlgru_output_fwd_par(gn, h, _exp_neg_abs(h), h.dtype.type(1), o, _parts())
    return o


@njit(cache=True, error_model="numpy")
def _mlgru_output_bwd(do, gn, h, eh, one, dgn, dh, lo, hi):
    N, C = h.shape
    for r in range(lo, hi):
        dor, gnr, hr, ehr, dgnr, dhr = do[r], gn[r], h[r], eh[r], dgn[r], dh[r]
        for j in range(C):
            x = hr[j]
            s = _sigmoid_from_e(x, ehr[j], one)
            dgnr[j] = dor[j] * (x * s)
            dhr[j] = (dor[j] * gnr[j]) * (s * (one + x * (one - s)))


@njit(parallel=True, cache=True)
def _mlgru_output_bwd_par(do, gn, h, eh, one, dgn, dh, P):
    N = h.shape[0]
    for k in prange(P):
        _mlgru_output_bwd(do, gn, h, eh, one, dgn, dh, k * N // P, (k + 1) * N // P)


def mlgru_output_backward(do: np.ndarray, gn: np.ndarray, h: np.ndarray):
    """Backward of o = gn silu(h): dgn = do silu(h), dh = do gn silu'(h). Shapes: (N, H) each -> dgn, dh."""
    do, gn, h = _rows(do), _rows(gn), _rows(h)
    dgn, dh = np.empty_like(h), np.empty_like(h)
    _mlgru_output_bwd_par(do, gn, h, _exp_neg_abs(h), h.dtype.type(1), dgn, dh, _parts())
    return dgn, dh


# ----------------------------------------------------------------------------- GLU element-wise

@njit(cache=True, error_model="numpy")
def _glu_fwd(y, e, one, a, lo, hi):
    N, C = a.shape
    for r in range(lo, hi):
        yr, er, ar = y[r], e[r], a[r]
        gr, ur = yr[:C], yr[C:]
        for j in range(C):
            g = gr[j]
            ar[j] = (g * _sigmoid_from_e(g, er[j], one)) * ur[j]


@njit(parallel=True, cache=True)
def _glu_fwd_par(y, e, one, a, P):
    N = a.shape[0]
    for k in prange(P):
        _glu_fwd(y, e, one, a, k * N // P, (k + 1) * N // P)


def _joined(gate, up):
    """[gate, up] as one C-contiguous (N, 2I) array: a view when they are the two halves of one such array
    (as glu_forward makes them), else a copy. One contiguous operand is what lets the loops vectorise."""
    I = gate.shape[-1]
    g2, u2 = gate.reshape(-1, I), up.reshape(-1, I)
    it = g2.itemsize
    if (g2.dtype == u2.dtype and g2.shape == u2.shape and g2.strides == u2.strides == (2 * I * it, it)
            and u2.ctypes.data == g2.ctypes.data + I * it):
        return np.lib.stride_tricks.as_strided(g2, (g2.shape[0], 2 * I), (2 * I * it, it), writeable=False)
    return np.concatenate([g2, u2], axis=1)


def glu_act_forward(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """a = silu(gate) up — one pass. Shapes: gate, up (N, I) (views of [gate, up] are fine) -> a (N, I)."""
    y = _joined(gate, up)                                    # (N, 2I)
    I = y.shape[1] // 2
    a = np.empty((y.shape[0], I), y.dtype)
    _glu_fwd_par(y, _exp_neg_abs(y, 0, I), y.dtype.type(1), a, _parts())
    return a


@njit(cache=True, error_model="numpy")
def _glu_bwd(da, y, e, one, dy, lo, hi):
    N, C = da.shape
    for r in range(lo, hi):
        dar, yr, er, dyr = da[r], y[r], e[r], dy[r]
        gr, ur, dgr, dur = yr[:C], yr[C:], dyr[:C], dyr[C:]
        for j in range(C):
            g = gr[j]
            s = _sigmoid_from_e(g, er[j], one)
            dgr[j] = (dar[j] * ur[j]) * (s * (one + g * (one - s)))    # dgate = silu'(gate) da up
            dur[j] = dar[j] * (g * s)                                  # dup = da silu(gate)


@njit(parallel=True, cache=True)
def _glu_bwd_par(da, y, e, one, dy, P):
    N = da.shape[0]
    for k in prange(P):
        _glu_bwd(da, y, e, one, dy, k * N // P, (k + 1) * N // P)


def glu_act_backward(da: np.ndarray, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Backward of a = silu(gate) up, written straight into d[gate, up] (no concatenate).

    Shapes: da, gate, up (N, I) -> dy (N, 2I) = [dgate, dup].
    """
    da = _rows(da)
    y = _joined(gate, up)                                    # (N, 2I)
    N, I = da.shape
    dy = np.empty((N, 2 * I), da.dtype)
    _glu_bwd_par(da, y, _exp_neg_abs(y, 0, I), da.dtype.type(1), dy, _parts())
    return dy


# ----------------------------------------------------------------------------- cross-entropy

@njit(cache=True, error_model="numpy")
def _ce_shift_exp32(x, mx, p, zt, target, lo, hi):
    """p = e^(x - max) (exp32: np.exp's bits) and zt = z = x - max at the target, float32, one pass."""
    N, V = x.shape
    for r in range(lo, hi):
        xr, pr = x[r], p[r]
        m = mx[r]
        for j in range(V):
            pr[j] = exp32.exp32(xr[j] - m)
        zt[r] = xr[max(target[r], 0)] - m


@njit(parallel=True, cache=True)
def _ce_shift_exp32_par(x, mx, p, zt, target, P):
    N = x.shape[0]
    for k in prange(P):
        _ce_shift_exp32(x, mx, p, zt, target, k * N // P, (k + 1) * N // P)


@njit(cache=True, error_model="numpy")
def _ce_normalize(zt, target, zero, p, nll, lo, hi):
    N, V = p.shape
    for r in range(lo, hi):
        pr = p[r]
        s = _pairwise_sum(pr, 0, V, zero)
        for j in range(V):
            pr[j] = pr[j] / s
        nll[r] = np.log(s) - zt[r] if target[r] >= 0 else zero


@njit(parallel=True, cache=True)
def _ce_normalize_par(zt, target, zero, p, nll, P):
    N = p.shape[0]
    for k in prange(P):
        _ce_normalize(zt, target, zero, p, nll, k * N // P, (k + 1) * N // P)


def cross_entropy_forward(logits: np.ndarray, target: np.ndarray):
    """Softmax and per-position NLL in three passes over the logits (max, shift and exp, normalize).

    probs = exp(z) / Σ exp(z) with z = logits - max;  nll = log Σ exp(z) - z[target] (0 where target < 0).
    Shapes: logits (N, V) float, target (N,) int (negative = unscored) -> probs (N, V), nll (N,).
    """
    x = _rows(logits)
    target = np.ascontiguousarray(target.reshape(-1), np.int64)
    p = np.empty_like(x)
    zt = np.empty(x.shape[0], x.dtype)
    mx = np.max(x, axis=1)                               # (NumPy's max: it vectorises)
    if exp32.usable(x):
        _ce_shift_exp32_par(x, mx, p, zt, target, _parts())   # p = e^(logits - max) in one pass, NumPy's bits
    else:                                                # float64, or a NumPy whose exp exp32 does not give:
        np.subtract(x, mx[:, None], out=p)               # p = z = logits - max
        zt[:] = p[np.arange(len(p)), np.maximum(target, 0)]   # z at the target, before exp overwrites z
        exp_inplace(p)                                   # NumPy's exp, the reference's bits
    nll = np.empty(x.shape[0], x.dtype)
    _ce_normalize_par(zt, target, x.dtype.type(0), p, nll, _parts())
    return p, nll


@njit(cache=True, error_model="numpy")
def _ce_bwd(p, target, count, one, d, lo, hi):
    N, V = p.shape
    zero = one - one
    for r in range(lo, hi):
        pr, dr = p[r], d[r]
        t = target[r]
        if t < 0:
            for j in range(V):
                dr[j] = zero
        else:
            for j in range(V):
                dr[j] = pr[j] / count
            dr[t] = (pr[t] - one) / count


@njit(parallel=True, cache=True)
def _ce_bwd_par(p, target, count, one, d, P):
    N = p.shape[0]
    for k in prange(P):
        _ce_bwd(p, target, count, one, d, k * N // P, (k + 1) * N // P)


def cross_entropy_backward(probs: np.ndarray, target: np.ndarray, count: int) -> np.ndarray:
    """dlogits = (probs - onehot(target)) / count, 0 at unscored positions (target < 0) — one pass.

    Shapes: probs (N, V), target (N,) int -> dlogits (N, V).
    """
    ft = probs.dtype.type
    p = _rows(probs)
    d = np.empty_like(p)
    _ce_bwd_par(p, np.ascontiguousarray(target.reshape(-1), np.int64), ft(count), ft(1), d, _parts())
    return d


# ----------------------------------------------------------------------------- embedding, AdamW

@njit(cache=True, error_model="numpy")
def _scatter_add_rows(ids, dh, dE, c0, c1):
    for k in range(ids.shape[0]):                        # tokens in order, columns [c0, c1)
        row, src = dE[ids[k], c0:c1], dh[k, c0:c1]
        for j in range(row.shape[0]):
            row[j] += src[j]


@njit(parallel=True, cache=True)
def _scatter_add_rows_par(ids, dh, dE, P):
    H = dh.shape[1]
    Q = min(P, H)
    for k in prange(Q):                                  # parts of the columns, every token in order
        _scatter_add_rows(ids, dh, dE, k * H // Q, (k + 1) * H // Q)


def embedding_backward(ids: np.ndarray, dh: np.ndarray, V: int) -> np.ndarray:
    """dE[v] = Σ over tokens k with ids[k] = v of dh[k] (same order and bits as np.add.at).

    Shapes: ids (N,) int, dh (N, H) -> dE (V, H).
    """
    dh = _rows(dh)
    dE = np.zeros((V, dh.shape[1]), dh.dtype)
    _scatter_add_rows_par(np.ascontiguousarray(ids.reshape(-1), np.int64), dh, dE, _parts())
    return dE


@njit(cache=True, error_model="numpy")
def _adamw(p, g, m, v, b1, omb1, b2, omb2, c1, c2, eps, lr, wd):
    for k in range(p.size):
        gk = g[k]
        mk = m[k] * b1 + omb1 * gk
        vk = v[k] * b2 + omb2 * (gk * gk)
        m[k] = mk
        v[k] = vk
        p[k] = p[k] - lr * ((mk / c1) / (np.sqrt(vk / c2) + eps) + wd * p[k])


@njit(parallel=True, cache=True)
def _adamw_par(p, g, m, v, b1, omb1, b2, omb2, c1, c2, eps, lr, wd, P):
    n = p.size
    for k in prange(P):                                  # parts of the flat parameter, as 1-D views
        lo, hi = k * n // P, (k + 1) * n // P
        _adamw(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], b1, omb1, b2, omb2, c1, c2, eps, lr, wd)


def adamw_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd) -> None:
    """One AdamW step of one parameter, in place, in one pass (the same float ops as optim.AdamW.step).

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  p -= lr ((m / c1) / (sqrt(v / c2) + eps) + wd p).
    Shapes: p, g, m, v: any one shape, C-contiguous, one dtype.
    """
    ft = p.dtype.type
    args = (p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1), ft(b1), ft(1 - b1),
            ft(b2), ft(1 - b2), ft(c1), ft(c2), ft(eps), ft(lr), ft(wd))
    if p.size < SERIAL_BELOW:                            # a gain vector: a thread launch costs more than the work
        _adamw(*args)
    else:
        _adamw_par(*args, _parts())
