"""NumPy's float32 e^x, bit for bit, as a Numba function that can run inside a fused kernel and on every thread.

Why: every sigmoid of the model (the MLGRU's gates, its output gate, the GLU's SiLU) and the softmax of the loss
need e^x, and the fast kernels promise NumPy's bits. ``np.exp`` on float32 is NumPy's own SIMD routine, not the C
library's ``expf``; Numba's ``math.exp`` is LLVM's and differs from it in the last bit. So the kernels used to stop
for ``np.exp``: a separate pass over memory, on one thread (two halves on two), 2.2-2.8 ns per value on the
development CPU (measured, ``benchmarks/README.md``, "NumPy's exp inside the kernels"). This file writes NumPy's
algorithm down again, operation for operation, so LLVM can vectorise it inside the kernels:

    specification    np.exp(x) for float32 x (NumPy's ``simd_exp_FLOAT``, ``loops_exponent_log.dispatch.c.src``;
                     the same algorithm in its AVX2+FMA3 and AVX-512F variants)
    this file        exp32(x), one value; exp32_inplace(a), a whole array on every thread

The algorithm (the constants are NumPy's, ``npy_simd_data.h``; each line is one correctly rounded float32
operation, ``fma`` rounds once):

    x >= 88.72283935546875      -> inf          x <= -103.97208404541015625 -> 0          x NaN -> NaN
    k = (x * log2(e) + 1.5 * 2^23) - 1.5 * 2^23          round x / ln 2 to the nearest integer (ties to even)
    r = fma(k, -ln2_hi, x);  r = fma(k, -ln2_lo, r)      r = x - k ln 2, ln 2 in two parts (Cody and Waite)
    P = p0 + r (p1 + r (p2 + r (p3 + r (p4 + r p5))))    five fmas (Horner)
    Q = q0 + r (q1 + r q2)                               two fmas
    e^x = P / Q * 2^k                                    the exponent k added to the quotient's exponent bits;
                                                         for k <= -125 (a subnormal result): 2^-125 first, then
                                                         one correctly rounded multiplication by 2^(k + 125)

``matches_numpy()`` says whether this NumPy gives those bits: it is checked once per process, on first use, on
69,650 values spread over the whole range and its edges. Where it does not (another NumPy, a CPU whose NumPy takes
another routine), and with the JIT off, ``usable`` is False and the fused kernels (``fused.py``) take NumPy's
``np.exp`` pass, as before: the bits always stay NumPy's. ``tests/test_kernels_exp32.py`` checks every 7th float32
from -104 to 89, and all edges.
"""

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

from fractions import Fraction

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

XMAX = np.float32(88.72283935546875)         # at and above: inf (e^x overflows float32)
XMIN = np.float32(-103.97208404541015625)    # at and below: 0 (below half the smallest subnormal)
LOG2E = np.float32(1.4426950408889634)       # NPY_LOG2Ef
ROUND_MAGIC = np.float32(12582912.0)         # 1.5 * 2^23: adding and subtracting it rounds to an integer
LN2_HI = np.float32(-6.93145752e-1)          # -ln 2 in two parts: k LN2_HI is exact for the k that occur
LN2_LO = np.float32(-1.42860677e-6)
P = tuple(np.float32(c) for c in (9.999999999980870924916e-01, 7.257664613233124478488e-01,
                                  2.473615434895520810817e-01, 5.114512081637298353406e-02,
                                  6.757896990527504603057e-03, 5.082762527590693718096e-04))
Q = tuple(np.float32(c) for c in (1.0, -2.742335390411667452936e-01, 2.159509375685829852307e-02))
MIN_NORMAL_K = -125                          # k above this: P / Q * 2^k is a normal number


# The three steps below the plain float32 arithmetic. Each is a Python function (what runs with the JIT off, and
# what it means) and, for compiled code, one or two LLVM instructions (the intrinsic that ``overload`` puts in).

def fma(a, b, c):
    """a b + c, rounded once to the type of a (float32 here)."""
    t = type(a)
    if not all(np.isfinite([a, b, c])):
        return t(float(a) * float(b) + float(c))
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    best = t(float(exact))                             # nearest float64, then float32: maybe rounded twice, so
    for other in (np.nextafter(best, t(-np.inf)), np.nextafter(best, t(np.inf))):   # ... check its neighbours
        d_other, d_best = abs(Fraction(float(other)) - exact), abs(Fraction(float(best)) - exact)
        if d_other < d_best or (d_other == d_best and int(np.array(other).view(np.uint32)) % 2 == 0):
            best = other
    return best


def scale_exponent(v, k):
    """v * 2^k for a float32 v and an int32 k, by adding k to v's exponent bits (exact while the result is
    normal: NumPy's AVX2 form of ``scalef``)."""
    bits = np.array(v, np.float32).view(np.int32) + (np.int32(k) << np.int32(23))
    return bits.view(np.float32)[()]


def pow2(k):
    """2^k as float32 for -126 <= k <= 127 (the exponent field written directly)."""
    return np.array((np.int32(k) + np.int32(127)) << np.int32(23), np.int32).view(np.float32)[()]


@intrinsic
def _fma_llvm(typingctx, a, b, c):
    sig = a(a, b, c)

    def codegen(context, builder, sig, args):
        ty = args[0].type
        name = "llvm.fma.f32" if ty == ir.FloatType() else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)
        return builder.call(fn, args)                  # one vfmadd on FMA3 CPUs

    return sig, codegen


