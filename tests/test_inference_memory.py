"""Inference keeps no training cache and streams long inputs in chunks: bounded memory, the same numbers."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minimmf
from minimmf.baseline import TransformerConfig, TransformerPP
from minimmf.lm import OutOfMemoryError, _empty
from strategies import tiny_configs, token_batches

MEM_CONFIG = minimmf.MMfreeConfig(vocab_size=64, hidden_size=64, num_hidden_layers=6, intermediate_size=128)


# The memory tests and the packed one are not marked ``jit``: without the JIT their scans and the packed kernel
# run as plain Python for minutes.

def peak_bytes(fn) -> int:
    """The most memory (NumPy arrays included) that ``fn()`` held at once beyond what was held before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def training_forward(model, ids):
    """The forward that ``loss_and_grads`` runs: one pass over the whole input, every cache kept."""
    return model._model_forward(model.params, model.config, ids, None)


@pytest.fixture(scope="module")
def mem_model():
    model = minimmf.MMfreeLM.init(MEM_CONFIG, seed=0)
    model.prefill(np.zeros((1, 4), np.int64))            # compile and run the canary before measuring
    return model


def test_prefill_memory_does_not_grow_with_the_length_of_the_input(mem_model):
    """Going from T to 4T tokens, prefill's peak memory grows by under 2% of what the training caches grow by."""
    mem_model.chunk_size = 256
    ids = np.random.default_rng(0).integers(0, MEM_CONFIG.vocab_size, (1, 1024))
    T = ids.shape[1] // 4
    inference = peak_bytes(lambda: mem_model.prefill(ids)) - peak_bytes(lambda: mem_model.prefill(ids[:, :T]))
    training = (peak_bytes(lambda: training_forward(mem_model, ids))
                - peak_bytes(lambda: training_forward(mem_model, ids[:, :T])))
    assert training > 20e6                                   # 6 layers' caches of 768 more tokens
    assert inference < 0.02 * training, (inference, training)


def test_inference_holds_two_blocks_activations_not_every_blocks(mem_model):
    """In one chunk, inference keeps no block's cache: its peak is under half the training forward's (L = 6)."""
    ids = np.random.default_rng(1).integers(0, MEM_CONFIG.vocab_size, (1, 1024))
    mem_model.chunk_size = ids.shape[1]                     # one chunk: only the dropped caches differ
    inference = peak_bytes(lambda: mem_model.forward(ids))
    training = peak_bytes(lambda: training_forward(mem_model, ids))
    assert inference < 0.5 * training, (inference, training)


# ----------------------------------------------------------------------------- the same numbers

@pytest.mark.jit
@given(cfg=tiny_configs(), data=st.data())
def test_chunked_inference_equals_the_training_forward_bit_for_bit(cfg, data):
    """forward, prefill (last logits and state) and loss in chunks of any size give the unchunked numbers."""
    model = minimmf.MMfreeLM.init(cfg, seed=data.draw(st.integers(0, 99)), dtype=np.float32)
    ids = data.draw(token_batches(cfg.vocab_size, max_T=12))
    model.chunk_size = data.draw(st.integers(1, 13))
    logits, _, state = training_forward(model, ids)
    np.testing.assert_array_equal(model.forward(ids), logits)
    last, got = model.prefill(ids)
    np.testing.assert_array_equal(last, logits[:, -1])
    for h, h_whole in zip(got.h, state.h):
        np.testing.assert_array_equal(h, h_whole)
    if ids.shape[1] > 1:
        model.chunk_size = ids.shape[1]
        whole = model.loss(ids, ids)
        model.chunk_size = data.draw(st.integers(1, 13))
        assert model.loss(ids, ids) == pytest.approx(whole, rel=1e-12)


