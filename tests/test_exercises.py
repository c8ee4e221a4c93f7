"""The chapters' exercises that experiment on the library: each change is applied here as the reader would make it
(the same line of the same function, edited), and the number the chapter states is asserted, so it cannot drift."""
import contextlib
import inspect
import math
import textwrap

import numpy as np
import pytest

import minimmf
from minimmf import bitlinear, glu, mlgru, quant
from minimmf import seam
from minimmf.kernels.scan import scan_forward
from minimmf.kernels.ternary import pack_ternary, unpack_ternary

from minimmf import golden as golden_data


@pytest.fixture(scope="module")
def golden_case():
    z = golden_data.load()
    config = golden_data.config(z)
    sd = golden_data.state_dict(z)
    return z, config, sd


@pytest.fixture()
def golden(golden_case):
    """(npz, the golden model, its loss on its own labels), on the readable reference path."""
    z, config, sd = golden_case
    with seam.using("reference"):
        yield z, minimmf.from_reference(config, sd)


def edited(module, name: str, old: str, new: str):
    """``module.name`` with one line of its source edited, as a reader would edit the file."""
    src = textwrap.dedent(inspect.getsource(getattr(module, name)))
    assert old in src, f"{module.__name__}.{name} no longer contains {old!r}: update the chapter's exercise"
    namespace = dict(vars(module))
    exec(compile(src.replace(old, new), module.__file__, "exec"), namespace)
    return namespace[name]


@contextlib.contextmanager
def replaced(*triples):
    """Temporarily set attributes (module, name, value), restoring them afterwards."""
    saved = [(m, n, getattr(m, n)) for m, n, _ in triples]
    for m, n, v in triples:
        setattr(m, n, v)
    try:
        yield
    finally:
        for m, n, v in saved:
            setattr(m, n, v)


def loss_of(z, model):
    return model.loss(z["input_ids"], z["labels"])


def test_golden_loss_is_the_baseline_every_exercise_compares_with(golden):
    """The unedited library gives the released code's loss, 6.0134, on the golden case."""
    z, m = golden
    assert loss_of(z, m) == pytest.approx(6.01339, abs=1e-5)


# ----------------------------------------------------------------------------- chapter 1

def test_ch1_four_bit_activations_raise_the_golden_loss_to_6_105(golden):
    """Exercise 1.3: ACT_QMAX = 7 (4-bit activations) gives loss 6.1051 and moves logits by up to 2.36."""
    z, m = golden
    before = m.forward(z["input_ids"])
    with replaced((quant, "ACT_QMAX", 7)):
        assert loss_of(z, m) == pytest.approx(6.1051, abs=1e-4)
        assert np.abs(m.forward(z["input_ids"]) - before).max() == pytest.approx(2.359, abs=1e-3)


def test_ch1_ties_to_even_changes_nothing_on_the_golden_case(golden):
    """Exercise 1.2: np.round instead of round_half_away leaves the golden logits unchanged (no ties there)."""
    z, m = golden
    before = m.forward(z["input_ids"])
    with replaced((quant, "round_half_away", np.round)):
        assert np.array_equal(m.forward(z["input_ids"]), before)
        q, _ = quant.activation_quant(np.array([[127.0, 2.5, -0.5, 1.0]], np.float32))
        assert q.tolist() == [[127, 2, 0, 1]]


def test_ch1_laplace_weights_are_39_percent_zero():
    """Exercise 1.1: Laplace weights give 1 - exp(-1/2) = 0.393 zero codes."""
    W = np.random.default_rng(0).laplace(size=(1024, 1024)).astype(np.float32)
    assert np.mean(quant.weight_quant(W)[0] == 0) == pytest.approx(1 - math.exp(-0.5), abs=0.003)


# ----------------------------------------------------------------------------- chapter 2

def test_ch2_eps_1e5_moves_the_golden_logits_by_0_393(golden):
    """Exercise 2.2: BITLINEAR_EPS = 1e-5 moves the golden logits by up to 0.393 from the released ones."""
    z, m = golden
    with replaced((bitlinear, "BITLINEAR_EPS", 1e-5)):
        assert np.abs(m.forward(z["input_ids"]) - z["logits"]).max() == pytest.approx(0.393, abs=1e-3)


