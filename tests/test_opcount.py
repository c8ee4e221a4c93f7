"""The op counter (minimmf/opcount.py): its shape-derived counts against what the real code computes,
counted by wrapping the matrix-product functions during a real ``step``."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minimmf
import minimmf.bitlinear as bitlinear_module
from minimmf import opcount
from minimmf.baseline import TransformerConfig, TransformerPP
from minimmf.baseline import layers
from minimmf.tree import leaves


@st.composite
def sizes(draw):
    n = draw(st.integers(1, 3))
    return dict(vocab_size=draw(st.integers(2, 60)), hidden_size=2 * n * draw(st.integers(1, 5)),
                num_hidden_layers=draw(st.integers(1, 3)), intermediate_size=draw(st.integers(1, 40))), n


@given(sizes())
def test_mmfree_matrix_products_have_no_multiplications(size):
    """Every matrix product of the MatMul-free model is ternary: 0 multiplications, one add per weight."""
    c, _ = size
    rows = opcount.mmfree_ops(minimmf.MMfreeConfig(**c))
    prod = opcount.by_kind(rows)["matrix product"]
    model = minimmf.MMfreeLM.init(minimmf.MMfreeConfig(**c))
    ternary = sum(a.size for p, a in leaves(model.params) if p.endswith(".W"))
    assert prod["mults"] == 0 and prod["adds"] == ternary


@given(sizes(), st.integers(1, 300))
def test_transformer_matrix_products_multiply_every_weight_once(size, S):
    """Transformer++: one multiplication per matrix weight per token (the embedding is only read)."""
    c, n = size
    cfg = TransformerConfig(num_heads=n, **c)
    prod = opcount.by_kind(opcount.transformer_ops(cfg, S))["matrix product"]
    weights = sum(a.size for p, a in leaves(TransformerPP.init(cfg).params) if a.ndim == 2 and p != "embeddings")
    assert prod["mults"] == weights and prod["weight_bytes"] == 4 * weights


@given(sizes(), st.integers(1, 100), st.integers(1, 100))
def test_attention_cost_grows_linearly_with_the_context(size, S1, S2):
    """Attention reads the whole KV cache: its mults and cache bytes are linear in S; nothing else depends on S."""
    c, n = size
    cfg = TransformerConfig(num_heads=n, **c)
    a1, a2 = (opcount.by_kind(opcount.transformer_ops(cfg, S))["attention"] for S in (S1, S2))
    H, L = c["hidden_size"], c["num_hidden_layers"]
    assert a2["mults"] - a1["mults"] == L * (2 * H + 2 * n) * (S2 - S1)      # q·k, P·v, scale, 1/sum
    assert a2["cache_bytes"] - a1["cache_bytes"] == L * 2 * H * 4 * (S2 - S1)
    rest = lambda S: opcount.totals([r for r in opcount.transformer_ops(cfg, S) if r.kind != "attention"])  # noqa
    assert rest(S1) == rest(S2)


def test_transformer_counts_match_a_real_step(monkeypatch):
    """Wrapping linear_forward and sdpa_forward during TransformerPP.step counts exactly the derived
    matrix-product and attention-product multiplications."""
    cfg = TransformerConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_heads=2, intermediate_size=24)
    m = TransformerPP.init(cfg)
    _, state = m.prefill(np.array([[1, 2, 3, 4]]))
    seen = {"linear": 0, "sdpa": 0}
    real_lin, real_sdpa = layers.linear_forward, layers.sdpa_forward

    def lin(x, p):
        seen["linear"] += x.size // x.shape[-1] * p["W"].size           # N tokens × O × I products
        return real_lin(x, p)

    def sdpa(q, k, v):
        seen["sdpa"] += q.size * k.shape[2] * 2                         # q·k and P·v: T n d S each
        return real_sdpa(q, k, v)
    monkeypatch.setattr(layers, "linear_forward", lin)
    monkeypatch.setattr(layers, "sdpa_forward", sdpa)
    import minimmf.baseline.model as bm
    monkeypatch.setattr(bm, "linear_forward", lin)
    m.step(np.array([5]), state)
    kinds = opcount.by_kind(opcount.transformer_ops(cfg, context=5))
    assert seen["linear"] == kinds["matrix product"]["mults"]
    n = cfg.num_heads
    assert seen["sdpa"] == kinds["attention"]["mults"] - 2 * n * 5 * cfg.num_hidden_layers   # minus scale, 1/sum


def test_mmfree_counts_match_a_real_packed_step(monkeypatch):
    """Wrapping the packed kernel during PackedMMfreeLM.step counts exactly the derived additions of the
    matrix products, and the packed bytes it is handed equal the derived weight bytes."""
    cfg = minimmf.MMfreeConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, intermediate_size=24)
    packed = minimmf.MMfreeLM.init(cfg).pack()
    seen = {"adds": 0, "bytes": 0}
    real = bitlinear_module.offset_matmul

    def counting(q_x, codes):
        seen["adds"] += q_x.shape[0] * codes.out_features * codes.in_features
        seen["bytes"] += codes.codes.nbytes + 8                          # codes and the one scale s_w
        return real(q_x, codes)
    monkeypatch.setattr(bitlinear_module, "offset_matmul", counting)
    packed.step(np.array([3]), packed.init_state(1))
    prod = opcount.by_kind(opcount.mmfree_ops(cfg))["matrix product"]
    assert seen["adds"] == prod["adds"] and seen["bytes"] == prod["weight_bytes"]


def test_the_released_370m_shape_multiplies_two_hundred_times_less():
    """At the 370M shape (H 1024, L 24, V 32000) with 2048 tokens of context, Transformer++ multiplies
    > 200x more per token than MMfreeLM and reads > 15x more weight bytes (derived from shapes)."""
    mm = opcount.totals(opcount.mmfree_ops(minimmf.MMfreeConfig()))
    tf = opcount.totals(opcount.transformer_ops(TransformerConfig(num_heads=16), 2048))
    assert tf["mults"] > 200 * mm["mults"]
    assert tf["weight_bytes"] > 15 * mm["weight_bytes"]


def test_training_flops_count_ternary_products_as_float_products():
    """In training both models run float products, so at equal matrix sizes their FLOPs nearly agree."""
    c = dict(vocab_size=65, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    mm = opcount.training_flops_per_token(minimmf.MMfreeLM.init(minimmf.MMfreeConfig(**c)), 128)
    tf = opcount.training_flops_per_token(TransformerPP.init(TransformerConfig(num_heads=2, **c)), 128)
    weights = 4 * 64 * 64 * 2 + 3 * 64 * 128 * 2 + 65 * 64
    assert 6 * weights < mm < 6.6 * weights
    assert tf > 6 * weights and mm == pytest.approx(tf, rel=0.25)
