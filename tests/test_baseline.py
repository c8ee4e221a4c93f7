"""Transformer++ (minimmf/baseline): every layer's backward against float64 central differences, the
model's interface, causality, KV-cache decoding equal to the full forward, and overfitting one batch."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck import assert_grad_close, numerical_grad
from minimmf.baseline import KVCache, TransformerConfig, TransformerPP
from minimmf.baseline import layers
from minimmf.baseline.model import block_backward, block_forward
from minimmf.optim import AdamW
from minimmf.tree import leaves
from strategies import seeds


def check_layer(forward, backward, inputs: dict, params: dict | None = None, rtol=1e-6, seed=0):
    """Gradient of sum(R * forward(**inputs, params)) from ``backward`` vs central differences, for every
    input array and every parameter leaf. ``forward`` returns (out, cache, ...); ``backward(R, cache)``
    returns (dinputs..., grads) in the order of ``inputs`` (then the grads tree if ``params``)."""
    rng = np.random.default_rng(seed)
    out, cache = forward(**inputs)[:2]
    R = rng.standard_normal(out.shape)
    res = backward(R, cache)
    res = res if isinstance(res, tuple) else (res,)
    f = lambda: float(np.sum(forward(**inputs)[0] * R))                     # noqa: E731
    for (name, x), dx in zip(inputs.items(), res):
        if isinstance(x, np.ndarray) and x.dtype == np.float64 and name != "p":
            idx, num = numerical_grad(f, x, max_entries=40, rng=rng)
            assert_grad_close(dx, idx, num, name, rtol=rtol)
    if params is not None:
        grads = res[-1]
        g = dict(leaves(grads))
        for path, a in leaves(params):
            idx, num = numerical_grad(f, a, max_entries=40, rng=rng)
            assert_grad_close(g[path], idx, num, path, rtol=rtol)


def lin(rng, O, I):
    return {"W": rng.standard_normal((O, I)) / np.sqrt(I)}


def attn_params(rng, H):
    return {n: lin(rng, H, H) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}


def tiny_model(seed=0, V=11, H=8, L=2, n=2, I=12, dtype=np.float64, scale=0.3):
    """A float64 model with weights large enough that attention is far from uniform."""
    cfg = TransformerConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_heads=n, intermediate_size=I)
    m = TransformerPP.init(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for path, a in leaves(m.params):
        a += (scale * rng.standard_normal(a.shape)).astype(dtype)
    return m


# ----------------------------------------------------------------------------- layer gradients

def test_linear_backward_matches_finite_differences():
    """linear: dx = dy W and dW = dy^T x, checked by central differences in float64."""
    rng = np.random.default_rng(0)
    p = lin(rng, 5, 4)
    check_layer(lambda x: layers.linear_forward(x, p), layers.linear_backward,
                {"x": rng.standard_normal((2, 3, 4))}, None)
    x = rng.standard_normal((2, 3, 4))
    check_layer(lambda: layers.linear_forward(x, p), lambda dy, c: layers.linear_backward(dy, c)[1:],
                {}, p)


def test_rope_backward_is_the_opposite_rotation():
    """RoPE is linear in x, so its backward (rotation by -angle) matches finite differences exactly."""
    rng = np.random.default_rng(1)
    cos, sin = layers.rope_tables(np.arange(3, 8), 6, dtype=np.float64)
    check_layer(lambda x: (layers.rope_forward(x, cos, sin), None),
                lambda dy, _: layers.rope_backward(dy, cos, sin), {"x": rng.standard_normal((2, 2, 5, 6))})


@given(seeds(), st.integers(0, 50), st.integers(0, 50))
def test_rope_scores_depend_only_on_the_relative_position(seed, m, k):
    """RoFormer's property: <RoPE(q, m), RoPE(k, n)> depends on m - n only; and rotations keep norms."""
    rng = np.random.default_rng(seed)
    q, kv = rng.standard_normal((2, 8))
    def rot(x, pos):
        cos, sin = layers.rope_tables(np.array([pos]), 8, dtype=np.float64)
        return layers.rope_forward(x[None, None, None], cos, sin)[0, 0, 0]
    shift = 17
    assert np.dot(rot(q, m), rot(kv, k)) == pytest.approx(np.dot(rot(q, m + shift), rot(kv, k + shift)),
                                                          abs=1e-9)
    assert np.linalg.norm(rot(q, m)) == pytest.approx(np.linalg.norm(q))


