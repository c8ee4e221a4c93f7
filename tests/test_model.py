"""The language model end to end: golden logits, loss, gradients, decoding; properties; gradient check."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minimmf
from minimmf.loss import cross_entropy_backward, cross_entropy_forward
from minimmf.model import model_backward, model_forward, param_shapes
from minimmf.tree import leaves
from gradcheck import assert_grad_close, numerical_grad, ste_surrogate
from strategies import tiny_configs, token_batches

pytestmark = pytest.mark.jit


def rel_to_max(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ----------------------------------------------------------------------------- golden (released code)
# (``path``: each runs on the readable layers and on their fast twins; tests/conftest.py)

def test_logits_match_the_released_code(golden, golden_model, path):
    """Full-sequence logits equal the reference implementation's within 1e-4 absolute."""
    logits = golden_model.forward(golden["input_ids"])
    assert logits.dtype == np.float32 and logits.shape == golden["logits"].shape
    assert np.max(np.abs(logits - golden["logits"])) <= 1e-4


def test_hidden_states_match_the_released_code(golden, golden_model, path):
    """The residual stream after every layer and after the final norm matches the reference."""
    _, cache, _ = model_forward(golden_model.params, golden_model.config, golden["input_ids"])
    # each block's input is the previous block's output: hidden_states/1 is block 1's input
    for l in range(1, golden_model.config.num_hidden_layers):
        x = cache.blocks[l].attn_norm.x
        assert rel_to_max(x, golden[f"hidden_states/{l}"]) <= 1e-5
    final = cache.lm_head.norm.x                          # input of the head = output of the final norm
    L = golden_model.config.num_hidden_layers
    assert rel_to_max(final, golden[f"hidden_states/{L}"]) <= 1e-5


def test_loss_matches_the_released_code(golden, golden_model, path):
    """The mean shifted cross-entropy equals the reference's within 1e-5."""
    loss, _ = golden_model.loss_and_grads(golden["input_ids"], golden["labels"])
    assert isinstance(loss, float)
    assert abs(loss - float(golden["loss"])) <= 1e-5


def test_every_gradient_matches_the_released_code(golden, golden_model, path):
    """Every parameter's gradient is within 1e-5 of the reference, relative to the tensor's max."""
    _, grads = golden_model.loss_and_grads(golden["input_ids"], golden["labels"])
    ours = minimmf.to_reference(golden_model, grads)
    theirs = {k[len("grad/"):]: golden[k] for k in golden.keys() if k.startswith("grad/")}
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].shape == theirs[key].shape, key
        assert rel_to_max(ours[key], theirs[key]) <= 1e-5, key


def test_step_decoding_matches_the_released_code(golden, golden_model, path):
    """Token-by-token decoding from an empty state gives the reference's logits and final states."""
    ids = golden["input_ids"]
    state = golden_model.init_state(ids.shape[0])
    out = []
    for t in range(ids.shape[1]):
        logits, state = golden_model.step(ids[:, t], state)
        out.append(logits)
    assert np.max(np.abs(np.stack(out, axis=1) - golden["logits_step"])) <= 1e-4
    for l, h in enumerate(state.h):
        ref = golden[f"cache_state/{l}"].reshape(h.shape)       # (B, nh, H/nh) -> (B, H)
        assert np.max(np.abs(h - ref)) <= 1e-5


def test_prefill_then_step_matches_the_released_code(golden, golden_model, path):
    """Prefilling the first half, then stepping one token at a time, gives the reference's logits."""
    ids = golden["input_ids"]
    half = golden.meta["checks"]["prefill_len"]
    last, state = golden_model.prefill(ids[:, :half])           # the prompt's last logits (B, V), its state
    out = [last]
    for t in range(half, ids.shape[1]):
        step_logits, state = golden_model.step(ids[:, t], state)
        out.append(step_logits)
    assert np.max(np.abs(np.stack(out, axis=1) - golden["logits_prefill_step"][:, half - 1:])) <= 1e-4


def test_packed_model_gives_the_same_logits_as_the_float_model(golden, golden_model, path):
    """Integer inference on packed 2-bit weights reproduces the float path exactly."""
    packed = golden_model.pack()
    ids = golden["input_ids"]
    np.testing.assert_array_equal(packed.forward(ids), golden_model.forward(ids))
    s1, s2 = packed.init_state(2), golden_model.init_state(2)
    for t in range(4):
        a, s1 = packed.step(ids[:, t], s1)
        b, s2 = golden_model.step(ids[:, t], s2)
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- properties

@given(cfg=tiny_configs(), data=st.data())
def test_forward_equals_repeated_step(cfg, data):
    """Feeding tokens one at a time through the recurrent state gives the full-sequence logits."""
    model = minimmf.MMfreeLM.init(cfg, seed=data.draw(st.integers(0, 99)), dtype=np.float64)
    ids = data.draw(token_batches(cfg.vocab_size))
    full = model.forward(ids)
    state = model.init_state(ids.shape[0])
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-9, atol=1e-9)


