"""Tests for minimmf/kernels/scan.py: the MLGRU recurrence h_t = f_t * h_{t-1} + i_t and its backward."""
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimmf.kernels import scan
from minimmf.kernels.scan import scan_backward, scan_backward_ref, scan_forward, scan_forward_ref
from strategies_kernels import scan_problems

pytestmark = pytest.mark.jit

dtypes = st.sampled_from([np.float32, np.float64])


@given(st.data(), dtypes)
def test_scan_forward_equals_reference_exactly(data, dtype):
    """The Numba scan computes the same products in the same order as the NumPy loop: equal bit for bit."""
    f, i, h0 = data.draw(scan_problems(dtype))
    h = scan_forward(f, i, h0)
    assert h.dtype == dtype and h.shape == f.shape
    np.testing.assert_array_equal(h, scan_forward_ref(f, i, h0))


@given(st.data(), dtypes)
def test_scan_backward_equals_reference_exactly(data, dtype):
    """The Numba reverse-time backward equals the NumPy loop bit for bit."""
    f, i, h0 = data.draw(scan_problems(dtype))
    h = scan_forward_ref(f, i, h0)
    dh = np.random.default_rng(f.size).standard_normal(f.shape).astype(dtype)
    for got, want in zip(scan_backward(dh, f, h, h0), scan_backward_ref(dh, f, h, h0)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


@given(st.data(), st.sampled_from([0, 10**12]))
def test_serial_and_parallel_scan_paths_agree(data, serial_below):
    """Whichever path (serial or prange) a shape takes, forward and backward equal the references."""
    f, i, h0 = data.draw(scan_problems())
    dh = np.cos(np.arange(f.size)).reshape(f.shape)
    with mock.patch.object(scan, "SERIAL_BELOW", serial_below):
        h = scan_forward(f, i, h0)
        np.testing.assert_array_equal(h, scan_forward_ref(f, i, h0))
        for got, want in zip(scan_backward(dh, f, h, h0), scan_backward_ref(dh, f, h, h0)):
            np.testing.assert_array_equal(got, want)


@given(st.data())
def test_scan_backward_matches_finite_differences(data):
    """df, di, dh0 equal central differences of L = sum(w * h) in float64."""
    f, i, h0 = data.draw(scan_problems(np.float64, max_B=2, max_T=5, max_D=3))
    w = np.random.default_rng(f.size).standard_normal(f.shape)  # dL/dh
    df, di, dh0 = scan_backward(w, f, scan_forward(f, i, h0), h0)
    eps = 1e-6
    for x, grad in ((f, df), (i, di), (h0, dh0)):
        flat = x.reshape(-1)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + eps
            plus = np.sum(w * scan_forward(f, i, h0))
            flat[k] = old - eps
            minus = np.sum(w * scan_forward(f, i, h0))
            flat[k] = old
            np.testing.assert_allclose(grad.reshape(-1)[k], (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)


@given(st.data())
def test_scan_is_causal(data):
    """Changing f or i at time t leaves h before t unchanged."""
    f, i, h0 = data.draw(scan_problems())
    t = data.draw(st.integers(0, f.shape[1] - 1))
    f2, i2 = f.copy(), i.copy()
    f2[:, t:] = 1.0 - f2[:, t:]
    i2[:, t:] += 1.0
    np.testing.assert_array_equal(scan_forward(f2, i2, h0)[:, :t], scan_forward(f, i, h0)[:, :t])


@given(st.data())
def test_splitting_the_sequence_and_handing_over_h_equals_the_full_sequence(data):
    """Scanning [0, t) then [t, T) from the last state equals one scan over [0, T) (decode = prefill)."""
    f, i, h0 = data.draw(scan_problems(max_T=12))
    t = data.draw(st.integers(1, f.shape[1]))
    full = scan_forward(f, i, h0)
    first = scan_forward(f[:, :t], i[:, :t], h0)
    parts = [first]
    if t < f.shape[1]:
        parts.append(scan_forward(f[:, t:], i[:, t:], first[:, -1]))
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), full)


def test_scan_accepts_any_layout_and_never_mutates_inputs():
    """Transposed, strided views give the contiguous result, and no input array is written to."""
    rng = np.random.default_rng(3)
    B, T, D = 3, 7, 5
    f = rng.uniform(0, 1, size=(D, T, B)).transpose(2, 1, 0)  # (B, T, D), not contiguous
    i = rng.standard_normal((B, 2 * T, D))[:, ::2]  # (B, T, D), strided
    h0 = rng.standard_normal((D, B)).T  # (B, D), Fortran order
    dh = rng.standard_normal((B, T, D))
    copies = [a.copy() for a in (f, i, h0, dh)]
    h = scan_forward(f, i, h0)
    np.testing.assert_array_equal(h, scan_forward_ref(np.ascontiguousarray(f), np.ascontiguousarray(i),
                                                      np.ascontiguousarray(h0)))
    h_copy = h.copy()
    grads = scan_backward(dh, f, h, h0)
    for got, want in zip(grads, scan_backward_ref(dh, f, h, h0)):
        np.testing.assert_array_equal(got, want)
    for a, c in zip((f, i, h0, dh, h), copies + [h_copy]):
        np.testing.assert_array_equal(a, c)


def test_scan_rejects_bad_inputs_naming_the_argument():
    """Empty sequences (T = 0), wrong shapes and mixed or non-float dtypes raise clear ValueErrors."""
    f = np.full((2, 3, 4), 0.5)
    h0 = np.zeros((2, 4))
    cases = [
        ((f[:, :0], f[:, :0], h0), "at least one time step"),
        ((f, f[:, :2], h0), "i must have the shape of f"),
        ((f, f, h0[:1]), r"h0 must have shape \(B, D\)"),
        ((f[0], f[0], h0), "f must be 3-D"),
        ((f, f.astype(np.float32), h0), "i must have the dtype of f"),
        ((f.astype(np.int32), f, h0), "f must have dtype float32 or float64"),
    ]
    for args, message in cases:
        for fn in (scan_forward, scan_forward_ref):
            with pytest.raises(ValueError, match=message):
                fn(*args)
    with pytest.raises(ValueError, match="dh must have the shape of f"):
        scan_backward(f[:, :2], f, f, h0)
    with pytest.raises(ValueError, match="h must have the shape of f"):
        scan_backward(f, f, f[:, :2], h0)
