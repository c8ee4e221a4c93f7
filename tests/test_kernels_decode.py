"""Tests for minimmf/kernels/decode.py and minimmf/fast/decode.py: the fast one-token step gives the plain packed
step's numbers, bit for bit.

The specification is ``packed.packed_step`` (``model_forward`` with ``bitlinear_packed_forward``) run on the
reference path; the fast step does the same float operations in the same order, with e^x left to NumPy, so logits
and states must be equal exactly (the int8 codes and int32 sums inside are then equal too).
"""
import os
from unittest import mock

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
from minimmf.tree import leaves

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



def _with_old_leaves(node):
    """The parameter tree with every PackedBitLinear's codes repacked in the older PackedTernary layout."""
    from minimmf.kernels.ternary import pack_ternary, unpack_offset
    if isinstance(node, bitlinear.PackedBitLinear):
        return node._replace(codes=pack_ternary(unpack_offset(node.codes)))
    if isinstance(node, dict):
        return {k: _with_old_leaves(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_old_leaves(v) for v in node]
    return node


def test_fast_step_reads_the_models_own_codes_without_a_copy():
    """The plan's code matrices (f, i, g stacked, o, gate/up, down, the head) are views of the model's offset codes,
    which lie in one buffer in the order a step reads them."""
    config = minimmf.MMfreeConfig(vocab_size=40, hidden_size=160, num_hidden_layers=2, intermediate_size=200)
    model = _packed(config, 4)
    plan = decode.plan_for(model)
    pbs = [model.params["layers"][l][part][name] for l in range(2)
           for part, name in (("attn", "f_proj"), ("attn", "i_proj"), ("attn", "g_proj"), ("attn", "o_proj"),
                              ("mlp", "gate_proj"), ("mlp", "down_proj"))] + [model.params["lm_head"]]
    mats = [pb.codes.codes for pb in pbs]
    base = mats[0].base
    assert base is not None and all(m.base is base for m in mats)         # one buffer ...
    starts = [m.__array_interface__["data"][0] for m in mats]
    assert starts == sorted(starts) and sum(m.nbytes for m in mats) == base.nbytes   # ... in read order
    for l in range(2):
        cfig, co, cgate, cdown = plan.layers[l][2]
        np.testing.assert_array_equal(cfig, np.concatenate(mats[6 * l:6 * l + 3]))
        for view, own in zip((cfig, co, cgate, cdown), (mats[6 * l], mats[6 * l + 3], mats[6 * l + 4], mats[6 * l + 5])):
            assert np.shares_memory(view, own)
    assert np.shares_memory(plan.head_codes, mats[-1])


def test_a_tree_in_the_older_layout_is_converted_when_given_to_the_model():
    """A tree whose leaves hold PackedTernary codes (packed before offset codes), assigned to a packed model or
    unpickled with it, is converted to offset codes in one buffer; the steps give the same bits as before."""
    import pickle
    from minimmf.kernels.ternary import OffsetPacked, PackedTernary
    config = minimmf.MMfreeConfig(vocab_size=40, hidden_size=160, num_hidden_layers=2, intermediate_size=200)
    new = _packed(config, 4)
    old_tree = _with_old_leaves(new.params)
    assert isinstance(old_tree["lm_head"].codes, PackedTernary)
    assigned = _packed(config, 4)
    assigned.params = old_tree
    state = {k: v for k, v in new.__dict__.items() if k != "_params"} | {"params": old_tree}   # an older object
    unpickled = pickle.loads(pickle.dumps(new))
    restored = packed_module.PackedMMfreeLM.__new__(packed_module.PackedMMfreeLM)
    restored.__setstate__(state)
    for m in (assigned, restored, unpickled):
        for path, leaf in leaves(m.params):
            if isinstance(leaf, bitlinear.PackedBitLinear):
                assert isinstance(leaf.codes, OffsetPacked), path
        np.testing.assert_array_equal(m.params["layers"][1]["mlp"]["down_proj"].codes.codes,
                                      new.params["layers"][1]["mlp"]["down_proj"].codes.codes)
        assert packed_module.resident_bytes(m) == packed_module.resident_bytes(new)
    tokens = [3, 39, 0]
    _assert_steps_equal(restored, tokens)
    states = [m.init_state(1) for m in (new, assigned, restored, unpickled)]
    for t in tokens:
        outs = [decode.packed_step(m, np.array([t]), s) for m, s in zip((new, assigned, restored, unpickled), states)]
        states = [o[1] for o in outs]
        for logits, st_ in outs[1:]:
            np.testing.assert_array_equal(logits, outs[0][0])
            for a, b in zip(st_.h, outs[0][1].h):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_thread_steps_take_the_kernels_serial_loops_with_the_same_bits(threads):
    """On one thread the kernels run their passes without a parallel region (``parallel`` False); on two (the
    guard off, so every step is parallel) with one; both give the plain step's bits, which a step's kernel
    arguments are checked against: ``par`` follows the thread count."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs two Numba threads")
    config = minimmf.MMfreeConfig(vocab_size=40, hidden_size=200, num_hidden_layers=2, intermediate_size=300)
    packed = _packed(config, 6)
    packed.guard_threads = False
    seen, real = [], decode.k1_projections

    def k1(*args):
        seen.append(args[-1])                                             # the kernel's ``parallel``
        return real(*args)
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with mock.patch.object(decode, "k1_projections", k1):
            _assert_steps_equal(packed, [1, 7, 39])
    finally:
        numba.set_num_threads(old)
    assert seen and set(seen) == {threads > 1}


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


def test_step_guard_spaces_its_tries_of_the_slower_form_so_they_cost_about_two_percent():
    """With the other form r times slower, StepGuard tries it every (r - 1) / PROBE_COST steps (16 to 1024): over
    3000 steps the tries cost at most ~2 PROBE_COST of the time, whichever form is the slower."""
    for serial_s, parallel_s in ((1.0, 15.0), (1.0, 0.5), (1.0, 3.0)):
        guard = decode.StepGuard()
        spent = best = 0.0
        for _ in range(3000):
            p = guard.choose(2)
            t = parallel_s if p else serial_s
            guard.record(2, p, t)
            spent += t
            best += min(serial_s, parallel_s)
        assert spent / best - 1 <= 2 * decode.PROBE_COST, (serial_s, parallel_s, spent / best)
        assert guard.probe == int(min(1024, max(16, (max(serial_s, parallel_s) / min(serial_s, parallel_s) - 1)
                                                 / decode.PROBE_COST)))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_steps_fall_back_to_one_thread_when_a_step_on_two_overran_and_can_be_forced_onto_two(monkeypatch):
    """With scripted step times (the guard's clock injected: a 2-thread step costs 10, a 1-thread step 1, as under a
    busy core), after the first four measured steps every step runs on one thread, with the plain step's bits;
    with guard_threads = False every step runs on both."""
    config = minimmf.MMfreeConfig(vocab_size=40, hidden_size=64, num_hidden_layers=2)
    packed = _packed(config, 5)
    clock = _FakeClock()
    real = decode.step_arrays
    threads_seen = []

    def scripted(plan, x, hs):
        threads_seen.append(numba.get_num_threads())
        clock.now += 10.0 if threads_seen[-1] > 1 else 1.0
        return real(plan, x, hs)

    monkeypatch.setattr(decode, "step_arrays", scripted)
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        decode.plan_for(packed).guard.clock = clock
        _assert_steps_equal(packed, [1, 2, 3, 4, 5, 6, 7])
        assert threads_seen == [2, 1, 2, 1, 1, 1, 1]
        assert numba.get_num_threads() == 2
        packed.guard_threads = False
        threads_seen.clear()
        _assert_steps_equal(packed, [1, 2])
        assert threads_seen == [2, 2]
    finally:
        numba.set_num_threads(old)


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now