def test_ch2_an_absmax_ternary_scale_zeroes_almost_every_weight(golden):
    """Exercise 2.3: max|W| instead of mean|W| in weight_quant: 98.7% zero codes, golden loss 6.5409."""
    z, m = golden
    absmax = edited(quant, "weight_quant", "np.mean(np.abs(W))", "np.max(np.abs(W))")
    W = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    assert np.mean(absmax(W)[0] == 0) == pytest.approx(0.987, abs=0.001)
    with replaced((quant, "weight_quant", absmax), (bitlinear, "weight_quant", absmax)):
        assert loss_of(z, m) == pytest.approx(6.5409, abs=1e-4)


# ----------------------------------------------------------------------------- chapter 3

def test_ch3_rmsnorm_backward_without_its_projection_term_fails_the_gradient_check():
    """Exercise 3.3: dropping the mean term of RMSNorm's backward gives a relative error of order 1."""
    from minimmf import functional
    broken = edited(functional, "rmsnorm_backward", "dx = rstd * (dn - n * np.mean(dn * n, axis=-1, keepdims=True))", "dx = rstd * dn")
    rng = np.random.default_rng(0)
    x, w, R = rng.standard_normal((4, 16)), rng.standard_normal(16), rng.standard_normal((4, 16))
    y, cache = functional.rmsnorm_forward(x, w)
    with seam.using("reference"):
        dx = broken(R, cache)[0]
    h, num = 1e-6, np.zeros_like(x)
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        e = e.reshape(x.shape)
        num.flat[k] = (np.sum(functional.rmsnorm_forward(x + e, w)[0] * R)
                       - np.sum(functional.rmsnorm_forward(x - e, w)[0] * R)) / (2 * h)
    err = np.max(np.abs(dx - num) / np.maximum(np.abs(dx) + np.abs(num), 1e-12))
    assert err > 0.99                                                   # an entry of the wrong sign
    assert np.allclose(functional.rmsnorm_backward(R, cache)[0], num, atol=1e-8)


# ----------------------------------------------------------------------------- chapter 4

def test_ch4_without_lower_bounds_the_golden_loss_is_6_152(golden_case):
    """Exercise 4.2: use_lower_bound = False gives loss 6.1523 on the golden parameters."""
    z, config, sd = golden_case
    with seam.using("reference"):
        m = minimmf.from_reference({**config, "use_lower_bound": False}, sd)
        assert loss_of(z, m) == pytest.approx(6.1523, abs=1e-4)


def test_ch4_a_tanh_candidate_gives_6_025(golden):
    """Exercise 4.3: tanh instead of SiLU on the candidate: loss 6.0250, logits move by up to 1.22."""
    z, m = golden
    before = m.forward(z["input_ids"])
    f = edited(mlgru, "mlgru_forward", "i = silu(zi) * (1 - f)", "i = np.tanh(zi) * (1 - f)")
    with replaced((mlgru, "mlgru_forward", f)):
        assert loss_of(z, m) == pytest.approx(6.0250, abs=1e-4)
        assert np.abs(m.forward(z["input_ids"]) - before).max() == pytest.approx(1.221, abs=1e-3)


def test_ch4_swapping_norm_and_gate_gives_6_017(golden):
    """Exercise 4.4: RMSNorm on h and SiLU on g (the HGRN order) instead of the released order: loss 6.0171."""
    z, m = golden
    f = edited(mlgru, "mlgru_forward", "o = gn * silu(h)", "o = silu(gn) * h")
    with replaced((mlgru, "mlgru_forward", f)):
        assert loss_of(z, m) == pytest.approx(6.0171, abs=1e-4)


# ----------------------------------------------------------------------------- chapter 5

def test_ch5_relu_in_the_glu_gives_6_077(golden):
    """Exercise 5.3: ReLU instead of SiLU on the GLU's gate: loss 6.0768."""
    z, m = golden
    f = edited(glu, "glu_forward", "a = silu(gate) * up", "a = np.maximum(gate, 0) * up")
    with replaced((glu, "glu_forward", f)):
        assert loss_of(z, m) == pytest.approx(6.0768, abs=1e-4)


