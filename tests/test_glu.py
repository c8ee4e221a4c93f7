"""The GLU channel mixer (SPEC §4): the intermediate-size rule, golden per-op, gradients."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from goldencheck import assert_close_to_max, golden_glu_params
from gradcheck import assert_grad_close, numerical_grad, ste_surrogate
from minimmf.bitlinear import bitlinear_forward
from minimmf.functional import silu
from minimmf.config import intermediate_size_for
from minimmf.glu import glu_backward, glu_forward
from minimmf.tree import leaves
from strategies import random_glu_params

pytestmark = pytest.mark.jit


# ----------------------------------------------------------------------------- intermediate size

@pytest.mark.parametrize("model,H,I", [("MMfreeLM-370M", 1024, 2816), ("MMfreeLM-1.3B", 2048, 5632),
                                       ("MMfreeLM-2.7B", 2560, 6912)])
def test_intermediate_size_matches_the_released_checkpoints(model, H, I):
    """The released checkpoints' GLU widths (SPEC §7) follow I = 256 ceil(int(8H/3) / 256)."""
    assert intermediate_size_for(H) == I, model


def test_intermediate_size_of_the_golden_model_is_256(golden):
    """Case A (H = 64, intermediate_size null) has W_gate (2I, H) = (512, 64): I = 256."""
    assert golden.config["intermediate_size"] is None
    two_I = golden["param/model.layers.0.mlp.gate_proj.weight"].shape[0]
    assert intermediate_size_for(golden.config["hidden_size"]) * 2 == two_I == 512


@given(st.integers(1, 10_000), st.integers(1, 8))
def test_intermediate_size_is_the_smallest_multiple_of_256_not_below_int_of_two_thirds_ratio_h(H, ratio):
    """I is a multiple of 256, I >= int(H ratio 2/3), and I - 256 < int(H ratio 2/3)."""
    target = int(H * ratio * 2 / 3)
    I = intermediate_size_for(H, ratio)
    assert I % 256 == 0 and I >= target and I - 256 < target
    assert I == 256 * math.ceil(target / 256)


# ----------------------------------------------------------------------------- golden

@pytest.mark.parametrize("l", [0, 1])
def test_glu_gate_activation_matches_the_golden_down_proj_input(golden, l):
    """Teacher-forced: [gate, up] = mlp.gate_proj.out split in halves; silu(gate) * up = mlp.down_proj.in."""
    y = golden[f"act/model.layers.{l}.mlp.gate_proj.out"]
    I = y.shape[-1] // 2
    assert_close_to_max(silu(y[..., :I]) * y[..., I:], golden[f"act/model.layers.{l}.mlp.down_proj.in"],
                        "silu(gate) * up")


@pytest.mark.parametrize("l", [0, 1])
def test_glu_reproduces_the_golden_intermediates_op_by_op(golden, l):
    """From mlp.gate_proj.in: gate_proj.out ([gate, up]), down_proj.in and mlp.out, each within 1e-5 of max."""
    pre = f"act/model.layers.{l}.mlp"
    out, cache = glu_forward(golden[f"{pre}.gate_proj.in"], golden_glu_params(golden, l))
    assert_close_to_max(np.concatenate([cache.gate, cache.up], axis=-1), golden[f"{pre}.gate_proj.out"],
                        "gate_proj.out")
    assert_close_to_max(cache.down_proj.norm.x, golden[f"{pre}.down_proj.in"], "down_proj.in")
    assert_close_to_max(out, golden[f"{pre}.out"], "mlp.out")


def test_glu_activation_is_silu_whatever_the_config_says(golden):
    """The reference ignores hidden_act ("swish" here): gelu(gate) * up would not reproduce down_proj.in."""
    y = golden["act/model.layers.0.mlp.gate_proj.out"].astype(np.float64)
    I = y.shape[-1] // 2
    gate, up = y[..., :I], y[..., I:]
    gelu_tanh = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))
    expected = golden["act/model.layers.0.mlp.down_proj.in"]
    assert np.max(np.abs(gelu_tanh * up - expected)) > 1e-3 * np.max(np.abs(expected))
    assert_close_to_max(gate / (1 + np.exp(-gate)) * up, expected, "silu(gate) * up, float64")


# ----------------------------------------------------------------------------- shapes, purity, gradients

def test_glu_keeps_shapes_and_does_not_mutate_inputs():
    """x (B, T, H) -> out (B, T, H); grads shaped like p; forward and backward leave x and p unchanged."""
    rng = np.random.default_rng(0)
    x, p = rng.standard_normal((2, 3, 5)), random_glu_params(rng, 5, 7)
    before = [x.copy(), *(v.copy() for _, v in leaves(p))]
    out, cache = glu_forward(x, p)
    assert out.shape == x.shape and cache.gate.shape == (2, 3, 7) and cache.up.shape == (2, 3, 7)
    dx, grads = glu_backward(np.ones_like(out), cache)
    assert dx.shape == x.shape
    assert {k: v.shape for k, v in leaves(grads)} == {k: v.shape for k, v in leaves(p)}
    for a, b in zip([x, *(v for _, v in leaves(p))], before):
        np.testing.assert_array_equal(a, b)


def test_glu_gate_is_the_first_half_of_gate_proj():
    """gate = y[..., :I] and up = y[..., I:] for y = BitLinear_gate(x), in that order."""
    rng = np.random.default_rng(4)
    x, p = rng.standard_normal((2, 3, 6)), random_glu_params(rng, 6, 5)
    _, cache = glu_forward(x, p)
    y, _ = bitlinear_forward(x, p["gate_proj"])
    np.testing.assert_array_equal(cache.gate, y[..., :5])
    np.testing.assert_array_equal(cache.up, y[..., 5:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_glu_gradients_match_finite_differences_of_the_ste_surrogate(seed):
    """Float64 central differences of sum(dout * GLU(x)) agree with glu_backward for x and every parameter."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 5))
    p = random_glu_params(rng, 5, 6)
    dout = rng.standard_normal((2, 3, 5))
    with ste_surrogate() as tape:
        out, cache = glu_forward(x, p)
        dx, grads = glu_backward(dout, cache)

        def f():
            tape.replay()
            return float(np.sum(glu_forward(x, p)[0] * dout))

        assert f() == pytest.approx(float(np.sum(out * dout)), rel=1e-12)
        assert_grad_close(dx, *numerical_grad(f, x), "dx")
        g = dict(leaves(grads))
        for name, param in leaves(p):
            assert_grad_close(g[name], *numerical_grad(f, param, max_entries=15), name)
