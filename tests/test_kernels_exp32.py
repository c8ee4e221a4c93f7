"""Tests for minimmf/kernels/exp32.py: NumPy's float32 e^x written out in Numba gives np.exp's bits, and where it
would not, nothing uses it.

The specification is ``np.exp`` itself, compared as raw bits (NaNs included). All 4,294,967,296 float32 inputs
were compared once when the kernel was written (0 differences, ``benchmarks/README.md``); here every 7th input the
algorithm computes, every edge of the algorithm, and random arrays drawn by Hypothesis.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minimmf  # noqa: F401  (configures Numba and OpenBLAS first)
import numba
from minimmf.kernels import exp32, fused

pytestmark = pytest.mark.jit
needs_jit = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="hundreds of millions of values: with the JIT on "
                               "only (the small cases below run in both modes)")


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def _exp32(x):
    y = np.array(x, np.float32).reshape(-1)
    exp32._exp32_par(y, 2)
    return y


def _numpy_exp(x):
    with np.errstate(all="ignore"):
        return np.exp(np.asarray(x, np.float32)).reshape(-1)


def _numpy_runs_its_simd_exp() -> bool:
    """Does this NumPy take the SIMD float32 exp that exp32 writes out? (x86-64 with AVX2 and FMA3, or AVX-512F:
    NumPy's CPU dispatch, as NumPy reports it.)"""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu
    except ImportError:                                 # pragma: no cover - NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as cpu
    return bool(cpu.get("AVX512F") or (cpu.get("AVX2") and cpu.get("FMA3")))


@pytest.fixture
def numpy_bits_here():
    """The kernel's bits are promised where NumPy runs the routine it writes out; elsewhere ``matches_numpy`` is
    False and nothing uses the kernel (the fallback test below)."""
    if not _numpy_runs_its_simd_exp():
        pytest.skip("this NumPy's float32 exp is another routine, so exp32 is not used in this process")


def test_the_first_use_check_finds_numpys_bits_where_numpy_runs_that_routine(numpy_bits_here):
    """Where NumPy's SIMD exp runs, the once-per-process check must pass (else every sigmoid would silently take
    the slower np.exp pass); with the JIT off the kernels keep np.exp (exp32 in Python is ~10^5 times slower)."""
    assert exp32.matches_numpy() is (not numba.config.DISABLE_JIT)


def _sweep(lo: int, hi: int, stride: int) -> int:
    """How many bit patterns lo, lo + stride, ... < hi give other bits than np.exp (in chunks of 2^24 values)."""
    bad = 0
    for a in range(lo, hi, stride << 24):
        x = np.arange(a, min(a + (stride << 24), hi), stride, dtype=np.uint64).astype(np.uint32).view(np.float32)
        bad += int(np.count_nonzero(_bits(_exp32(x)) != _bits(_numpy_exp(x))))
    return bad


@needs_jit
def test_every_7th_float32_that_is_computed_gives_numpys_bits(numpy_bits_here):
    """Every 7th bit pattern from -103.97 to 88.72 (the inputs the algorithm computes: 321 million), and every
    997th of all 2^32 (NaNs and infinities included). An fma written as a product and a sum (one extra rounding)
    changes about 200 results in the whole range; this sweep finds 30 of them (measured)."""
    assert _sweep(0, int(_bits(exp32.XMAX)[()]) + 1, 7) == 0            # 0 .. 88.72
    assert _sweep(0x80000000, int(_bits(exp32.XMIN)[()]) + 1, 7) == 0   # -0 .. -103.97
    assert _sweep(0, 1 << 32, 997) == 0


@needs_jit
def test_the_first_use_checks_values_give_numpys_bits(numpy_bits_here):
    """The 69,650 values of the first-use check: spread over all bit patterns, and the edges of every case."""
    x = exp32.probe_values()
    np.testing.assert_array_equal(_bits(_exp32(x)), _bits(_numpy_exp(x)))


EDGES = np.concatenate([
    np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FFFFFFF], np.uint32).view(np.float32),   # NaNs
    np.array([np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 0.5 * np.log(2), -0.5 * np.log(2)], np.float32),
    [exp32.XMAX, exp32.XMIN], np.nextafter([exp32.XMAX, exp32.XMIN], np.float32(0)),
    np.nextafter([exp32.XMAX, exp32.XMIN], np.float32(np.inf)), np.nextafter([exp32.XMIN], np.float32(-np.inf)),
    np.array([-86.6, -87.3, -87.34, -87.4, -88.0, -89.0, -95.0, -100.0, -103.0, -103.9, 88.0, 80.0], np.float32),
]).astype(np.float32)