# ----------------------------------------------------------------------------- chapter 6

def test_ch6_a_sequential_byte_order_read_as_interleaved_garbles_two_thirds_of_the_codes():
    """Exercise 6.3: codes packed 'input 4j+k in byte j' but read by unpack_ternary: 65.6% come back wrong."""
    q = np.random.default_rng(0).integers(-1, 2, size=(256, 512)).astype(np.int8)
    packed = pack_ternary(q)
    c = np.where(q == 1, 1, np.where(q == -1, 2, 0)).astype(np.uint8).reshape(256, -1, 4)
    sequential = (c[..., 0] | c[..., 1] << 2 | c[..., 2] << 4 | c[..., 3] << 6).astype(np.uint8)
    wrong = np.mean(unpack_ternary(packed._replace(codes=sequential)) != q)
    assert wrong == pytest.approx(0.656, abs=0.001)
    assert wrong == pytest.approx((1 - 2 / 128) * 2 / 3, abs=0.005)        # derived: 2 of 128 slots coincide


# ----------------------------------------------------------------------------- chapter 7

def test_ch7_the_cumulative_product_scan_overflows_at_t_119():
    """Exercise 7.3: h = P cumsum(i / P), P = cumprod(f), f ~ U(0.3, 0.7), seed 0: first non-finite at t = 119."""
    rng = np.random.default_rng(0)
    f = rng.uniform(0.3, 0.7, size=(1, 512, 8)).astype(np.float32)
    i = rng.standard_normal((1, 512, 8)).astype(np.float32)
    h = scan_forward(f, i, np.zeros((1, 8), np.float32))
    P = np.cumprod(f, axis=1)
    with np.errstate(all="ignore"):
        hp = P * np.cumsum(i / P, axis=1)
    finite = np.all(np.isfinite(hp[0]), axis=-1)
    assert int(np.argmin(finite)) == 119
    assert np.abs(hp[0, :50] - h[0, :50]).max() < 1e-5


# ----------------------------------------------------------------------------- chapter 9

def test_ch9_prefill_then_step_equals_the_released_prefill_step(golden):
    """Exercise 9.3: 8 tokens prefilled, then 8 steps, match the released code's logits to 2e-6."""
    z, m = golden
    ids = z["input_ids"]
    last, state = m.prefill(ids[:, :8])                  # the prompt's last logits (B, V)
    steps = [last[:, None]]
    for t in range(8, 16):
        out, state = m.step(ids[:, t], state)
        steps.append(out[:, None])
    assert np.abs(np.concatenate(steps, axis=1) - z["logits_prefill_step"][:, 7:]).max() < 2e-6


# ----------------------------------------------------------------------------- chapter 10

def test_ch10_the_packed_golden_model_gives_the_float_logits_bit_for_bit(golden):
    """Exercise 10.2: pack() changes no bit of the golden logits."""
    z, m = golden
    assert np.array_equal(m.pack().forward(z["input_ids"]), m.forward(z["input_ids"]))


# ----------------------------------------------------------------------------- chapter 14

def test_ch14_lower_bounds_cost_1344_multiplications_per_token_at_H192_L4():
    """Exercise 14.2: at H192-L4 (I 384, V 65), the lower bounds cost 1,344 of 52,799 multiplications per token."""
    from minimmf import opcount
    from minimmf.config import MMfreeConfig

    def mults(lb):
        c = MMfreeConfig(vocab_size=65, hidden_size=192, num_hidden_layers=4, intermediate_size=384,
                         use_lower_bound=lb)
        return opcount.totals(opcount.mmfree_ops(c))["mults"]

    assert mults(True) == 52_799 and mults(True) - mults(False) == 1_344


def test_ch14_attention_multiplications_grow_with_the_context():
    """Exercise 14.1: Transformer++ H64-L2 needs 125,458 multiplications per token at context 128, 383,506 at 1024."""
    from minimmf import opcount
    from minimmf.baseline import TransformerConfig

    t = TransformerConfig(vocab_size=65, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    assert [opcount.totals(opcount.transformer_ops(t, n))["mults"] for n in (128, 1024)] == [125_458, 383_506]
