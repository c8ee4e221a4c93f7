"""BitLinear (SPEC §2): RMSNorm -> 8-bit activations -> ternary weights, the STE backward, the packed path."""
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldencheck import assert_close_to_max, golden_bitlinear_params
from gradcheck import assert_grad_close, numerical_grad, ste_surrogate
from minimmf.bitlinear import (PackedBitLinear, bitlinear_backward, bitlinear_forward,
                               bitlinear_packed_forward, pack_bitlinear)
from minimmf.functional import rmsnorm_forward
from minimmf.quant import activation_quant, weight_quant
from strategies import random_bitlinear_params, seeds

pytestmark = pytest.mark.jit

GOLDEN_BITLINEARS = ([f"model.layers.{l}.attn.{p}_proj" for l in (0, 1) for p in "ifgo"]
                     + [f"model.layers.{l}.mlp.{p}_proj" for l in (0, 1) for p in ("gate", "down")]
                     + ["lm_head"])


# ----------------------------------------------------------------------------- an independent float64 BitLinear

def _round_half_away_decimal(v: np.ndarray) -> np.ndarray:
    out = [int(abs(Decimal(float(t))).quantize(Decimal(1), rounding=ROUND_HALF_UP)) * (1 if t >= 0 else -1)
           for t in v.ravel()]
    return np.array(out, dtype=np.int64).reshape(v.shape)


def reference_bitlinear(x, W, g):
    """SPEC §2 written out again in float64 with integer codes: returns y, q_x, s_x, q_w, s_w, n."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)                       # (N, I)
    n = x2 / np.sqrt(np.mean(x2 ** 2, axis=-1, keepdims=True) + 1e-6) * g    # (N, I)
    s_x = 127.0 / np.maximum(np.abs(n).max(axis=-1, keepdims=True), 1e-5)    # (N, 1)
    q_x = np.clip(_round_half_away_decimal(n * s_x), -128, 127)             # (N, I) int64
    s_w = 1.0 / max(np.abs(W.astype(np.float64)).mean(), 1e-5)
    q_w = np.clip(_round_half_away_decimal(W * s_w), -1, 1)                  # (O, I) int64
    acc = q_x @ q_w.T                                                         # exact integer sums
    y = acc / (s_x * s_w)
    return y.reshape(*x.shape[:-1], W.shape[0]), q_x, s_x, q_w, s_w, n


@st.composite
def bitlinear_cases(draw, dtype=np.float64, lead=None):
    """(x, p, dy) with random leading dims (B, T) or (N,), 1..20 inputs, 1..9 outputs."""
    rng = np.random.default_rng(draw(seeds()))
    lead = draw(st.sampled_from([(2, 3), (5,), (1, 1), (7,)])) if lead is None else lead
    I, O = draw(st.integers(1, 20)), draw(st.integers(1, 9))
    x = (rng.standard_normal((*lead, I)) * rng.uniform(0.1, 10)).astype(dtype)
    p = random_bitlinear_params(rng, O, I, dtype)
    dy = rng.standard_normal((*lead, O)).astype(dtype)
    return x, p, dy


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("module", GOLDEN_BITLINEARS)
def test_bitlinear_reproduces_every_golden_projection(golden, module):
    """Teacher-forced: act/<module>.in through bitlinear_forward gives act/<module>.out within 1e-5 of max."""
    x = golden[f"act/{module}.in"]
    y, _ = bitlinear_forward(x, golden_bitlinear_params(golden, module))
    assert y.dtype == np.float32
    assert_close_to_max(y, golden[f"act/{module}.out"], module)


@given(bitlinear_cases())
def test_bitlinear_equals_an_independent_float64_computation(case):
    """y = quant_act(RMSNorm(x; g, 1e-6)) @ quant_weight(W).T, recomputed with decimal rounding and int64 sums."""
    x, p, _ = case
    y, cache = bitlinear_forward(x, p)
    y_ref, q_x, s_x, q_w, s_w, _ = reference_bitlinear(x, p["W"], p["g"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.x_q, q_x / s_x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cache.W_q, q_w / s_w, rtol=1e-12, atol=0)


@given(bitlinear_cases(np.float32))
def test_bitlinear_output_is_an_exact_integer_sum_rescaled_once(case):
    """MatMul-free identity: y == (q_x @ q_w.T) / (s_x s_w) bit for bit, the sum taken in int32."""
    x, p, _ = case
    y, _ = bitlinear_forward(x, p)
    n, _ = rmsnorm_forward(x, p["g"], 1e-6)
    q_x, s_x = activation_quant(n.reshape(-1, n.shape[-1]))
    q_w, s_w = weight_quant(p["W"])
    acc = q_x.astype(np.int32) @ q_w.astype(np.int32).T                    # (N, O) additions only
    expected = (acc.astype(np.float32) / (s_x * s_w)).reshape(y.shape)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, expected)


@given(bitlinear_cases(np.float32, lead=(2, 3)) | bitlinear_cases(np.float64, lead=(4,)),
       st.integers(100, 300))
def test_packed_bitlinear_equals_the_float_path_bit_for_bit(case, I):
    """pack_bitlinear + bitlinear_packed_forward (2-bit codes, add/sub kernel) gives the float path's bits."""
    x, p, _ = case
    rng = np.random.default_rng(I)                              # widen to I inputs: several 128-blocks
    x = rng.standard_normal((*x.shape[:-1], I)).astype(x.dtype)
    p = random_bitlinear_params(rng, p["W"].shape[0], I, x.dtype)
    y, _ = bitlinear_forward(x, p)
    packed = pack_bitlinear(p)
    assert isinstance(packed, PackedBitLinear) and packed.out_features == p["W"].shape[0]
    y_packed = bitlinear_packed_forward(x, packed)
    assert y_packed.dtype == y.dtype and y_packed.shape == y.shape
    np.testing.assert_array_equal(y_packed, y)
    y_via_forward, cache = bitlinear_forward(x, packed)         # a PackedBitLinear is accepted too
    assert cache is None
    np.testing.assert_array_equal(y_via_forward, y)


