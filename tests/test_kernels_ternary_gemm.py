"""Tests for minimmf/kernels/ternary_gemm.py: the training forward's product, in exact integer sums, against the
integer reference ``ternary_matmul_ref`` and against the float product the readable layer computes."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimmf.kernels import ternary_gemm as tg
from minimmf.kernels.ternary import ternary_matmul_ref
from strategies_kernels import ternary_problems

pytestmark = pytest.mark.jit


@pytest.fixture(autouse=True)
def every_product_on_the_kernel(monkeypatch):
    """The kernel for any number of tokens (by default products of fewer than MIN_TOKENS take BLAS)."""
    monkeypatch.setattr(tg, "MIN_TOKENS", 1)


def _expected(q_x, q_w, den):
    """float(sum_i q_x q_w) / den from the int32 reference (independent of any float summation order)."""
    return ternary_matmul_ref(q_x, q_w).astype(den.dtype) / den


@given(ternary_problems(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_ternary_gemm_equals_the_integer_product_divided(problem, dtype, seed):
    """Any N, I, O (tiles cut at every edge), any codes in [-128, 127] x {-1, 0, 1}: the same bits as the exact
    product divided row by row, which is also what the float product of the readable layer gives."""
    q_x, q_w = problem
    den = (np.random.default_rng(seed).random((q_x.shape[0], 1)) * 50 + 0.01).astype(dtype)
    y = tg.ternary_gemm(q_x.astype(dtype), q_w.astype(dtype), den)
    assert y.dtype == dtype and y.shape == (q_x.shape[0], q_w.shape[0])
    np.testing.assert_array_equal(y, _expected(q_x, q_w, den))
    np.testing.assert_array_equal(y, (q_x.astype(dtype) @ q_w.astype(dtype).T) / den)


@pytest.mark.parametrize("I", [1, 2, 127, 128, 129, 130, 255, 256, 257, 1000])
def test_ternary_gemm_is_exact_at_extreme_codes(I):
    """All activations at -128 (or 127) against rows of all +1, all -1, all 0: one pair of inputs adds
    2 * 2 * (-128) = -512 in an int16 lane, so a segment of 64 pairs (I = 128) reaches -32768 exactly, the int16
    minimum; I = 129 and up need the widening between segments."""
    q_w = np.stack([np.ones(I), -np.ones(I), np.zeros(I)] * 11)                       # (33, I): two row tiles
    q_x = np.stack([np.full(I, -128.0), np.full(I, 127.0)] * 4)                       # (8, I): two token tiles
    y = tg.ternary_gemm(q_x.astype(np.float32), q_w.astype(np.float32), np.ones((8, 1), np.float32))
    np.testing.assert_array_equal(y[:2, :3], [[-128 * I, 128 * I, 0], [127 * I, -127 * I, 0]])
    np.testing.assert_array_equal(y, _expected(q_x.astype(np.int8), q_w.astype(np.int8), np.ones((8, 1))))


@pytest.mark.parametrize("N", [1, 5, 6, 7, 13])
@pytest.mark.parametrize("O", [1, 31, 32, 33, 65])
def test_ternary_gemm_fills_every_row_and_token_at_tile_edges(N, O):
    """Token tiles of 6 and row tiles of 32 cut off at every position; every output is written."""
    rng = np.random.default_rng(N * 100 + O)
    q_x = rng.integers(-128, 128, (N, 37)).astype(np.int8)
    q_w = rng.integers(-1, 2, (O, 37)).astype(np.int8)
    den = np.full((N, 1), 2.0, np.float32)
    y = tg.ternary_gemm(q_x.astype(np.float32), q_w.astype(np.float32), den)
    np.testing.assert_array_equal(y, _expected(q_x, q_w, den))


@given(ternary_problems())
def test_pack_tiles_equals_its_specification(problem):
    _, q_w = problem
    np.testing.assert_array_equal(tg.pack_tiles(q_w.astype(np.float32)), tg.pack_tiles_ref(q_w))


@pytest.mark.parametrize("o, i", [(0, 0), (0, 1), (1, 0), (31, 5), (32, 0), (40, 77)])
@pytest.mark.parametrize("w", [-1, 0, 1])
def test_weight_w_of_row_o_input_i_is_byte_i_mod_2_of_row_o_mod_32_in_pair_i_div_2(o, i, w):
    """The layout: tile o // 32, pair i // 2, row o % 32, byte i % 2 holds w + 1; padding holds 0."""
    q_w = np.zeros((41, 78), np.float32)
    q_w[o, i] = w
    expected = np.zeros((2, 39, 32, 2), np.uint8)
    expected[:, :, :, :] = 1
    expected[1, :, 41 - 32:, :] = 0                                                   # rows 41..63: padding
    expected[o // 32, i // 2, o % 32, i % 2] = w + 1
    np.testing.assert_array_equal(tg.pack_tiles(q_w), expected)
    np.testing.assert_array_equal(tg.pack_tiles_ref(q_w), expected)


def test_pack_activations_pads_with_zeros_and_sums_each_row():
    q_x = np.array([[1, -2, 3], [-128, 127, 0], [5, 5, 5], [0, 0, -1], [9, 8, 7], [1, 1, 1], [2, 2, 2]], np.float32)
    x, sums = tg.pack_activations(q_x)
    assert x.dtype == np.int8 and x.shape == (12, 4)                                  # 7 -> 12 tokens, 3 -> 4 inputs
    np.testing.assert_array_equal(x[:7, :3], q_x)
    assert not x[7:].any() and not x[:, 3].any()
    np.testing.assert_array_equal(sums, [2, -1, 15, -1, 24, 3, 6])


def test_codes_wider_than_int8_take_the_float_product():
    """A quantizer changed to wider codes (act_qmax > 127) must not be wrapped into int8: the float product."""
    q_x = np.array([[1000.0, -700.0, 3.0]], np.float32)
    q_w = np.array([[1.0, 1.0, -1.0], [0.0, -1.0, 1.0]], np.float32)
    y = tg.ternary_gemm(q_x, q_w, np.ones((1, 1), np.float32), act_qmax=1000)
    np.testing.assert_array_equal(y, [[297.0, 703.0]])


def test_mismatched_shapes_or_dtypes_are_named():
    q_x, q_w, den = np.zeros((4, 8), np.float32), np.zeros((3, 8), np.float32), np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match="q_x .N, I., q_w .O, I. and den .N, 1. of one dtype"):
        tg.ternary_gemm(q_x, np.zeros((3, 9), np.float32), den)
    with pytest.raises(ValueError, match="float64"):
        tg.ternary_gemm(q_x, q_w.astype(np.float64), den)
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        tg.ternary_gemm(q_x, q_w, np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 2, 8\)"):
        tg.ternary_gemm(np.zeros((2, 2, 8), np.float32), q_w, den)