def test_causal_attention_core_backward_matches_finite_differences():
    """softmax(q k^T / sqrt(d) + mask) v: dq, dk, dv by central differences, with 2 cached keys (P = 2)."""
    rng = np.random.default_rng(2)
    check_layer(layers.sdpa_forward, layers.sdpa_backward,
                {"q": rng.standard_normal((2, 2, 3, 4)), "k": rng.standard_normal((2, 2, 5, 4)),
                 "v": rng.standard_normal((2, 2, 5, 4))})


def test_attention_mixer_backward_matches_finite_differences():
    """The whole attention mixer (projections, RoPE, heads, causal softmax): dx and all four dW."""
    rng = np.random.default_rng(3)
    p = attn_params(rng, 8)
    x = rng.standard_normal((2, 5, 8))
    check_layer(lambda x: layers.attention_forward(x, p, 2), lambda d, c: layers.attention_backward(d, c)[:1],
                {"x": x})
    check_layer(lambda: layers.attention_forward(x, p, 2), lambda d, c: layers.attention_backward(d, c)[1:],
                {}, p)


def test_attention_backward_with_a_kv_cache_matches_finite_differences():
    """Continuing a KV cache of 3 positions: gradients of the new tokens (the cache held constant)."""
    rng = np.random.default_rng(4)
    p = attn_params(rng, 8)
    past = (rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 3, 4)))
    x = rng.standard_normal((1, 2, 8))
    check_layer(lambda x: layers.attention_forward(x, p, 2, past), lambda d, c: layers.attention_backward(d, c),
                {"x": x}, None)
    check_layer(lambda: layers.attention_forward(x, p, 2, past), lambda d, c: layers.attention_backward(d, c)[1:],
                {}, p)


def test_swiglu_backward_matches_finite_differences():
    """SwiGLU (silu(x W_gate^T) * x W_up^T) W_down^T: dx and the three dW."""
    rng = np.random.default_rng(5)
    p = {"gate_proj": lin(rng, 6, 4), "up_proj": lin(rng, 6, 4), "down_proj": lin(rng, 4, 6)}
    x = rng.standard_normal((2, 3, 4))
    check_layer(lambda x: layers.swiglu_forward(x, p), lambda d, c: layers.swiglu_backward(d, c)[:1], {"x": x})
    check_layer(lambda: layers.swiglu_forward(x, p), lambda d, c: layers.swiglu_backward(d, c)[1:], {}, p)


def test_block_backward_matches_finite_differences():
    """The pre-norm residual block: dx and every parameter gradient."""
    m = tiny_model(L=1)
    p = m.params["layers"][0]
    x = np.random.default_rng(6).standard_normal((2, 4, 8))
    check_layer(lambda x: block_forward(x, p, 2), lambda d, c: block_backward(d, c)[:1], {"x": x})
    check_layer(lambda: block_forward(x, p, 2), lambda d, c: block_backward(d, c)[1:], {}, p)


def test_model_gradients_match_finite_differences():
    """loss_and_grads: every parameter of a 2-layer model against central differences of the loss."""
    m = tiny_model()
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 11, (2, 6))
    labels = ids.copy()
    labels[0, 3] = -100
    _, grads = m.loss_and_grads(ids, labels)
    g = dict(leaves(grads))
    for path, a in leaves(m.params):
        idx, num = numerical_grad(lambda: m.loss(ids, labels), a, max_entries=12, rng=rng)
        assert_grad_close(g[path], idx, num, path, rtol=1e-6)


# ----------------------------------------------------------------------------- the model