def test_the_edges_of_every_case_give_numpys_bits(numpy_bits_here):
    """Overflow and underflow limits and their neighbours, subnormal results (k <= -125), zeros, infinities, NaNs
    with payloads and signs: one value at a time through ``exp32`` itself (the Python form with the JIT off)."""
    got = np.array([exp32.exp32(v) for v in EDGES], np.float32)
    np.testing.assert_array_equal(_bits(got), _bits(_numpy_exp(EDGES)))
    assert exp32.exp32(exp32.XMAX) == np.inf and exp32.exp32(exp32.XMIN) == 0.0
    assert 0 < exp32.exp32(np.float32(-100.0)) < np.finfo(np.float32).tiny        # a subnormal result


def test_fma_rounds_once():
    """a b + c rounded once, where a product rounded first would differ: (1 + 2^-12)^2 - 1 = 2^-11 + 2^-24."""
    a = np.float32(1 + 2.0 ** -12)
    assert exp32.fma(a, a, np.float32(-1)) == np.float32(2.0 ** -11 + 2.0 ** -24)
    assert a * a - np.float32(1) == np.float32(2.0 ** -11)


@given(hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32, allow_nan=True)))
def test_any_array_gives_numpys_bits(x):
    if _numpy_runs_its_simd_exp():
        np.testing.assert_array_equal(_bits(_exp32(x)), _bits(_numpy_exp(x)))


@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 300), st.integers(0, 7))
def test_fused_exponentials_equal_numpys_with_the_kernel_and_without(seed, N, C, c0):
    """e^-|x| (every sigmoid's), e^x in place, and the softmax of cross_entropy_forward: the same bits whether
    exp32 is used or the fallback to np.exp is taken."""
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((N, C + c0)) * 30).astype(np.float32)
    want_e = np.exp(-np.abs(y[:, c0:]))
    logits, target = y * np.float32(0.3), rng.integers(-1, C + c0, N)
    results = []
    for use in (True, False):
        saved = exp32._MATCHES[:]
        exp32._MATCHES[:] = [use and exp32._same_bits_as_numpy()]
        try:
            e = exp32.neg_abs_exp32(y, c0, C, 2) if exp32.usable(y) else fused.exp_inplace(fused.neg_abs(y, c0, C))
            inplace = fused.exp_inplace(-np.abs(y))
            probs, nll = fused.cross_entropy_forward(logits, target)
        finally:
            exp32._MATCHES[:] = saved
        np.testing.assert_array_equal(_bits(e), _bits(want_e))
        np.testing.assert_array_equal(_bits(inplace), _bits(np.exp(-np.abs(y))))
        results.append((probs, nll))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_a_numpy_whose_exp_differs_is_detected_and_the_kernels_fall_back(monkeypatch):
    """If np.exp gave other bits than exp32 (another NumPy, another CPU), the check says so, and the fused kernels
    then call np.exp: their results stay np.exp's."""
    real_exp = np.exp

    def other_exp(x, *args, **kwargs):                 # a NumPy whose exp is one ulp up everywhere
        return np.nextafter(real_exp(x, *args, **kwargs), np.float32(np.inf))

    monkeypatch.setattr(np, "exp", other_exp)           # (NumPy's module: every caller sees it)
    assert exp32._same_bits_as_numpy() is False
    monkeypatch.setattr(exp32, "_MATCHES", [])
    assert exp32.matches_numpy() is False and not exp32.usable(np.zeros(3, np.float32))
    y = np.linspace(-20, 20, 64, dtype=np.float32).reshape(4, 16)
    np.testing.assert_array_equal(fused.exp_inplace(-np.abs(y)), other_exp(-np.abs(y)))


def test_float64_always_takes_numpys_exp():
    assert not exp32.usable(np.zeros(3, np.float64))
    x = np.linspace(-50, 50, 101)
    np.testing.assert_array_equal(fused.exp_inplace(x.copy()), np.exp(x))