@given(cfg=tiny_configs(), data=st.data())
def test_split_sequence_with_state_hand_off_equals_full_sequence(cfg, data):
    """prefill(a) then prefill(b, state) gives the last logits and the state of prefill(a + b)."""
    model = minimmf.MMfreeLM.init(cfg, seed=1, dtype=np.float64)
    ids = data.draw(token_batches(cfg.vocab_size, max_T=10))
    k = data.draw(st.integers(0, ids.shape[1]))
    full = model.forward(ids)
    if k in (0, ids.shape[1]):
        return                                  # one of the pieces would be empty
    la, state = model.prefill(ids[:, :k])
    lb, state = model.prefill(ids[:, k:], state)
    np.testing.assert_allclose(la, full[:, k - 1], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lb, full[:, -1], rtol=1e-9, atol=1e-9)
    for h, h_whole in zip(state.h, model.prefill(ids)[1].h):
        np.testing.assert_allclose(h, h_whole, rtol=1e-9, atol=1e-9)


@given(cfg=tiny_configs(), data=st.data())
def test_model_is_causal(cfg, data):
    """Changing the token at position k changes no logit before k."""
    model = minimmf.MMfreeLM.init(cfg, seed=2, dtype=np.float64)
    ids = data.draw(token_batches(cfg.vocab_size, max_T=8))
    k = data.draw(st.integers(0, ids.shape[1] - 1))
    other = ids.copy()
    other[:, k] = (other[:, k] + 1) % cfg.vocab_size
    np.testing.assert_array_equal(model.forward(ids)[:, :k], model.forward(other)[:, :k])


@given(cfg=tiny_configs(max_layers=2), data=st.data())
def test_grads_have_the_keys_and_shapes_of_params(cfg, data):
    """loss_and_grads returns a tree with exactly the paths and shapes of the parameters."""
    model = minimmf.MMfreeLM.init(cfg, seed=3)
    ids = data.draw(token_batches(cfg.vocab_size, max_T=6))
    if ids.shape[1] < 2:
        ids = np.concatenate([ids, ids], axis=1)
    _, grads = model.loss_and_grads(ids, ids)
    g = {k: v.shape for k, v in leaves(grads)}
    p = {k: v.shape for k, v in leaves(model.params)}
    assert g == p == dict(leaves(param_shapes(cfg)))
    assert all(v.dtype == np.float32 for _, v in leaves(grads))


def test_forward_and_backward_do_not_mutate_inputs_or_parameters():
    """Neither the ids, the labels nor any parameter changes during forward or loss_and_grads."""
    cfg = minimmf.MMfreeConfig(vocab_size=17, hidden_size=8, num_hidden_layers=2, intermediate_size=12)
    model = minimmf.MMfreeLM.init(cfg, seed=4)
    rng = np.random.default_rng(0)
    model.params["lower_bounds"][:] = rng.standard_normal((2, 8))
    ids = rng.integers(0, 17, (2, 7))
    labels = ids.copy()
    labels[0, 3] = -100
    before = {k: v.copy() for k, v in leaves(model.params)}
    ids0, labels0 = ids.copy(), labels.copy()
    model.forward(ids)
    model.loss_and_grads(ids, labels)
    state = model.init_state(2)
    state0 = [h.copy() for h in state.h]
    model.step(ids[:, 0], state)
    np.testing.assert_array_equal(ids, ids0)
    np.testing.assert_array_equal(labels, labels0)
    for h, h0 in zip(state.h, state0):
        np.testing.assert_array_equal(h, h0)
    for k, v in leaves(model.params):
        np.testing.assert_array_equal(v, before[k])


def test_initial_loss_is_about_log_vocab():
    """A freshly initialized model is nearly uniform: its loss is close to log(V)."""
    cfg = minimmf.MMfreeConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2)
    model = minimmf.MMfreeLM.init(cfg, seed=5)
    ids = np.random.default_rng(1).integers(0, 512, (4, 32))
    loss, _ = model.loss_and_grads(ids, ids)
    assert abs(loss - np.log(512)) < 0.3


def test_tiny_model_overfits_one_batch():
    """A few hundred AdamW steps on one fixed batch drive the loss close to zero."""
    from minimmf.optim import AdamW
    cfg = minimmf.MMfreeConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, intermediate_size=64)
    model = minimmf.MMfreeLM.init(cfg, seed=6)
    ids = np.random.default_rng(2).integers(0, 32, (2, 16))
    opt = AdamW(lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss, grads = model.loss_and_grads(ids, ids)
        first = loss if first is None else first
        opt.step(model.params, grads)
    assert first > 3.0 and loss < 0.1, (first, loss)


# ----------------------------------------------------------------------------- gradient check

def test_whole_model_gradient_matches_finite_differences():
    """Every parameter's analytic gradient (STE) equals central differences of the STE surrogate, float64."""
    cfg = minimmf.MMfreeConfig(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_heads=2,
                               intermediate_size=12)
    params = minimmf.init_params(cfg, seed=7, dtype=np.float64)
    rng = np.random.default_rng(8)
    for _, a in leaves(params):
        a += rng.standard_normal(a.shape) * 0.3               # move away from the symmetric init
    ids = rng.integers(0, 11, (2, 5))
    labels = ids.copy()
    labels[1, 2] = -100
    with ste_surrogate() as tape:
        logits, cache, _ = model_forward(params, cfg, ids)
        _, c_loss = cross_entropy_forward(logits, labels)
        grads = dict(leaves(model_backward(cross_entropy_backward(c_loss), cache)))

        def loss():
            tape.replay()
            return cross_entropy_forward(model_forward(params, cfg, ids)[0], labels)[0]

        for path, a in leaves(params):
            idx, num = numerical_grad(loss, a, max_entries=12, rng=rng)
            assert_grad_close(grads[path], idx, num, path)
