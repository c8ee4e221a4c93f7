"""Tests for minimmf/kernels/decode.py and minimmf/fast/decode.py: the fast one-token step gives the plain packed
step's numbers, bit for bit.

The specification is ``packed.packed_step`` (``model_forward`` with ``bitlinear_packed_forward``) run on the
reference path; the fast step does the same float operations in the same order, with e^x left to NumPy, so logits
and states must be equal exactly (the int8 codes and int32 sums inside are then equal too).
"""
import os

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st


import minimmf
from minimmf import bitlinear, packed as packed_module, quant, seam
from minimmf.fast import decode
from minimmf.generate import generate
from minimmf.model import MMfreeLM

from strategies import seeds, tiny_configs

pytestmark = pytest.mark.jit


def _packed(config, seed, dtype=np.float32):
    """A packed model with random (not zero) lower bounds, so every layer > 0 is really bounded."""
    model = MMfreeLM.init(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    model.params["lower_bounds"][:] = rng.standard_normal(model.params["lower_bounds"].shape)
    return model.pack()


def _plain_step(packed, tok, state):
    with seam.using("reference"):
        return packed_module.packed_step(packed, tok, state)


def _assert_steps_equal(packed, tokens):
    """Feed tokens one by one through the plain and the fast step, handing each its own state back."""
    s_plain = s_fast = packed.init_state(1)
    for t in tokens:
        tok = np.array([t])
        l_plain, s_plain = _plain_step(packed, tok, s_plain)                # the specification
        l_fast, s_fast = decode.packed_step(packed, tok, s_fast)
        assert l_fast.shape == l_plain.shape and l_fast.dtype == l_plain.dtype
        np.testing.assert_array_equal(l_fast, l_plain)
        assert len(s_fast.h) == len(s_plain.h)
        for a, b in zip(s_fast.h, s_plain.h):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)


@given(tiny_configs(), seeds(), st.sampled_from([np.float32, np.float64]))
def test_fast_step_equals_the_plain_packed_step_bit_for_bit(config, seed, dtype):
    """Over random shapes (heads > 1, explicit or default I, lower bounds on or off) and several steps with the
    state handed over, the fused step's logits and states equal the plain packed step's exactly."""
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, 4)
    _assert_steps_equal(_packed(config, seed % 1000, dtype), tokens)


# (520, 1100) crosses a 512-wide pairwise-sum block: minutes of plain-Python loops with the JIT off, where the
# two smaller shapes already run every line of the kernels; the compiled pass checks all three.
BOUNDARY_SHAPES = [(128, 256), (160, 200)] + ([] if os.environ.get("NUMBA_DISABLE_JIT") == "1" else [(520, 1100)])


@pytest.mark.parametrize("H, I", BOUNDARY_SHAPES)
def test_fast_step_is_exact_across_ternary_block_and_pairwise_sum_boundaries(H, I):
    """Widths at, off and past the 128-input code block and NumPy's pairwise-sum split give the same bits."""
    config = minimmf.MMfreeConfig(vocab_size=70, hidden_size=H, num_hidden_layers=2, intermediate_size=I)
    _assert_steps_equal(_packed(config, 3), [1, 69, 5])


def test_fast_step_continues_a_prefilled_state():
    """A state from prefill handed to the fast step gives the logits of the plain step from that state."""
    config = minimmf.MMfreeConfig(vocab_size=50, hidden_size=64, num_hidden_layers=3, num_heads=4)
    packed = _packed(config, 7)
    _, state = packed.prefill(np.array([[3, 1, 4, 1, 5]]))
    tok = np.array([9])
    np.testing.assert_array_equal(decode.packed_step(packed, tok, state)[0], _plain_step(packed, tok, state)[0])


def test_fast_step_leaves_its_inputs_unchanged():
    """step never mutates the state it is given ("state is not changed")."""
    config = minimmf.MMfreeConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2)
    packed = _packed(config, 1)
    _, state = packed.prefill(np.array([[1, 2]]))
    before = [h.copy() for h in state.h]
    decode.packed_step(packed, np.array([3]), state)
    for a, b in zip(state.h, before):
        np.testing.assert_array_equal(a, b)


def test_packed_model_step_runs_the_plain_step_for_a_batch_and_on_the_reference_path():
    """On the fast path a batch of two runs the plain step (the decode kernels take one sequence), on the
    reference path every step does, and both give the plain step's numbers."""
    config = minimmf.MMfreeConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2)
    packed = _packed(config, 2)
    state = packed.init_state(2)
    want = _plain_step(packed, np.array([1, 2]), state)[0]
    with seam.using("fast"):
        np.testing.assert_array_equal(packed.step(np.array([1, 2]), state)[0], want)
    with seam.using("reference"):
        assert seam.status()["packed_step"] == "reference"
        one = packed.step(np.array([1]), packed.init_state(1))[0]
    np.testing.assert_array_equal(one, decode.packed_step(packed, np.array([1]), packed.init_state(1))[0])


