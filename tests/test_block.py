"""The pre-norm block (SPEC §5): r = x + MLGRU(RMSNorm(x)), out = r + GLU(RMSNorm(r)); golden and gradients."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldencheck import assert_close_to_max, golden_block_params
from gradcheck import assert_grad_close, numerical_grad, ste_surrogate
from minimmf.block import block_backward, block_forward
from minimmf.mlgru import lower_bounds_forward
from minimmf.tree import leaves
from strategies import random_block_params, seeds

pytestmark = pytest.mark.jit


@pytest.mark.parametrize("l", [0, 1])
def test_block_reproduces_the_golden_hidden_states(golden, l):
    """Teacher-forced: hidden_states/l through block l gives layer l's output, its residual r and its last state."""
    x = golden[f"hidden_states/{l}"]                          # 0 = embeddings, 1 = output of layer 0
    lb = lower_bounds_forward(golden["param/model.lower_bounds"])[0][l] if l > 0 else None
    out, cache, h_last = block_forward(x, golden_block_params(golden, l), lb, None, 1e-6)
    assert out.dtype == np.float32
    assert_close_to_max(cache.attn_norm.x * cache.attn_norm.rstd * golden_block_params(golden, l)["attn_norm"],
                        golden[f"act/model.layers.{l}.attn_norm.out"], "attn_norm.out")
    assert_close_to_max(cache.mlp_norm.x, golden[f"act/model.layers.{l}.mlp_norm.residual_out"],
                        "mlp_norm.residual_out (r = x + attn)")
    assert_close_to_max(out, golden[f"act/model.layers.{l}.out"], "block output")
    if l == 0:
        assert_close_to_max(out, golden["hidden_states/1"], "hidden_states/1")
    assert_close_to_max(h_last, golden[f"cache_state/{l}"].reshape(h_last.shape), "last MLGRU state")


@given(seeds(), st.integers(2, 6), st.data())
def test_block_split_sequence_with_state_hand_off_equals_the_full_sequence(seed, T, data):
    """Running a block on x[:, :k], then on x[:, k:] from the returned h_last, gives the full-sequence outputs."""
    rng = np.random.default_rng(seed)
    x, p, lb = rng.standard_normal((2, T, 4)), random_block_params(rng, 4, 3), rng.uniform(0, 1, 4)
    k = data.draw(st.integers(1, T - 1))
    out, _, h_last = block_forward(x, p, lb)
    out_a, _, h_a = block_forward(x[:, :k], p, lb)
    out_b, _, h_b = block_forward(x[:, k:], p, lb, h_a)
    np.testing.assert_allclose(np.concatenate([out_a, out_b], axis=1), out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_b, h_last, rtol=1e-12, atol=1e-14)


def test_block_keeps_shapes_and_does_not_mutate_inputs():
    """x (B, T, H) -> out (B, T, H), h_last (B, H); grads shaped like p; x, p, lb, h0 unchanged."""
    rng = np.random.default_rng(0)
    x, p = rng.standard_normal((2, 3, 4)), random_block_params(rng, 4, 5)
    lb, h0 = rng.uniform(0, 1, 4), rng.standard_normal((2, 4))
    arrays = lambda: [x, lb, h0, *(v for _, v in leaves(p))]    # noqa: E731
    before = [a.copy() for a in arrays()]
    out, cache, h_last = block_forward(x, p, lb, h0)
    assert out.shape == x.shape and h_last.shape == (2, 4)
    dx, grads, dlb, dh0 = block_backward(np.ones_like(out), cache)
    assert dx.shape == x.shape and dlb.shape == lb.shape and dh0.shape == h0.shape
    assert {k: v.shape for k, v in leaves(grads)} == {k: v.shape for k, v in leaves(p)}
    for a, b in zip(arrays(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed,bounded", [(0, True), (1, False)])
def test_block_gradients_match_finite_differences_of_the_ste_surrogate(seed, bounded):
    """Float64 central differences agree with block_backward for x, every parameter, lb and h0."""
    rng = np.random.default_rng(seed)
    B, T, H, I = 2, 3, 4, 5
    x = rng.standard_normal((B, T, H))
    p = random_block_params(rng, H, I)
    lb = rng.uniform(0.1, 0.9, H) if bounded else None
    h0 = rng.standard_normal((B, H))
    dout = rng.standard_normal((B, T, H))
    with ste_surrogate() as tape:
        out, cache, _ = block_forward(x, p, lb, h0)
        dx, grads, dlb, dh0 = block_backward(dout, cache)

        def f():
            tape.replay()
            return float(np.sum(block_forward(x, p, lb, h0)[0] * dout))

        assert f() == pytest.approx(float(np.sum(out * dout)), rel=1e-12)
        assert_grad_close(dx, *numerical_grad(f, x), "dx")
        assert_grad_close(dh0, *numerical_grad(f, h0), "dh0")
        if bounded:
            assert_grad_close(dlb, *numerical_grad(f, lb), "dlb")
        else:
            assert dlb is None
        g = dict(leaves(grads))
        for name, param in leaves(p):
            assert_grad_close(g[name], *numerical_grad(f, param, max_entries=10), name)
