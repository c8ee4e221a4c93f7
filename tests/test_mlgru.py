"""The MLGRU token mixer (SPEC §3): golden per-op, recurrence, causality, state hand-off, lower bounds, gradients."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldencheck import assert_close_to_max, golden_mlgru_params, heads_to_channels
from gradcheck import assert_grad_close, numerical_grad, ste_surrogate
from minimmf.bitlinear import bitlinear_forward
from minimmf.kernels.scan import scan_forward
from minimmf.mlgru import lower_bounds_backward, lower_bounds_forward, mlgru_backward, mlgru_forward
from minimmf.tree import leaves
from strategies import gaussian_arrays, random_mlgru_params, seeds

pytestmark = pytest.mark.jit


def silu64(v):
    """Independent SiLU in float64: v / (1 + e^-v)."""
    v = v.astype(np.float64)
    return v / (1.0 + np.exp(-v))


# ----------------------------------------------------------------------------- golden

@pytest.mark.parametrize("l", [0, 1])
def test_mlgru_reproduces_the_golden_intermediates_op_by_op(golden, l):
    """From act/...attn_norm.out: forget gate hgrn_f, recurrence input hgrn_x, states hgrn_h, g_norm.out, attn.out."""
    pre = f"act/model.layers.{l}.attn"
    x = golden[f"act/model.layers.{l}.attn_norm.out"]
    lb = lower_bounds_forward(golden["param/model.lower_bounds"])[0][l] if l > 0 else None
    out, cache = mlgru_forward(x, golden_mlgru_params(golden, l), lb)
    assert_close_to_max(cache.f, heads_to_channels(golden[f"{pre}.hgrn_f"]), "hgrn_f (bounded forget gate)")
    assert_close_to_max(silu64(cache.zi) * (1 - cache.f), heads_to_channels(golden[f"{pre}.hgrn_x"]),
                        "hgrn_x = silu(i) (1 - f)")
    assert_close_to_max(cache.h, heads_to_channels(golden[f"{pre}.hgrn_h"]), "hgrn_h")
    assert_close_to_max(cache.o_proj.norm.x, golden[f"{pre}.g_norm.out"], "g_norm.out = RMSNorm(g) silu(h)")
    assert_close_to_max(out, golden[f"{pre}.out"], "attn.out")
    assert_close_to_max(cache.h[:, -1], heads_to_channels(golden[f"cache_state/{l}"]), "final state")


def test_golden_layer_1_forget_gate_is_lifted_by_its_lower_bound(golden):
    """Reference layer 1: hgrn_f = lb + (1 - lb) σ(f_proj.out) with lb = lower_bounds_forward(...)[1], so f >= lb."""
    lb = lower_bounds_forward(golden["param/model.lower_bounds"].astype(np.float64))[0][1]
    sf = 1.0 / (1.0 + np.exp(-golden["act/model.layers.1.attn.f_proj.out"].astype(np.float64)))
    f = heads_to_channels(golden["act/model.layers.1.attn.hgrn_f"])
    assert_close_to_max(lb + (1 - lb) * sf, f, "lb + (1 - lb) sf")
    assert np.all(f >= lb - 1e-6)
    assert np.any(sf < lb)                                         # without the bound f would go below lb


@pytest.mark.parametrize("with_h0", [True, False])
def test_scan_reproduces_the_golden_recurrence(golden, with_h0):
    """Golden unit/hgrn: h_t = g_t h_{t-1} + x_t, from h0 or from zeros, and the final state."""
    g, x = heads_to_channels(golden["unit/hgrn_g"]), heads_to_channels(golden["unit/hgrn_x"])
    h0 = heads_to_channels(golden["unit/hgrn_h0"]) if with_h0 else np.zeros_like(x[:, 0])
    h = scan_forward(g, x, h0)
    if with_h0:
        assert_close_to_max(h, heads_to_channels(golden["unit/hgrn_o_with_h0"]), "hgrn_o_with_h0")
        assert_close_to_max(h[:, -1], heads_to_channels(golden["unit/hgrn_final_with_h0"]), "hgrn_final")
    else:
        assert_close_to_max(h, heads_to_channels(golden["unit/hgrn_o_no_h0"]), "hgrn_o_no_h0")


# ----------------------------------------------------------------------------- properties

@st.composite
def mlgru_cases(draw, min_T=1, max_T=7):
    """(x (B, T, H), params, lb (H,) or None, h0 (B, H) or None) in float64."""
    rng = np.random.default_rng(draw(seeds()))
    B, T, H = draw(st.integers(1, 3)), draw(st.integers(min_T, max_T)), draw(st.integers(1, 6))
    x = rng.standard_normal((B, T, H))
    p = random_mlgru_params(rng, H)
    lb = draw(st.sampled_from([None, "random"]))
    lb = None if lb is None else rng.uniform(0.0, 0.99, H)
    h0 = draw(st.sampled_from([None, "random"]))
    h0 = None if h0 is None else rng.standard_normal((B, H))
    return x, p, lb, h0


@given(mlgru_cases(min_T=2), st.data())
def test_mlgru_is_causal(case, data):
    """Changing x at times t >= k leaves out[:, :k] unchanged: h_t depends on x_1..x_t only."""
    x, p, lb, h0 = case
    k = data.draw(st.integers(1, x.shape[1] - 1))
    x2 = x.copy()
    x2[:, k:] = data.draw(gaussian_arrays(x2[:, k:].shape))
    out1, _ = mlgru_forward(x, p, lb, h0)
    out2, _ = mlgru_forward(x2, p, lb, h0)
    np.testing.assert_allclose(out2[:, :k], out1[:, :k], rtol=1e-13, atol=1e-15)


@given(mlgru_cases(min_T=2), st.data())
def test_mlgru_split_sequence_with_state_hand_off_equals_the_full_sequence(case, data):
    """Running x[:, :k] then x[:, k:] from the first part's last state gives the full sequence's outputs."""
    x, p, lb, h0 = case
    k = data.draw(st.integers(1, x.shape[1] - 1))
    out, cache = mlgru_forward(x, p, lb, h0)
    out_a, cache_a = mlgru_forward(x[:, :k], p, lb, h0)
    out_b, cache_b = mlgru_forward(x[:, k:], p, lb, cache_a.h[:, -1])
    np.testing.assert_allclose(np.concatenate([out_a, out_b], axis=1), out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cache_b.h[:, -1], cache.h[:, -1], rtol=1e-12, atol=1e-14)


@given(mlgru_cases(max_T=4))
def test_mlgru_token_by_token_decoding_equals_the_full_sequence(case):
    """T = 1 steps with the state carried over reproduce the full-sequence outputs (the decoding cache)."""
    x, p, lb, h0 = case
    out, _ = mlgru_forward(x, p, lb, h0)
    h = h0
    for t in range(x.shape[1]):
        o_t, c_t = mlgru_forward(x[:, t:t + 1], p, lb, h)
        np.testing.assert_allclose(o_t[:, 0], out[:, t], rtol=1e-12, atol=1e-14)
        h = c_t.h[:, -1]


@given(mlgru_cases())
def test_forget_gate_lies_between_its_lower_bound_and_one(case):
    """f = lb + (1 - lb) σ(BitLinear_f(x)) lies in [lb, 1], and h_t = f_t h_{t-1} + silu(BitLinear_i(x)_t) (1 - f_t)."""
    x, p, lb, h0 = case
    _, cache = mlgru_forward(x, p, lb, h0)
    floor = 0.0 if lb is None else lb
    assert np.all(cache.f >= floor) and np.all(cache.f <= 1.0)
    zf = bitlinear_forward(x, p["f_proj"])[0]                  # BitLinear itself is pinned in test_bitlinear
    zi = bitlinear_forward(x, p["i_proj"])[0]
    f = floor + (1 - floor) / (1 + np.exp(-zf))
    np.testing.assert_allclose(cache.f, f, rtol=1e-12)
    h = np.zeros_like(x[:, 0]) if h0 is None else h0
    for t in range(x.shape[1]):                                # the recurrence, one step at a time
        h = f[:, t] * h + silu64(zi[:, t]) * (1 - f[:, t])
        np.testing.assert_allclose(cache.h[:, t], h, rtol=1e-10, atol=1e-12)


@given(mlgru_cases())
def test_a_zero_lower_bound_is_the_same_as_no_lower_bound(case):
    """Layer 0 has no bound; lb = 0 gives exactly the unbounded gate f = σ(BitLinear_f(x))."""
    x, p, _, h0 = case
    out_none, _ = mlgru_forward(x, p, None, h0)
    out_zero, _ = mlgru_forward(x, p, np.zeros(x.shape[-1]), h0)
    np.testing.assert_array_equal(out_zero, out_none)


@given(st.integers(1, 6), st.integers(1, 5), seeds(), st.floats(0.0, 5.0))
def test_lower_bounds_start_at_zero_stay_below_one_and_grow_with_depth(L, H, seed, scale):
    """lb = cumsum(softmax(lower_bounds, over layers)) - a[0]: lb[0] = 0, 0 <= lb < 1, nondecreasing in l."""
    lower_bounds = np.random.default_rng(seed).standard_normal((L, H)) * scale
    lb, cache = lower_bounds_forward(lower_bounds)
    assert lb.shape == (L, H)
    np.testing.assert_array_equal(lb[0], 0.0)
    assert np.all(lb >= 0) and np.all(lb < 1)
    assert np.all(np.diff(lb, axis=0) >= 0)
    a = np.exp(lower_bounds) / np.exp(lower_bounds).sum(axis=0)        # independent softmax
    np.testing.assert_allclose(lb, np.cumsum(a, axis=0) - a[0], rtol=1e-12, atol=1e-15)


def test_lower_bounds_of_zeros_are_evenly_spaced():
    """The init lower_bounds = 0 gives a = 1/L everywhere and lb[l] = l / L."""
    lb, _ = lower_bounds_forward(np.zeros((4, 3)))
    np.testing.assert_allclose(lb, np.repeat([[0.0], [0.25], [0.5], [0.75]], 3, axis=1), atol=1e-15)


def test_mlgru_forward_does_not_mutate_its_inputs():
    """Forward never mutates x, the parameters, lb or h0."""
    rng = np.random.default_rng(3)
    x, p, lb, h0 = rng.standard_normal((2, 4, 5)), random_mlgru_params(rng, 5), rng.uniform(0, 1, 5), \
        rng.standard_normal((2, 5))
    before = [a.copy() for a in (x, lb, h0, *(v for _, v in leaves(p)))]
    out, cache = mlgru_forward(x, p, lb, h0)
    mlgru_backward(np.ones_like(out), cache)
    for a, b in zip((x, lb, h0, *(v for _, v in leaves(p))), before):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("seed,bounded", [(0, True), (1, True), (2, False)])
def test_mlgru_gradients_match_finite_differences_of_the_ste_surrogate(seed, bounded):
    """Float64 central differences agree with mlgru_backward for x, every parameter, lb and h0."""
    rng = np.random.default_rng(seed)
    B, T, H = 2, 4, 5
    x = rng.standard_normal((B, T, H))
    p = random_mlgru_params(rng, H)
    lb = rng.uniform(0.1, 0.9, H) if bounded else None
    h0 = rng.standard_normal((B, H))
    dout = rng.standard_normal((B, T, H))
    with ste_surrogate() as tape:
        out, cache = mlgru_forward(x, p, lb, h0)
        dx, grads, dlb, dh0 = mlgru_backward(dout, cache)

        def f():
            tape.replay()
            return float(np.sum(mlgru_forward(x, p, lb, h0)[0] * dout))

        assert f() == pytest.approx(float(np.sum(out * dout)), rel=1e-12)
        assert_grad_close(dx, *numerical_grad(f, x), "dx")
        assert_grad_close(dh0, *numerical_grad(f, h0), "dh0")
        if bounded:
            assert_grad_close(dlb, *numerical_grad(f, lb), "dlb")
        else:
            assert dlb is None
        g = dict(leaves(grads))
        assert set(g) == {k for k, _ in leaves(p)}
        for name, param in leaves(p):
            assert g[name].shape == param.shape, name
            assert_grad_close(g[name], *numerical_grad(f, param, max_entries=12), name)


@pytest.mark.parametrize("seed", [0, 1])
def test_lower_bounds_backward_matches_finite_differences(seed):
    """Float64 central differences of sum(dlb * lower_bounds_forward(lower_bounds)) agree with the backward."""
    rng = np.random.default_rng(seed)
    lower_bounds = rng.standard_normal((4, 3))
    dlb = rng.standard_normal((4, 3))
    _, cache = lower_bounds_forward(lower_bounds)
    d = lower_bounds_backward(dlb, cache)
    assert d.shape == lower_bounds.shape
    f = lambda: float(np.sum(lower_bounds_forward(lower_bounds)[0] * dlb))   # noqa: E731
    assert_grad_close(d, *numerical_grad(f, lower_bounds), "d lower_bounds")