def test_transformer_has_the_matrix_sizes_of_mmfreelm():
    """At equal (V, H, L, I) the two models differ only by MMfreeLM's gains and lower bounds."""
    import minimmf
    c = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, intermediate_size=48)
    t = TransformerPP.init(TransformerConfig(num_heads=2, **c))
    m = minimmf.MMfreeLM.init(minimmf.MMfreeConfig(**c))
    H, I, L = 32, 48, 3
    mmfree_extra = L * H + L * (4 * H + H + H + I) + H                 # lower bounds, BitLinear gains, g_norm, head gain
    assert m.num_params() - t.num_params() == mmfree_extra


def test_logits_are_causal():
    """Changing token t never changes the logits at positions before t."""
    m = tiny_model()
    ids = np.random.default_rng(8).integers(0, 11, (1, 7))
    other = ids.copy()
    other[0, 4] = (other[0, 4] + 1) % 11
    a, b = m.forward(ids), m.forward(other)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert not np.allclose(a[:, 4:], b[:, 4:])


@given(seeds(), st.integers(1, 3), st.integers(1, 9), st.integers(0, 9))
def test_kv_cache_decoding_equals_the_full_forward(seed, B, T, cut):
    """prefill(first part) then one step per token gives the logits of forward() on the whole sequence."""
    m = tiny_model(seed=seed % 1000)
    ids = np.random.default_rng(seed).integers(0, 11, (B, T))
    full = m.forward(ids)
    cut = min(cut, T - 1)
    if cut:
        last, state = m.prefill(ids[:, :cut])                # the last position's logits (B, V)
        np.testing.assert_allclose(last, full[:, cut - 1], rtol=1e-10, atol=1e-12)
    else:
        state = m.init_state(B)
    got = []
    for t in range(cut, T):
        logits, state = m.step(ids[:, t], state)
        got.append(logits)
    np.testing.assert_allclose(np.stack(got, axis=1), full[:, cut:], rtol=1e-10, atol=1e-12)
    assert isinstance(state, KVCache) and state.length == T


def test_kv_cache_decoding_equals_the_full_forward_in_float32():
    """The same in the training dtype, within float32 rounding."""
    m = tiny_model(dtype=np.float32)
    ids = np.random.default_rng(9).integers(0, 11, (2, 12))
    state, got = m.init_state(2), []
    for t in range(12):
        logits, state = m.step(ids[:, t], state)
        got.append(logits)
    np.testing.assert_allclose(np.stack(got, axis=1), m.forward(ids), rtol=1e-5, atol=1e-5)


def test_step_does_not_change_the_state_it_is_given():
    """step returns a new, longer cache; the old one still holds the old length."""
    m = tiny_model()
    s0 = m.init_state(1)
    _, s1 = m.step(np.array([3]), s0)
    assert s0.length == 0 and s1.length == 1


def test_model_overfits_one_batch():
    """Adam on one fixed batch drives the loss from ln V towards zero: the gradients are the real ones."""
    cfg = TransformerConfig(vocab_size=16, hidden_size=32, num_hidden_layers=2, num_heads=2, intermediate_size=64)
    m = TransformerPP.init(cfg, seed=0)
    ids = np.random.default_rng(10).integers(0, 16, (4, 16))
    opt = AdamW(lr=1e-2, weight_decay=0.0)
    first = m.loss(ids, ids)
    for _ in range(150):
        loss, g = m.loss_and_grads(ids, ids)
        opt.step(m.params, g)
    assert first == pytest.approx(np.log(16), rel=0.05)
    assert loss < 0.05


def test_bad_input_raises_clear_errors():
    """Ids out of range, a wrong state or a bad head count raise ValueError naming the problem."""
    m = tiny_model()
    with pytest.raises(ValueError, match="input_ids"):
        m.forward(np.array([[0, 11]]))
    with pytest.raises(ValueError, match="batch of 1"):
        m.step(np.array([1, 2]), m.init_state(1))
    with pytest.raises(ValueError, match="num_heads"):
        TransformerConfig(vocab_size=5, hidden_size=12, num_hidden_layers=1, num_heads=4)   # head width 3
