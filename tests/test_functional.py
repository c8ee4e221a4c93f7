"""RMSNorm, sigmoid and SiLU (functional.py): forward formulas, golden units, float64 gradient checks."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from goldencheck import assert_close_to_max
from gradcheck import assert_grad_close, numerical_grad
from minimmf.functional import (rmsnorm_backward, rmsnorm_forward, sigmoid, sigmoid_backward, silu,
                                silu_backward)
from strategies import float_arrays, gaussian_arrays


def rmsnorm_loop(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Independent RMSNorm: one token at a time, Python floats, math.fsum for the mean square."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.empty_like(x2)
    for n, row in enumerate(x2):
        r = 1.0 / math.sqrt(math.fsum(float(v) * float(v) for v in row) / len(row) + eps)
        out[n] = [float(v) * r * float(g) for v, g in zip(row, w)]
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------- RMSNorm

@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7).flatmap(
           lambda s: st.tuples(float_arrays(s, np.float32), gaussian_arrays(s[-1:], np.float32))),
       st.sampled_from([1e-6, 1e-8, 1e-2]))
def test_rmsnorm_is_x_over_root_mean_square_times_gain(xw, eps):
    """RMSNorm(x; w) = x / sqrt(mean(x^2) + eps) * w per token: no mean subtraction, no bias (float32 math)."""
    x, w = xw
    y, _ = rmsnorm_forward(x, w, eps)
    assert y.dtype == np.float32 and y.shape == x.shape
    expected = rmsnorm_loop(x, w, eps)
    scale = np.abs(x.astype(np.float64)) / math.sqrt(eps) * np.abs(w.astype(np.float64))   # per-entry bound
    assert np.all(np.abs(y - expected) <= 1e-6 * np.abs(expected) + 1e-7 * scale + 1e-30)


def test_rmsnorm_does_not_subtract_the_mean():
    """A constant token c normalizes to sign(c) * w (RMS, not LayerNorm, which would give 0)."""
    x = np.full((1, 4), 3.0)
    w = np.array([1.0, 2.0, -1.0, 0.5])
    y, _ = rmsnorm_forward(x, w, 0.0)
    np.testing.assert_allclose(y[0], w, rtol=1e-15)


def test_rmsnorm_forward_does_not_mutate_its_inputs():
    """Forward never mutates x or w."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 5)), rng.standard_normal(5)
    x0, w0 = x.copy(), w.copy()
    rmsnorm_forward(x, w)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rmsnorm_gradients_match_finite_differences(seed):
    """Float64 central differences of sum(dy * RMSNorm(x; w)) agree with rmsnorm_backward's dx and dw."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 7)) * rng.uniform(0.1, 3.0)
    w = 1.0 + 0.3 * rng.standard_normal(7)
    dy = rng.standard_normal(x.shape)
    y, cache = rmsnorm_forward(x, w, 1e-6)
    dx, dw = rmsnorm_backward(dy, cache)
    assert dx.shape == x.shape and dw.shape == w.shape
    f = lambda: float(np.sum(rmsnorm_forward(x, w, 1e-6)[0] * dy))   # noqa: E731
    assert_grad_close(dx, *numerical_grad(f, x), "dx")
    assert_grad_close(dw, *numerical_grad(f, w), "dw")


def test_rmsnorm_matches_the_golden_gated_norm(golden):
    """Teacher-forced unit/gnorm: y = RMSNorm(x; w, 1e-6) * silu(o), within 1e-5 of max (the MLGRU output gate)."""
    n, _ = rmsnorm_forward(golden["unit/gnorm_x"], golden["unit/gnorm_w"], 1e-6)
    assert_close_to_max(n * silu(golden["unit/gnorm_o"]), golden["unit/gnorm_y"], "gnorm")


def test_rmsnorm_matches_the_golden_residual_norm(golden):
    """Teacher-forced unit/resnorm: (RMSNorm(x + res; w, 1e-6), x + res), within 1e-5 of max."""
    r = golden["unit/resnorm_x"] + golden["unit/resnorm_res"]
    assert_close_to_max(r, golden["unit/resnorm_res_out"], "resnorm residual")
    n, _ = rmsnorm_forward(r, golden["unit/resnorm_w"], 1e-6)
    assert_close_to_max(n, golden["unit/resnorm_y"], "resnorm")


# ----------------------------------------------------------------------------- sigmoid and SiLU

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_does_not_overflow_at_plus_minus_1000(dtype):
    """σ(±1000) = 1 and 0 without overflow or invalid values (underflow to 0 is fine), in the input's dtype."""
    x = np.array([-1000.0, 1000.0, -np.finfo(dtype).max, np.finfo(dtype).max], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            s = sigmoid(x)
            y = silu(x[:2])
    assert s.dtype == dtype
    np.testing.assert_array_equal(s, [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(y, [-0.0, 1000.0])


@given(float_arrays(hnp.array_shapes(max_dims=2, max_side=9), np.float64, scale=40.0))
def test_sigmoid_equals_one_over_one_plus_exp_minus_x(x):
    """σ(x) = 1 / (1 + e^-x) and silu(x) = x σ(x), against Python's math.exp entry by entry."""
    expected = np.array([1.0 / (1.0 + math.exp(-v)) for v in x.ravel()]).reshape(x.shape)
    np.testing.assert_allclose(sigmoid(x), expected, rtol=1e-14, atol=0)
    np.testing.assert_allclose(silu(x), x * expected, rtol=1e-14, atol=0)


@given(float_arrays(hnp.array_shapes(max_dims=2, max_side=9), np.float32, scale=40.0))
def test_sigmoid_and_silu_keep_float32(x):
    """float32 in, float32 out (no silent promotion to float64 in the model's hot path)."""
    assert sigmoid(x).dtype == np.float32
    assert silu(x).dtype == np.float32


@pytest.mark.parametrize("seed", [0, 1])
def test_sigmoid_and_silu_gradients_match_finite_differences(seed):
    """Float64 central differences agree with sigmoid_backward (from σ(x)) and silu_backward (from x)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 8)) * 4.0
    dy = rng.standard_normal(x.shape)
    ds = sigmoid_backward(dy, sigmoid(x))
    assert_grad_close(ds, *numerical_grad(lambda: float(np.sum(sigmoid(x) * dy)), x), "sigmoid")
    dsilu = silu_backward(dy, x)
    assert_grad_close(dsilu, *numerical_grad(lambda: float(np.sum(silu(x) * dy)), x), "silu")