def test_chunked_prefill_of_the_packed_model_equals_its_unchunked_prefill():
    """The packed model inherits the chunking: same last logits and states, bit for bit."""
    cfg = minimmf.MMfreeConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3, intermediate_size=48)
    packed = minimmf.MMfreeLM.init(cfg, seed=3).pack()
    ids = np.random.default_rng(3).integers(0, 40, (2, 30))
    last, state = packed.prefill(ids)
    full = packed.forward(ids)
    packed.chunk_size = 7
    last7, state7 = packed.prefill(ids, packed.init_state(2))
    np.testing.assert_array_equal(last7, last)
    np.testing.assert_array_equal(last7, full[:, -1])
    np.testing.assert_array_equal(packed.forward(ids), full)
    for a, b in zip(state7.h, state.h):
        np.testing.assert_array_equal(a, b)


@pytest.mark.jit
@pytest.mark.parametrize("chunk", [1, 4, 9])
def test_chunked_prefill_of_the_transformer_carries_the_kv_cache(chunk):
    """Transformer++ in chunks hands its KV cache on: the unchunked logits, keys and values to float64 rounding.

    (Not bit for bit: the attention products change shape with the chunk, so BLAS may sum in another order;
    the tolerance is the one the KV-cache decoding tests accept.)"""
    cfg = TransformerConfig(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_heads=2, intermediate_size=12)
    m = TransformerPP.init(cfg, seed=4, dtype=np.float64)
    ids = np.random.default_rng(4).integers(0, 11, (2, 17))
    logits, _, kv = training_forward(m, ids)
    m.chunk_size = chunk
    last, got = m.prefill(ids)
    np.testing.assert_allclose(last, logits[:, -1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.forward(ids), logits, rtol=1e-10, atol=1e-12)
    assert got.length == ids.shape[1]
    for a, b in zip(got.k + got.v, kv.k + kv.v):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert m.loss(ids, ids) == pytest.approx(m.loss_and_grads(ids, ids)[0], rel=1e-12)


@pytest.mark.jit
def test_chunked_loss_skips_chunks_whose_labels_are_all_ignored():
    """-100 labels across whole chunks leave the mean over the scored positions; nothing scored is an error."""
    cfg = minimmf.MMfreeConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, intermediate_size=24)
    model = minimmf.MMfreeLM.init(cfg, seed=5, dtype=np.float64)
    ids = np.random.default_rng(5).integers(0, 30, (2, 20))
    labels = ids.copy()
    labels[:, 3:15] = -100
    model.chunk_size = 4
    assert model.loss(ids, labels) == pytest.approx(model.loss_and_grads(ids, labels)[0], rel=1e-12)
    with pytest.raises(ValueError, match="every position is ignored"):
        model.loss(ids, np.full_like(ids, -100))


# ----------------------------------------------------------------------------- clear errors

@pytest.mark.jit
def test_a_memory_error_in_the_forward_says_what_to_lower():
    """Running out of memory in the model raises OutOfMemoryError naming the call and what to lower."""
    cfg = minimmf.MMfreeConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, intermediate_size=24)
    model = minimmf.MMfreeLM.init(cfg, seed=6)

    def no_memory(*args):
        raise MemoryError()
    model._model_forward = no_memory
    with pytest.raises(OutOfMemoryError, match="prefill: not enough memory .* chunk_size"):
        model.prefill(np.zeros((1, 5), np.int64))
    with pytest.raises(OutOfMemoryError, match="loss_and_grads: not enough memory .* batch size"):
        model.loss_and_grads(np.zeros((1, 5), np.int64), np.zeros((1, 5), np.int64))


@pytest.mark.jit
def test_logits_too_large_for_memory_raise_a_clear_error():
    """An impossible (B, T, V) result raises OutOfMemoryError (a MemoryError) pointing to prefill and loss."""
    with pytest.raises(OutOfMemoryError, match=r"forward: .* GB\), do not fit in memory; .* prefill .* loss"):
        _empty((1 << 20, 1 << 20, 1 << 20), np.float32, "forward")
    assert issubclass(OutOfMemoryError, MemoryError)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_chunk_size_must_be_a_positive_integer(bad):
    """A bad chunk_size is refused with a message naming it."""
    cfg = minimmf.MMfreeConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, intermediate_size=24)
    model = minimmf.MMfreeLM.init(cfg, seed=7)
    model.chunk_size = bad
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        model.forward(np.zeros((1, 5), np.int64))