@pytest.mark.parametrize("N, I, O", [(0, 8, 3), (4, 8, 0), (4, 0, 3)])
def test_empty_products_are_empty_or_zero(N, I, O):
    """No tokens, no rows, or no inputs (every sum empty: zero), as the float product gives them."""
    q_x, q_w = np.ones((N, I), np.float32), np.ones((O, I), np.float32)
    den = np.ones((N, 1), np.float32)
    y = tg.ternary_gemm(q_x, q_w, den)
    assert y.shape == (N, O)
    np.testing.assert_array_equal(y, (q_x @ q_w.T) / den)


def test_views_that_are_not_contiguous_are_read_as_they_are():
    """A transposed slice of codes (not C-contiguous) for either operand gives the same product."""
    rng = np.random.default_rng(3)
    q_w = rng.integers(-1, 2, (100, 70)).astype(np.float32).T[:50, :40]          # (50, 40) view
    q_x = rng.integers(-128, 128, (40, 9)).astype(np.float32).T                  # (9, 40) view
    den = np.full((9, 1), 3.0, np.float32)
    np.testing.assert_array_equal(tg.ternary_gemm(q_x, q_w, den),
                                  _expected(q_x.astype(np.int8), q_w.astype(np.int8), den))


def test_products_of_few_tokens_take_the_float_product(monkeypatch):
    """Below MIN_TOKENS the codes are not re-laid: BLAS's product (the same bits), e.g. a one-token float step."""
    monkeypatch.setattr(tg, "MIN_TOKENS", 512)
    calls = []
    monkeypatch.setattr(tg, "pack_tiles", lambda q_w: calls.append(q_w) or tg.pack_tiles_ref(q_w))
    rng = np.random.default_rng(4)
    q_w = rng.integers(-1, 2, (40, 64)).astype(np.float32)
    for N in (1, 511, 512):
        q_x = rng.integers(-128, 128, (N, 64)).astype(np.float32)
        den = np.full((N, 1), 7.0, np.float32)
        np.testing.assert_array_equal(tg.ternary_gemm(q_x, q_w, den), (q_x @ q_w.T) / den)
    assert len(calls) == (1 if tg.HAVE_AVX2 else 0)                               # only N = 512 on the kernel
