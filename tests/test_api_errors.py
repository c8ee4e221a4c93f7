"""Bad input at the public entry points: one clear ValueError naming the argument."""
import numpy as np
import pytest

import minimmf


@pytest.fixture(scope="module")
def model():
    cfg = minimmf.MMfreeConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2, intermediate_size=8)
    return minimmf.MMfreeLM.init(cfg, seed=0)


@pytest.mark.parametrize("ids, message", [
    (np.array([[1, 2, 10]]), r"token id 10, outside the vocabulary \[0, 10\)"),
    (np.array([[1, -1]]), "token id -1"),
    (np.array([1, 2, 3]), r"shape \(B, T\)"),
    (np.zeros((1, 0), np.int64), "empty"),
    (np.array([[1.0, 2.0]]), "integer"),
    (np.array([[True, False]]), "integer"),
])
def test_forward_rejects_bad_input_ids(model, ids, message):
    """Out-of-range, wrongly shaped, empty or non-integer ids are refused with the reason."""
    with pytest.raises(ValueError, match=message):
        model.forward(ids)


def test_loss_rejects_bad_labels(model):
    """Labels must match input_ids in shape and be in [0, V) or -100."""
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="shape of input_ids"):
        model.loss_and_grads(ids, ids[:, :2])
    with pytest.raises(ValueError, match="-100"):
        model.loss_and_grads(ids, np.array([[1, 2, 11]]))
    with pytest.raises(ValueError, match="nothing to score"):
        model.loss_and_grads(np.array([[4]]), np.array([[4]]))


def test_step_rejects_a_state_of_the_wrong_batch(model):
    """A state built for another batch size is refused, saying how to make the right one."""
    with pytest.raises(ValueError, match=r"init_state\(2\)"):
        model.step(np.array([1, 2]), model.init_state(1))
    with pytest.raises(ValueError, match="State"):
        model.step(np.array([1]), [np.zeros((1, 8))])
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(0)


def test_parameters_with_nan_are_refused(model):
    """A model cannot be built from parameters holding NaN or inf."""
    params = {**model.params, "norm": np.full(8, np.inf, np.float32)}
    with pytest.raises(ValueError, match="norm.*NaN or inf"):
        minimmf.MMfreeLM(model.config, params)


def test_packed_model_refuses_training(model):
    """A packed model is inference-only and says so."""
    with pytest.raises(TypeError, match="inference only"):
        model.pack().loss_and_grads(np.array([[1, 2]]), np.array([[1, 2]]))


@pytest.mark.parametrize("entry", ["forward", "prefill", "loss", "loss_and_grads", "step", "packed step",
                                   "packed prefill"])
def test_a_parameter_set_to_nan_after_construction_is_named_by_every_entry_point(model, entry):
    """A NaN written into a parameter after the model was built is refused by name, never returned as NaN."""
    m = minimmf.MMfreeLM(model.config, {k: v for k, v in
                                        minimmf.MMfreeLM.init(model.config, seed=1).params.items()})
    if entry.startswith("packed"):
        m = m.pack()
    m.params["norm"][3] = np.nan
    ids = np.array([[1, 2, 3]])
    calls = {"forward": lambda: m.forward(ids), "prefill": lambda: m.prefill(ids),
             "loss": lambda: m.loss(ids, ids), "loss_and_grads": lambda: m.loss_and_grads(ids, ids),
             "step": lambda: m.step(np.array([1]), m.init_state(1)),
             "packed step": lambda: m.step(np.array([1]), m.init_state(1)),
             "packed prefill": lambda: m.prefill(ids)}
    with pytest.raises(ValueError, match=r"parameter norm contains 1 NaN or inf"):
        calls[entry]()


def test_the_transformer_baseline_names_a_nan_parameter_too():
    """The Transformer++ baseline shares the entry points, and the check."""
    from minimmf.baseline import TransformerConfig, TransformerPP
    m = TransformerPP.init(TransformerConfig.for_width(10, 8, 1, 16), seed=0)
    m.params["norm"][0] = np.inf
    with pytest.raises(ValueError, match="parameter norm contains"):
        m.forward(np.array([[1, 2]]))


def test_adamw_refuses_moments_of_the_wrong_shape_before_any_kernel_runs(model):
    """A moment whose shape or dtype differs from its parameter is named (a kernel would read out of bounds)."""
    from minimmf.optim import AdamW
    m = minimmf.MMfreeLM.init(model.config, seed=0)
    _, grads = m.loss_and_grads(np.array([[1, 2, 3]]), np.array([[1, 2, 3]]))
    opt = AdamW()
    opt.step(m.params, grads)
    opt.m["layers"][0]["attn"]["f_proj"]["W"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"moment m layers\.0\.attn\.f_proj\.W has shape \(2, 2\)"):
        opt.step(m.params, grads)
    opt.m["layers"][0]["attn"]["f_proj"]["W"] = np.zeros((8, 8), np.float64)
    with pytest.raises(ValueError, match="dtype float64"):
        opt.step(m.params, grads)
    opt.m["layers"][0]["attn"]["f_proj"]["W"] = np.zeros((8, 8), np.float32)
    del opt.v["norm"]
    with pytest.raises(ValueError, match=r"moment v does not match the parameter tree: missing \['norm'\]"):
        opt.step(m.params, grads)


def test_one_nan_gradient_leaves_parameters_and_moments_untouched(model):
    """AdamW refuses a non-finite gradient by name before changing anything (it would poison every moment)."""
    from minimmf.optim import AdamW
    m = minimmf.MMfreeLM.init(model.config, seed=0)
    _, grads = m.loss_and_grads(np.array([[1, 2, 3]]), np.array([[1, 2, 3]]))
    opt = AdamW()
    opt.step(m.params, grads)
    before = [a.copy() for a in (m.params["norm"], opt.m["norm"], opt.v["norm"])]
    grads["lm_head"]["W"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"gradient lm_head\.W contains NaN or inf"):
        opt.step(m.params, grads)
    assert opt.t == 1
    for a, b in zip(before, (m.params["norm"], opt.m["norm"], opt.v["norm"])):
        np.testing.assert_array_equal(a, b)