@intrinsic
def _scale_exponent_llvm(typingctx, v, k):
    sig = types.float32(types.float32, types.int32)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.add(builder.bitcast(args[0], i32), builder.shl(args[1], ir.Constant(i32, 23)))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen


@intrinsic
def _pow2_llvm(typingctx, k):
    sig = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen


@overload(fma, inline="always")
def _fma_jit(a, b, c):
    return lambda a, b, c: _fma_llvm(a, b, c)


@overload(scale_exponent, inline="always")
def _scale_exponent_jit(v, k):
    return lambda v, k: _scale_exponent_llvm(v, k)


@overload(pow2, inline="always")
def _pow2_jit(k):
    return lambda k: _pow2_llvm(k)


@njit(inline="always", error_model="numpy")
def exp32(x):
    """e^x for a float32 x, with np.exp's bits (see the module docstring for the steps)."""
    big, small, nan = x >= XMAX, x <= XMIN, x != x
    x = np.float32(0) if big | small | nan else x
    k = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC
    r = fma(k, LN2_HI, x)
    r = fma(k, LN2_LO, r)
    p = fma(fma(fma(fma(fma(P[5], r, P[4]), r, P[3]), r, P[2]), r, P[1]), r, P[0])
    q = fma(fma(Q[2], r, Q[1]), r, Q[0])
    ki = np.int32(k)
    y = scale_exponent(p / q, max(ki, np.int32(MIN_NORMAL_K)))
    y = y * pow2(min(ki - np.int32(MIN_NORMAL_K), np.int32(0)))       # 1 unless the result is subnormal
    y = np.float32(np.inf) if big else y                              # (selects, not branches: the loops
    y = np.float32(0) if small else y                                 # that call this stay vectorised)
    return np.float32(np.nan) if nan else y


@njit(cache=True, error_model="numpy")
def _exp32_range(a, lo, hi):
    b = a[lo:hi]                                     # (a loop from 0 over a slice vectorises)
    for j in range(b.shape[0]):
        b[j] = exp32(b[j])


@njit(parallel=True, cache=True)
def _exp32_par(a, P):
    n = a.shape[0]
    for k in prange(P):
        _exp32_range(a, k * n // P, (k + 1) * n // P)


@njit(cache=True, error_model="numpy")
def _neg_abs_exp32(y, c0, out, lo, hi):
    C = out.shape[1]
    for r in range(lo, hi):
        yr, er = y[r, c0:c0 + C], out[r]                 # (row slices: loops over them from 0 vectorise)
        for j in range(C):
            er[j] = exp32(-abs(yr[j]))


@njit(parallel=True, cache=True)
def _neg_abs_exp32_par(y, c0, out, P):
    N = y.shape[0]
    for k in prange(P):
        _neg_abs_exp32(y, c0, out, k * N // P, (k + 1) * N // P)


def probe_values() -> np.ndarray:
    """The values the first-use check compares with np.exp: 65,536 bit patterns spread evenly over all of
    float32 (every exponent, both signs, NaNs and infinities among them), and the edges of every case above:
    the overflow and underflow limits and their neighbours, the subnormal results around k = -125, zeros."""
    spread = (np.arange(1 << 16, dtype=np.uint64) * 65_537).astype(np.uint32).view(np.float32)
    edges = np.array([XMAX, XMIN, 0.0, -0.0, np.inf, -np.inf, np.nan, -87.0, -86.5, -88.0, -103.0, 88.0, 1.0, -1.0],
                     np.float32)
    near = np.concatenate([np.nextafter(edges[:2], np.float32(d)) for d in (np.inf, -np.inf)])
    sub = np.linspace(-103.97, -86.0, 4096, dtype=np.float32)                   # subnormal and tiny results
    return np.concatenate([spread, edges, near, sub])


def _same_bits_as_numpy() -> bool:
    """Does this process's np.exp give exp32's bits? (False with the JIT off: exp32 in Python, one Fraction-exact
    fma at a time, is far too slow to stand in for np.exp; it is tested, not used, there.)"""
    import numba
    if numba.config.DISABLE_JIT:
        return False
    x = probe_values()
    with np.errstate(all="ignore"):
        want = np.exp(x)
    got = x.copy()
    _exp32_par(got, 1)
    return bool(np.array_equal(want.view(np.uint32), got.view(np.uint32)))


_MATCHES: list = []


def matches_numpy() -> bool:
    """True when exp32 is this process's np.exp bit for bit (checked once, on first use: see probe_values)."""
    if not _MATCHES:
        _MATCHES.append(_same_bits_as_numpy())
    return _MATCHES[0]


def usable(a: np.ndarray) -> bool:
    """True when exp32's kernels may stand in for np.exp on ``a``: float32 and this NumPy's bits."""
    return a.dtype == np.float32 and matches_numpy()


def exp32_inplace(a: np.ndarray, parts: int) -> np.ndarray:
    """a = e^a in place, ``a`` float32 C-contiguous, split into ``parts`` contiguous pieces over the threads."""
    _exp32_par(a.reshape(-1), parts)
    return a


def neg_abs_exp32(y: np.ndarray, c0: int, C: int, parts: int) -> np.ndarray:
    """e^-|y[:, c0:c0+C]| in a fresh (N, C) array, one pass on every thread; y (N, W) float32 C-contiguous."""
    out = np.empty((y.shape[0], C), y.dtype)
    _neg_abs_exp32_par(y, c0, out, parts)
    return out