@pytest.mark.parametrize("module", ["model.layers.0.mlp.down_proj", "lm_head"])
def test_packed_bitlinear_reproduces_the_golden_projection(golden, module):
    """The packed integer path also matches the reference's act/<module>.out within 1e-5 of max."""
    y = bitlinear_packed_forward(golden[f"act/{module}.in"], pack_bitlinear(golden_bitlinear_params(golden, module)))
    assert_close_to_max(y, golden[f"act/{module}.out"], f"{module} (packed)")


@pytest.mark.parametrize("lead", [(2, 3), (5,), (1,)])
def test_bitlinear_keeps_leading_dims(lead):
    """x (..., I) -> y (..., O) for leading dims (B, T) and (N,); the backward returns dx like x, dW like W."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((*lead, 6)).astype(np.float32)
    p = random_bitlinear_params(rng, 4, 6, np.float32)
    y, cache = bitlinear_forward(x, p)
    assert y.shape == (*lead, 4) and y.dtype == np.float32
    dx, grads = bitlinear_backward(np.ones_like(y), cache)
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert set(grads) == {"W", "g"}
    assert grads["W"].shape == p["W"].shape and grads["g"].shape == p["g"].shape


def test_bitlinear_forward_and_backward_do_not_mutate_inputs():
    """Forward never mutates x or p; backward never mutates dy or the cache."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5))
    p = random_bitlinear_params(rng, 4, 5)
    dy = rng.standard_normal((2, 3, 4))
    x0, W0, g0, dy0 = x.copy(), p["W"].copy(), p["g"].copy(), dy.copy()
    y, cache = bitlinear_forward(x, p)
    snapshot = [cache.norm.x.copy(), cache.norm.rstd.copy(), cache.x_q.copy(), cache.W_q.copy()]
    bitlinear_backward(dy, cache)
    for a, b in zip([x, p["W"], p["g"], dy], [x0, W0, g0, dy0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip([cache.norm.x, cache.norm.rstd, cache.x_q, cache.W_q], snapshot):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- backward (STE)

@given(bitlinear_cases())
def test_bitlinear_backward_is_the_straight_through_estimator(case):
    """dn = dy @ W_q, dW = dy.T @ x_q, then the RMSNorm backward (explicit Jacobian) gives dx and dg."""
    x, p, dy = case
    _, cache = bitlinear_forward(x, p)
    dx, grads = bitlinear_backward(dy, cache)
    _, q_x, s_x, q_w, s_w, _ = reference_bitlinear(x, p["W"], p["g"])
    dy2 = dy.reshape(-1, dy.shape[-1])                                        # (N, O)
    x2 = x.reshape(-1, x.shape[-1])                                           # (N, I)
    np.testing.assert_allclose(grads["W"], dy2.T @ (q_x / s_x), rtol=1e-10, atol=1e-12)
    dn = dy2 @ (q_w / s_w)                                                    # (N, I) STE: quantizers = identity
    # RMSNorm Jacobian: d(x_j r g_j)/d x_i = g_j (δ_ij r - x_i x_j r^3 / C),  r = (mean x^2 + eps)^-1/2
    C = x2.shape[-1]
    r = 1.0 / np.sqrt(np.mean(x2 ** 2, axis=-1) + 1e-6)                       # (N,)
    J = (np.eye(C)[None] * r[:, None, None]
         - x2[:, :, None] * x2[:, None, :] * (r ** 3 / C)[:, None, None]) * p["g"][None, None, :]
    dx_ref = np.einsum("nij,nj->ni", J, dn)                                   # (N, I)
    dg_ref = np.sum(dn * x2 * r[:, None], axis=0)
    terms = r[:, None] * np.abs(p["g"] * dn)              # size of the summands before they cancel
    np.testing.assert_allclose(dx.reshape(x2.shape), dx_ref, rtol=0, atol=1e-9 * np.max(terms) + 1e-300)
    np.testing.assert_allclose(grads["g"], dg_ref, rtol=1e-9, atol=1e-10 * (np.max(np.abs(dg_ref)) + 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bitlinear_gradients_match_finite_differences_of_the_ste_surrogate(seed):
    """Float64 central differences of sum(dy * BitLinear) (quantizers as STE surrogate) agree with dx, dW, dg."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 7)) * 2.0
    p = random_bitlinear_params(rng, 5, 7)
    dy = rng.standard_normal((2, 3, 5))
    with ste_surrogate() as tape:
        y, cache = bitlinear_forward(x, p)
        dx, grads = bitlinear_backward(dy, cache)

        def f():
            tape.replay()
            return float(np.sum(bitlinear_forward(x, p)[0] * dy))

        assert f() == pytest.approx(float(np.sum(y * dy)), rel=1e-12)   # surrogate = real forward at the base point
        assert_grad_close(dx, *numerical_grad(f, x), "dx")
        assert_grad_close(grads["W"], *numerical_grad(f, p["W"]), "dW")
        assert_grad_close(grads["g"], *numerical_grad(f, p["g"]), "dg")
