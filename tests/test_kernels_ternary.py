"""Tests for minimmf/kernels/ternary.py: packing, and the add/sub kernels against their NumPy references."""
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimmf.kernels import ternary
from minimmf.kernels.ternary import (
    PackedTernary,
    float_ternary_matmul,
    float_ternary_matmul_ref,
    pack_ternary,
    ternary_matmul,
    ternary_matmul_ref,
    unpack_ternary,
)
from strategies_kernels import ternary_problems

pytestmark = pytest.mark.jit


@given(ternary_problems())
def test_unpack_inverts_pack(problem):
    """unpack_ternary(pack_ternary(q_w)) == q_w for every ternary matrix."""
    _, q_w = problem
    packed = pack_ternary(q_w)
    assert (packed.out_features, packed.in_features) == q_w.shape
    assert packed.codes.shape == (q_w.shape[0], 32 * -(-q_w.shape[1] // 128))
    np.testing.assert_array_equal(unpack_ternary(packed), q_w)


@pytest.mark.parametrize("value, code", [(0, 0b00), (1, 0b01), (-1, 0b10)])
@pytest.mark.parametrize("i", [0, 1, 31, 32, 63, 64, 95, 96, 127, 128, 200, 255])
def test_input_i_lands_in_byte_i_mod_32_at_bits_2k(i, value, code):
    """Input i = 128 b + 32 k + j is stored in byte 32 b + j, bits 2k..2k+1, as 00 = 0, 01 = +1, 10 = -1."""
    q_w = np.zeros((1, 256), np.int8)
    q_w[0, i] = value
    b, k, j = i // 128, (i % 128) // 32, i % 32
    expected = np.zeros((1, 64), np.uint8)
    expected[0, 32 * b + j] = code << (2 * k)
    np.testing.assert_array_equal(pack_ternary(q_w).codes, expected)


@given(ternary_problems())
def test_ternary_matmul_equals_reference_exactly(problem):
    """The add/sub kernel on packed codes gives exactly the int32 sum q_x @ q_w.T."""
    q_x, q_w = problem
    y = ternary_matmul(q_x, pack_ternary(q_w))
    assert y.dtype == np.int32 and y.shape == (q_x.shape[0], q_w.shape[0])
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x, q_w))


@given(ternary_problems(), st.sampled_from([0, 10**12]))
def test_serial_and_parallel_paths_both_equal_reference(problem, serial_below):
    """Whichever path (serial or prange) a shape takes, the result is the exact reference."""
    q_x, q_w = problem
    with mock.patch.object(ternary, "SERIAL_BELOW", serial_below):
        np.testing.assert_array_equal(ternary_matmul(q_x, pack_ternary(q_w)), ternary_matmul_ref(q_x, q_w))
        dy = np.random.default_rng(0).standard_normal((q_x.shape[0], q_w.shape[0]))
        np.testing.assert_allclose(float_ternary_matmul(dy, pack_ternary(q_w)), float_ternary_matmul_ref(dy, q_w),
                                   rtol=1e-12, atol=1e-12 * np.abs(dy).sum())


@pytest.mark.parametrize("I", [1, 127, 128, 129, 511, 512, 513, 20000])
def test_ternary_matmul_is_exact_at_extreme_codes(I):
    """Activations at -128 and 127 against all +1 or all -1 weights never overflow, for any width I."""
    q_w = np.stack([np.ones(I, np.int8), -np.ones(I, np.int8), np.zeros(I, np.int8)])  # (3, I)
    q_x = np.stack([np.full(I, -128, np.int8), np.full(I, 127, np.int8)])  # (2, I)
    y = ternary_matmul(q_x, pack_ternary(q_w))
    np.testing.assert_array_equal(y, [[-128 * I, 128 * I, 0], [127 * I, -127 * I, 0]])
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x, q_w))