def test_fast_step_validates_its_inputs_like_the_plain_step():
    """Out-of-range tokens and mismatched states are rejected with the plain step's errors."""
    config = minimmf.MMfreeConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2)
    packed = _packed(config, 2)
    with pytest.raises(ValueError):
        decode.packed_step(packed, np.array([30]), packed.init_state(1))
    with pytest.raises(ValueError):
        decode.packed_step(packed, np.array([1]), packed.init_state(2))


def test_decode_scalars_are_read_from_the_layers_and_the_config():
    """The plan's named scalars are BitLinear's eps, the quantizer's constants and the config's eps, in the model's
    dtype (no copies of the constants live in the kernels)."""
    config = minimmf.MMfreeConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, rms_norm_eps=1e-5)
    c = decode.plan_for(_packed(config, 2)).scalars
    assert (c.bitlinear_eps, c.qmax, c.act_eps) == (np.float32(bitlinear.BITLINEAR_EPS), quant.ACT_QMAX,
                                                    np.float32(quant.ACT_EPS))
    assert c.norm_eps == np.float32(1e-5) and (c.nH, c.nI) == (32, config.I)
    assert all(type(v) is np.float32 for v in c)


def test_fast_step_on_the_golden_model_gives_the_float_models_greedy_tokens(golden, golden_model):
    """On the released reference's golden model, greedy decoding through the fast step gives the float
    model's tokens, and its logits equal the plain packed step's."""
    packed = golden_model.pack()
    prompt = golden["input_ids"][0, :5]
    assert list(generate(packed, prompt, 16, temperature=0)) == list(generate(golden_model, prompt, 16, temperature=0))
    _assert_steps_equal(packed, golden["input_ids"][0, :6])



def _with_offset_leaves(node):
    """The parameter tree with every PackedBitLinear's codes repacked as OffsetPacked (w + 1)."""
    from minimmf.kernels.ternary import pack_offset, unpack_ternary
    if isinstance(node, bitlinear.PackedBitLinear):
        return node._replace(codes=pack_offset(unpack_ternary(node.codes)))
    if isinstance(node, dict):
        return {k: _with_offset_leaves(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_offset_leaves(v) for v in node]
    return node


def test_fast_step_reads_offset_codes_whichever_layout_the_model_holds():
    """The plan holds every matrix as offset codes (w + 1): converted from the older PackedTernary layout, or taken
    as they are from OffsetPacked leaves; both give the plain step's bits."""
    from minimmf.kernels.ternary import PackedTernary, pack_offset, unpack_ternary
    config = minimmf.MMfreeConfig(vocab_size=40, hidden_size=160, num_hidden_layers=2, intermediate_size=200)
    old = _packed(config, 4)
    plan = decode.plan_for(old)
    f_proj = old.params["layers"][0]["attn"]["f_proj"]
    assert isinstance(f_proj.codes, PackedTernary)
    H = config.hidden_size
    np.testing.assert_array_equal(plan.layers[0][2][0][:H], pack_offset(unpack_ternary(f_proj.codes)).codes)
    np.testing.assert_array_equal(plan.head_codes, pack_offset(unpack_ternary(old.params["lm_head"].codes)).codes)
    new = _packed(config, 4)
    new.params = _with_offset_leaves(new.params)
    tokens = [3, 39, 0]
    _assert_steps_equal(old, tokens)                                       # old layout == the plain step
    s_old, s_new = old.init_state(1), new.init_state(1)
    for t in tokens:
        l_old, s_old = decode.packed_step(old, np.array([t]), s_old)
        l_new, s_new = decode.packed_step(new, np.array([t]), s_new)
        np.testing.assert_array_equal(l_new, l_old)
        for a, b in zip(s_new.h, s_old.h):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_two_thread_steps_run_both_forms_give_the_same_bits_and_restore_the_thread_count():
    """With two threads the guard times steps on both threads and on one, and chooses between them; every step,
    whichever form ran, gives the plain step's bits, and the Numba thread count is the caller's afterwards."""
    config = minimmf.MMfreeConfig(vocab_size=40, hidden_size=64, num_hidden_layers=2)
    packed = _packed(config, 5)
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        _assert_steps_equal(packed, [1, 2, 3, 4, 5, 6])
        assert numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(old)
    guard = decode.plan_for(packed).guard
    assert guard.n_calls == 6 and 0 < guard.parallel_share() < 1          # both forms measured first
