"""The packed model: same logits and greedy tokens as the float model, an exact compact embedding, and
its memory accounted for."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import minimmf
from minimmf.generate import generate
from minimmf.packed import CompactEmbedding, PackedMMfreeLM, resident_bytes
from minimmf.pretrained import bf16_to_float32, float32_to_bf16
from minimmf.tree import leaves


def bf16_model(config, seed=0):
    """A float model whose weights are bf16 values (what loading a bf16 checkpoint gives)."""
    m = minimmf.MMfreeLM.init(config, seed=seed)
    params = {k: bf16_to_float32(float32_to_bf16(v)) for k, v in minimmf.to_reference(m).items()}
    return minimmf.from_reference(config.to_reference(), params)


SMALL = minimmf.MMfreeConfig(vocab_size=300, hidden_size=160, num_hidden_layers=2, intermediate_size=200)


@st.composite
def bf16_tables(draw):
    """Embedding tables of arbitrary finite bf16 values: every sign, exponent and mantissa, odd widths."""
    V, H = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    bits = draw(hnp.arrays(np.uint16, (V, H)))
    x = bf16_to_float32(bits)
    return np.where(np.isfinite(x), x, np.float32(1.5))          # inf/NaN are never parameters


@given(bf16_tables(), st.data())
def test_compact_embedding_is_exact_for_any_bf16_table(E, data):
    """A table of bf16 values is stored in about 12 bits per value and every lookup is bit-exact."""
    ce = CompactEmbedding(E)
    assert ce.kind == "bf16-12bit"
    ids = data.draw(hnp.arrays(np.int64, st.tuples(st.integers(1, 3), st.integers(1, 4)),
                               elements=st.integers(0, E.shape[0] - 1)))
    got = ce[ids]
    assert got.shape == (*ids.shape, E.shape[1]) and got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), E[ids].view(np.uint32))   # -0.0 and subnormals too
    np.testing.assert_array_equal(np.asarray(ce).view(np.uint32), E.view(np.uint32))


def test_compact_embedding_keeps_values_outside_the_exponent_window_as_exceptions():
    """A row mixing 1e30 with 1e-30 (60 binades) still decodes exactly; only the tiny values are set aside."""
    E = bf16_to_float32(float32_to_bf16(np.array([[1e30, 1e-30, -3.0, 0.0], [1.0, 2.0, -0.5, 1e-3]], np.float32)))
    ce = CompactEmbedding(E)
    np.testing.assert_array_equal(ce[np.array([0, 1, 0])], E[[0, 1, 0]])
    assert ce._exc_index.size == 2                                  # 1e-30 and -3.0 are below 1e30's window


@pytest.mark.parametrize("dtype, kind, bits", [(np.float16, "float16", 16), (np.float32, "float32", 32)])
def test_compact_embedding_stores_other_tables_in_the_narrowest_exact_dtype(dtype, kind, bits):
    """float16-valued tables take 16 bits per value, anything else 32; lookups stay exact."""
    E = (np.random.default_rng(0).standard_normal((50, 32)) * 0.02).astype(dtype).astype(np.float32)
    ce = CompactEmbedding(E)
    assert ce.kind == kind and ce.nbytes * 8 == bits * E.size
    np.testing.assert_array_equal(ce[np.arange(50)], E)


def test_packed_golden_model_gives_the_float_logits_and_greedy_tokens(golden, golden_model, path):
    """The packed integer path reproduces the float path on the golden model: logits to float rounding
    (here bit for bit) and the same greedy tokens."""
    packed = golden_model.pack()
    a, b = golden_model.forward(golden["input_ids"]), packed.forward(golden["input_ids"])
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    prompt = golden["input_ids"][0, :5]
    assert list(generate(packed, prompt, 16, temperature=0)) == list(generate(golden_model, prompt, 16, temperature=0))


def test_packed_model_from_bf16_weights_matches_the_float_model_step_by_step():
    """With bf16-valued weights the embedding is stored in 12 bits and prefill + step still give the float
    model's logits (to float rounding) and tokens."""
    model = bf16_model(SMALL)
    packed = model.pack()
    assert packed.params["embeddings"].kind == "bf16-12bit"
    ids = np.random.default_rng(1).integers(0, SMALL.vocab_size, (2, 7))
    (la, sa), (lb, sb) = model.prefill(ids), packed.prefill(ids)
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-5 * np.abs(la).max())
    tok = np.array([3, 250])
    np.testing.assert_allclose(packed.step(tok, sb)[0], model.step(tok, sa)[0], rtol=0, atol=1e-5 * np.abs(la).max())
    assert list(generate(packed, ids[0], 12, temperature=0)) == list(generate(model, ids[0], 12, temperature=0))