def test_ternary_matmul_accepts_non_contiguous_activations_and_leaves_inputs_alone():
    """A strided view of q_x gives the same result, and neither q_x nor the packed codes change."""
    rng = np.random.default_rng(1)
    q_w = rng.integers(-1, 2, size=(7, 300), dtype=np.int8)
    big = rng.integers(-128, 128, size=(6, 600), dtype=np.int8)
    q_x = big[::2, ::2]  # (3, 300), not contiguous
    packed = pack_ternary(q_w)
    before_x, before_codes = q_x.copy(), packed.codes.copy()
    np.testing.assert_array_equal(ternary_matmul(q_x, packed), ternary_matmul_ref(q_x, q_w))
    np.testing.assert_array_equal(q_x, before_x)
    np.testing.assert_array_equal(packed.codes, before_codes)


@given(ternary_problems(), st.sampled_from([np.float32, np.float64]))
def test_float_ternary_matmul_equals_reference_within_rounding(problem, dtype):
    """dy @ q_w by additions and subtractions equals the reference up to the summation order's rounding."""
    _, q_w = problem
    rng = np.random.default_rng(q_w.size)
    dy = rng.standard_normal((3, q_w.shape[0])).astype(dtype)
    dx = float_ternary_matmul(dy, pack_ternary(q_w))
    assert dx.dtype == dtype and dx.shape == (3, q_w.shape[1])
    # Any order of O additions of +/-dy is within O * eps * sum|dy| of the exact sum.
    bound = q_w.shape[0] * np.finfo(dtype).eps * np.abs(dy).astype(np.float64).sum(axis=1, keepdims=True)
    err = np.abs(dx.astype(np.float64) - float_ternary_matmul_ref(dy.astype(np.float64), q_w))
    assert np.all(err <= bound)


def test_float_ternary_matmul_is_exact_on_integer_valued_gradients():
    """With small integer dy every partial sum is exact, so the kernel equals the reference bit for bit."""
    rng = np.random.default_rng(2)
    q_w = rng.integers(-1, 2, size=(50, 260), dtype=np.int8)
    dy = rng.integers(-100, 100, size=(4, 50)).astype(np.float32)
    np.testing.assert_array_equal(float_ternary_matmul(dy, pack_ternary(q_w)), float_ternary_matmul_ref(dy, q_w))


BAD_Q_W = [
    (np.zeros((2, 3), np.int16), "dtype int8"),
    (np.zeros(3, np.int8), "2-D"),
    (np.zeros((0, 3), np.int8), "at least one"),
    (np.full((2, 3), 2, np.int8), "{-1, 0, 1}"),
    (np.full((2, 3), -2, np.int8), "{-1, 0, 1}"),
]


@pytest.mark.parametrize("q_w, message", BAD_Q_W)
def test_pack_ternary_rejects_bad_weights_naming_q_w(q_w, message):
    """pack_ternary raises a ValueError that names q_w and the broken rule."""
    with pytest.raises(ValueError, match="q_w") as info:
        pack_ternary(q_w)
    assert message in str(info.value)


def test_kernels_reject_bad_activations_gradients_and_packs():
    """ternary_matmul and float_ternary_matmul raise ValueErrors naming q_x, dy or packed."""
    packed = pack_ternary(np.ones((4, 10), np.int8))
    with pytest.raises(ValueError, match="q_x must have dtype int8"):
        ternary_matmul(np.zeros((1, 10), np.int32), packed)
    with pytest.raises(ValueError, match=r"q_x must have shape \(N, 10\)"):
        ternary_matmul(np.zeros((1, 11), np.int8), packed)
    with pytest.raises(ValueError, match=r"q_x must have shape"):
        ternary_matmul(np.zeros(10, np.int8), packed)
    with pytest.raises(ValueError, match="dy must have dtype float32 or float64"):
        float_ternary_matmul(np.zeros((1, 4), np.int32), packed)
    with pytest.raises(ValueError, match=r"dy must have shape \(N, 4\)"):
        float_ternary_matmul(np.zeros((1, 5)), packed)
    with pytest.raises(ValueError, match="packed must be a PackedTernary"):
        ternary_matmul(np.zeros((1, 10), np.int8), np.ones((4, 10), np.int8))
    with pytest.raises(ValueError, match="packed.codes must be uint8"):
        ternary_matmul(np.zeros((1, 10), np.int8), PackedTernary(packed.codes[:, :3], 4, 10))
