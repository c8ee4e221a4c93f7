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