def test_resident_bytes_counts_codes_scales_gains_and_the_embedding():
    """resident_bytes = 2-bit codes (rows padded to 128 inputs) + 8 bytes per scale + float32 gains and
    lower bounds + the compact embedding; for the float model it is 4 bytes per parameter."""
    model = bf16_model(SMALL)
    packed = model.pack()
    H, I, V, L = 160, 200, 300, 2
    pad = lambda n: -(-n // 128) * 128                                    # noqa: E731
    codes = L * (4 * H * pad(H) + 2 * I * pad(H) + H * pad(I)) // 4 + V * pad(H) // 4
    small = 4 * (L * H + L * (8 * H + I) + H + H) + 8 * (L * 6 + 1)      # lower bounds, gains, final norm; scales
    emb = packed.params["embeddings"]
    assert packed.resident_bytes() == resident_bytes(packed) == codes + small + emb.nbytes
    assert emb.nbytes < 1.6 * V * H                                       # ~12 bits per value
    assert resident_bytes(model) == 4 * model.num_params() == 4 * packed.num_params()


def _held_arrays(obj, seen=None) -> list:
    """Every NumPy array reachable from obj through attributes, dicts, lists and tuples (an independent walk)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)) or obj is None:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        items = list(getattr(obj, "__dict__", {}).values())
    return [a for v in items for a in _held_arrays(v, seen)]


def _buffer_bytes(arrays) -> int:
    """Bytes of the distinct memory blocks behind the arrays (a view and its base counted once)."""
    blocks = {}
    for a in arrays:
        while isinstance(a.base, np.ndarray):
            a = a.base
        blocks[id(a)] = a.nbytes
    return sum(blocks.values())


def test_resident_bytes_is_the_memory_of_every_array_the_packed_model_holds():
    """resident_bytes equals the bytes of the distinct buffers behind every array reachable from the model (plus
    8 per Python-float scale), before and after the first step builds the decode plan; the plan copies no codes
    (what it adds, its scratch and stacked gains, is less than half of them)."""
    packed = bf16_model(SMALL).pack()
    n_scales = sum(isinstance(leaf, minimmf.bitlinear.PackedBitLinear) for _, leaf in leaves(packed.params))
    before = resident_bytes(packed)
    assert before == _buffer_bytes(_held_arrays(packed)) + 8 * n_scales
    packed.step(np.array([1]), packed.init_state(1))
    after = resident_bytes(packed)
    assert "_decode_plan" in packed.__dict__
    assert after == _buffer_bytes(_held_arrays(packed)) + 8 * n_scales
    codes = sum(leaf.codes.codes.nbytes for _, leaf in leaves(packed.params)
                if isinstance(leaf, minimmf.bitlinear.PackedBitLinear))
    assert 0 < after - before < codes / 2


def test_packed_model_keeps_float64_models_in_float64():
    """Packing a float64 model keeps its embedding and arithmetic in float64 (the gradient checks use it)."""
    cfg = minimmf.MMfreeConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, intermediate_size=8)
    m = minimmf.MMfreeLM.init(cfg, dtype=np.float64)
    p = m.pack()
    ids = np.array([[1, 2, 3]])
    assert p.dtype == np.float64 and p.forward(ids).dtype == np.float64
    np.testing.assert_allclose(p.forward(ids), m.forward(ids), rtol=1e-12, atol=1e-12)


def test_packed_model_is_inference_only_and_pack_is_idempotent(golden_model):
    """A packed model refuses to train, packs to itself, and is the class minimmf and packed.py export."""
    packed = golden_model.pack()
    with pytest.raises(TypeError, match="inference only"):
        packed.loss_and_grads(np.zeros((1, 2), int), np.zeros((1, 2), int))
    assert packed.pack() is packed
    from minimmf.packed import PackedMMfreeLM as from_packed_module
    assert type(packed) is PackedMMfreeLM is minimmf.PackedMMfreeLM is from_packed_module
    matrices = [path for path, leaf in leaves(packed.params) if isinstance(leaf, np.ndarray) and leaf.ndim == 2]
    assert matrices == ["lower_bounds"]                             # no float weight matrix is kept


def test_pack_keeps_the_tokenizer_load_pretrained_attached(golden, golden_model):
    """model.pack() carries model.tokenizer over, so load_pretrained(...).pack() can still encode text."""
    model = minimmf.from_reference(golden.config, golden.state_dict)
    model.tokenizer = "a tokenizer"
    assert model.pack().tokenizer == "a tokenizer"
    assert golden_model.pack().tokenizer is None


def test_tune_threads_keeps_the_fastest_thread_count_and_the_numbers(golden, golden_model):
    """tune_threads picks one of the candidate thread counts; logits do not depend on it."""
    import numba
    packed = golden_model.pack()
    before = packed.forward(golden["input_ids"])
    n = packed.tune_threads(n_tokens=2)
    assert packed.num_threads == n and 1 <= n <= numba.config.NUMBA_NUM_THREADS
    np.testing.assert_array_equal(packed.forward(golden["input_ids"]), before)
    k = numba.get_num_threads()
    packed.num_threads = 1
    packed.step(np.array([1]), packed.init_state(1))
    assert numba.get_num_threads() == k                             # the caller's setting is restored
