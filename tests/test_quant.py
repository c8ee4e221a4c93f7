"""The two quantizers of BitLinear (SPEC §1): absmean ternary weights, absmax 8-bit activations."""
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from goldencheck import assert_close_to_max
from minimmf.functional import rmsnorm_forward
from minimmf.quant import (activation_quant, activation_quant_dequant, round_half_away, weight_quant,
                           weight_quant_dequant)
from strategies import float_arrays, gaussian_arrays, pow2_exponents

shapes_2d = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)
float_dtypes = st.sampled_from([np.float32, np.float64])


def decimal_round_half_away(v: float) -> int:
    """Independent rounding: the exact decimal value of the float, |v| rounded half up, sign put back."""
    r = int(abs(Decimal(float(v))).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return -r if v < 0 else r


# ----------------------------------------------------------------------------- rounding

@given(st.lists(st.floats(-300, 300, allow_nan=False, width=64), min_size=1, max_size=20))
@example([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -127.5, 0.0, -0.0])
def test_round_half_away_matches_decimal_round_half_up_on_the_magnitude(values):
    """round_half_away(v) = sign(v) * floor(|v| + 1/2) exactly, as decimal ROUND_HALF_UP on |v| gives it."""
    x = np.array(values, dtype=np.float64)
    got = round_half_away(x)
    assert got.dtype == np.float64
    assert [int(v) for v in got] == [decimal_round_half_away(v) for v in values]


@given(st.integers(-1000, 999), float_dtypes)
def test_round_half_away_rounds_every_tie_away_from_zero(k, dtype):
    """Every tie k + 1/2 rounds to the integer farther from zero (both float widths)."""
    tie = dtype(k + 0.5)
    expected = k + 1 if k >= 0 else k
    assert round_half_away(np.array([tie]))[0] == expected
    assert round_half_away(np.array([tie])).dtype == dtype


def test_round_half_away_differs_from_numpy_round_half_to_even():
    """np.round(0.5) = 0 and np.round(2.5) = 2 (ties to even); round_half_away gives 1 and 3."""
    x = np.array([0.5, 2.5, -0.5, -2.5])
    np.testing.assert_array_equal(np.round(x), [0.0, 2.0, -0.0, -2.0])
    np.testing.assert_array_equal(round_half_away(x), [1.0, 3.0, -1.0, -3.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_half_away_does_not_round_the_float_just_below_a_half_up(dtype):
    """The largest float below 1/2 rounds to 0, and an odd integer too big for |v| + 1/2 stays itself."""
    # the naive floor(|v| + 0.5) gets both wrong: the sum rounds up to 1.0, or to the next even integer
    below_half = np.nextafter(dtype(0.5), dtype(0))
    big_odd = dtype(2 ** (np.finfo(dtype).nmant) + 1)          # 2**23 + 1 or 2**52 + 1, exact
    x = np.array([below_half, -below_half, big_odd, -big_odd], dtype=dtype)
    expected = [decimal_round_half_away(v) for v in x]
    assert expected == [0, 0, int(big_odd), -int(big_odd)]
    assert [int(v) for v in round_half_away(x)] == expected


# ----------------------------------------------------------------------------- weight quantizer

@given(float_arrays(shapes_2d, np.float32))
def test_weight_codes_are_int8_in_minus_one_zero_one(W):
    """q_w = clip(round(W s_w), -1, 1) is an int8 array of values in {-1, 0, 1}, same shape as W."""
    q_w, s_w = weight_quant(W)
    assert q_w.dtype == np.int8 and q_w.shape == W.shape
    assert set(np.unique(q_w)) <= {-1, 0, 1}
    assert np.isfinite(s_w) and s_w > 0


@given(float_arrays(shapes_2d, np.float64))
def test_weight_quant_equals_an_independent_absmean_ternary_computation(W):
    """q_w = clip(round_half_away(W / max(mean|W|, 1e-5)), -1, 1), rounding done with decimal arithmetic."""
    q_w, s_w = weight_quant(W)
    s_ref = 1.0 / max(float(np.mean(np.abs(W))), 1e-5)
    assert s_w == pytest.approx(s_ref, rel=1e-12)
    v = W * s_w                                                # the quantizer's own products, to test rounding
    expected = np.array([min(1, max(-1, decimal_round_half_away(t))) for t in v.ravel()]).reshape(W.shape)
    np.testing.assert_array_equal(q_w, expected)


@given(gaussian_arrays((7, 9), np.float32), pow2_exponents())
def test_weight_quant_is_invariant_to_positive_rescaling_by_powers_of_two(W, k):
    """Codes of 2^k W equal those of W and s_w scales by 2^-k (an exact rescaling: no tie can move)."""
    q1, s1 = weight_quant(W)
    q2, s2 = weight_quant(W * np.float32(2.0 ** k))
    np.testing.assert_array_equal(q1, q2)
    assert s2 == s1 * np.float32(2.0 ** -k)


@given(gaussian_arrays((6, 10), np.float64), st.floats(1e-3, 1e3))
def test_weight_quant_is_invariant_to_positive_rescaling(W, c):
    """Codes of c W equal those of W for any c > 0, away from rounding ties (|W s_w| within 1e-9 of 1/2)."""
    q1, _ = weight_quant(W)
    q2, _ = weight_quant(W * c)
    t = np.abs(W) / np.mean(np.abs(W))                           # independent |W s_w| in float64
    away_from_tie = np.abs(t - 0.5) > 1e-9
    assert away_from_tie.mean() > 0.9
    np.testing.assert_array_equal(q1[away_from_tie], q2[away_from_tie])


@given(float_arrays(shapes_2d, np.float64), float_dtypes)
def test_dequantized_weights_are_within_half_a_step_inside_the_clip_range(W, dtype):
    """|W - W_q| <= 0.5 / s_w where |W s_w| <= 1.5; beyond it W_q = sign(W) / s_w (saturation)."""
    W = W.astype(dtype)
    q_w, s_w = weight_quant(W)
    W_q = weight_quant_dequant(W)
    W64, s64 = W.astype(np.float64), float(s_w)
    np.testing.assert_allclose(W_q.astype(np.float64), q_w / s64, rtol=1e-6)
    inside = np.abs(W64 * s64) <= 1.5
    assert np.all(np.abs(W64 - W_q)[inside] * s64 <= 0.5 + 1e-5)
    np.testing.assert_array_equal(q_w[~inside], np.sign(W64[~inside]))


def test_weight_quant_saturates_large_weights_at_plus_minus_one():
    """One weight far above the mean: round(W s_w) would be 7, clip(round(.)) gives the code 1."""
    W = np.array([[0.1, -0.1, 0.1, 0.1, 4.0]])                 # mean|W| = 0.88, 4.0 s_w = 4.55 -> 5 -> 1
    q_w, s_w = weight_quant(W)
    assert round(4.0 * s_w) == 5
    np.testing.assert_array_equal(q_w, [[0, 0, 0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_quant_of_zeros_and_tiny_weights_uses_the_1e_5_floor(dtype):
    """s_w = 1 / max(mean|W|, 1e-5): all zeros give s_w = 1e5 and codes 0; weights of 1e-6 give 0.1 -> 0."""
    q_w, s_w = weight_quant(np.zeros((3, 4), dtype))
    assert s_w == pytest.approx(1e5, rel=1e-6)
    assert not np.any(q_w)
    np.testing.assert_array_equal(weight_quant_dequant(np.zeros((3, 4), dtype)), 0)
    q_w, s_w = weight_quant(np.full((3, 4), 1e-6, dtype))      # without the floor: s_w = 1e6, codes 1
    assert s_w == pytest.approx(1e5, rel=1e-6)
    assert not np.any(q_w)


def test_weight_quant_matches_the_golden_reference(golden):
    """Teacher-forced: unit/weight_quant_in -> the reference's dequantized output, within 1e-5 of max."""
    W = golden["unit/weight_quant_in"]
    out = weight_quant_dequant(W)
    assert out.dtype == W.dtype
    assert_close_to_max(out, golden["unit/weight_quant_out"], "weight_quant")


# ----------------------------------------------------------------------------- activation quantizer

@given(float_arrays(shapes_2d, np.float32))
def test_activation_codes_are_int8_in_minus_128_to_127(x):
    """q_x = clip(round(x s_x), -128, 127) is int8 of x's shape; s_x has one entry per token, (..., 1)."""
    q_x, s_x = activation_quant(x)
    assert q_x.dtype == np.int8 and q_x.shape == x.shape
    assert s_x.shape == (*x.shape[:-1], 1)
    assert q_x.min() >= -128 and q_x.max() <= 127


@given(gaussian_arrays((5, 11), np.float64, scale=3.0), float_dtypes)
def test_largest_activation_of_each_token_maps_to_plus_minus_127(x, dtype):
    """Absmax scaling: the largest |x_j| of every token gets the code ±127, with the sign of x_j."""
    x = x.astype(dtype)
    q_x, _ = activation_quant(x)
    j = np.argmax(np.abs(x), axis=-1)
    rows = np.arange(x.shape[0])
    np.testing.assert_array_equal(q_x[rows, j], 127 * np.sign(x[rows, j]))


@given(float_arrays(shapes_2d, np.float64))
def test_activation_quant_equals_an_independent_absmax_8bit_computation(x):
    """s_x = 127 / max(max_j |x_j|, 1e-5) per token; q_x = clip(round_half_away(x s_x)) by decimal rounding."""
    q_x, s_x = activation_quant(x)
    s_ref = 127.0 / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), 1e-5)
    np.testing.assert_allclose(s_x, s_ref, rtol=1e-12)
    v = x * s_x
    expected = np.array([min(127, max(-128, decimal_round_half_away(t))) for t in v.ravel()]).reshape(x.shape)
    np.testing.assert_array_equal(q_x, expected)


@given(gaussian_arrays((4, 3, 9), np.float32), st.lists(pow2_exponents(), min_size=12, max_size=12))
def test_activation_quant_is_invariant_to_per_token_rescaling_by_powers_of_two(x, ks):
    """Each token is quantized on its own: scaling token t by 2^k_t keeps its codes and divides s_x by 2^k_t."""
    factors = (2.0 ** np.array(ks, dtype=np.float64)).reshape(4, 3, 1).astype(np.float32)
    q1, s1 = activation_quant(x)
    q2, s2 = activation_quant(x * factors)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(s2, s1 / factors)


@given(float_arrays(shapes_2d, np.float64, scale=100.0), float_dtypes)
def test_dequantized_activations_are_within_half_a_step(x, dtype):
    """|x - x_q| <= 0.5 / s_x for every entry (absmax scaling never clips), up to float slack."""
    x = x.astype(dtype)
    _, s_x = activation_quant(x)
    x_q = activation_quant_dequant(x)
    assert x_q.dtype == x.dtype and x_q.shape == x.shape
    err_in_steps = np.abs(x.astype(np.float64) - x_q.astype(np.float64)) * s_x.astype(np.float64)
    assert np.all(err_in_steps <= 0.5 + 1e-4), float(err_in_steps.max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_quant_of_zero_and_tiny_tokens_uses_the_1e_5_floor(dtype):
    """s_x = 127 / max(max|x|, 1e-5): a zero token gets s_x = 1.27e7 and codes 0; 1e-6 gives 12.7 -> 13."""
    x = np.zeros((2, 5), dtype)
    x[1] = 1e-6                                                # without the floor: every code would be 127
    q_x, s_x = activation_quant(x)
    np.testing.assert_allclose(s_x[:, 0], [1.27e7, 1.27e7], rtol=1e-6)
    np.testing.assert_array_equal(q_x, [[0] * 5, [13] * 5])
    assert np.all(np.isfinite(activation_quant_dequant(x)))


def test_activation_quant_matches_the_golden_reference(golden):
    """Teacher-forced: unit/activation_quant_in -> the reference's dequantized output, within 1e-5 of max."""
    x = golden["unit/activation_quant_in"]
    out = activation_quant_dequant(x)
    assert out.dtype == x.dtype
    assert_close_to_max(out, golden["unit/activation_quant_out"], "activation_quant")


def test_rmsnorm_then_activation_quant_matches_the_golden_fused_kernel(golden):
    """Teacher-forced: quant_act(RMSNorm(x; w, eps=1e-8)) equals the reference's fused kernel (called with 1e-8)."""
    n, _ = rmsnorm_forward(golden["unit/rmsnorm_quant_x"], golden["unit/rmsnorm_quant_w"], eps=1e-8)
    assert_close_to_max(activation_quant_dequant(n), golden["unit/rmsnorm_quant_y"], "rmsnorm_quant")
