"""Shifted cross-entropy (SPEC §5): position t predicts labels[t + 1]; -100 and the last position are ignored."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minimmf
from gradcheck import assert_grad_close, numerical_grad
from minimmf.loss import cross_entropy_backward, cross_entropy_forward
from strategies import seeds


def loss_loop(logits, labels) -> float:
    """Independent shifted CE: a Python loop over positions, math.log / math.exp in float64."""
    B, T, V = logits.shape
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            row = [float(v) for v in logits[b, t]]
            m = max(row)
            lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
            total += lse - row[y]
            count += 1
    return total / count


@st.composite
def ce_cases(draw, dtype=np.float64):
    """(logits (B, T, V), labels (B, T)) with some labels set to -100 but at least one scored position."""
    rng = np.random.default_rng(draw(seeds()))
    B, T, V = draw(st.integers(1, 3)), draw(st.integers(2, 6)), draw(st.integers(2, 9))
    logits = (rng.standard_normal((B, T, V)) * draw(st.sampled_from([0.1, 3.0, 50.0]))).astype(dtype)
    labels = rng.integers(0, V, (B, T))
    labels[rng.random((B, T)) < draw(st.sampled_from([0.0, 0.3, 0.7]))] = -100
    labels[0, 1] = draw(st.integers(0, V - 1))                  # position 0 of row 0 is always scored
    return logits, labels


@given(ce_cases())
def test_cross_entropy_equals_an_independent_per_position_loop(case):
    """loss = mean over scored t of logsumexp(logits[t]) - logits[t, labels[t+1]]."""
    logits, labels = case
    loss, _ = cross_entropy_forward(logits, labels)
    assert isinstance(loss, float)
    assert loss == pytest.approx(loss_loop(logits, labels), rel=1e-12, abs=1e-12)


@given(ce_cases(np.float32))
def test_cross_entropy_of_float32_logits_is_accurate(case):
    """float32 logits (the model's dtype) give the float64 loss within float32 accuracy."""
    logits, labels = case
    loss, _ = cross_entropy_forward(logits, labels)
    assert loss == pytest.approx(loss_loop(logits, labels), rel=1e-5, abs=1e-5)


@given(ce_cases(), st.data())
def test_positions_with_label_minus_100_and_the_last_position_are_ignored(case, data):
    """Logits of unscored positions (labels[t+1] = -100, or t = T-1) change neither the loss nor the gradient."""
    logits, labels = case
    loss, cache = cross_entropy_forward(logits, labels)
    dlogits = cross_entropy_backward(cache)
    unscored = np.ones(labels.shape, bool)
    unscored[:, :-1] = labels[:, 1:] == -100
    assert unscored[:, -1].all()
    logits2 = logits.copy()
    logits2[unscored] += np.random.default_rng(data.draw(seeds())).standard_normal(logits2[unscored].shape) * 5
    loss2, cache2 = cross_entropy_forward(logits2, labels)
    assert loss2 == loss
    np.testing.assert_array_equal(dlogits[unscored], 0.0)
    np.testing.assert_array_equal(cross_entropy_backward(cache2), dlogits)


def test_the_first_label_is_never_a_target():
    """labels[:, 0] is not predicted by anything: changing it (even to -100) leaves the loss unchanged."""
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((2, 4, 5)), rng.integers(0, 5, (2, 4))
    loss, _ = cross_entropy_forward(logits, labels)
    labels2 = labels.copy()
    labels2[:, 0] = [(labels[0, 0] + 1) % 5, -100]
    assert cross_entropy_forward(logits, labels2)[0] == loss


@pytest.mark.parametrize("labels", [np.full((2, 5), -100), np.array([[3], [4]]),
                                    np.array([[1, -100, -100], [2, -100, -100]])])
def test_all_ignored_labels_raise_a_clear_value_error(labels):
    """No scored position (all -100, T = 1, or every target -100) is a ValueError saying nothing is scored."""
    logits = np.zeros((*labels.shape, 6))
    with pytest.raises(ValueError, match="nothing to score"):
        cross_entropy_forward(logits, labels)


def test_cross_entropy_does_not_mutate_its_inputs():
    """Forward never mutates logits or labels; backward never mutates the cache."""
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((2, 4, 5)), rng.integers(0, 5, (2, 4))
    labels[1, 2] = -100
    l0, y0 = logits.copy(), labels.copy()
    _, cache = cross_entropy_forward(logits, labels)
    p0, t0 = cache.probs.copy(), cache.target.copy()
    cross_entropy_backward(cache)
    for a, b in [(logits, l0), (labels, y0), (cache.probs, p0), (cache.target, t0)]:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_gradient_matches_finite_differences(seed):
    """Float64 central differences of the loss agree with (softmax - onehot) / count at scored positions."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((2, 5, 7)) * 2.0
    labels = rng.integers(0, 7, (2, 5))
    labels[0, 2] = labels[1, 4] = -100
    _, cache = cross_entropy_forward(logits, labels)
    dlogits = cross_entropy_backward(cache)
    assert dlogits.shape == logits.shape and cache.count == 6
    assert_grad_close(dlogits, *numerical_grad(lambda: cross_entropy_forward(logits, labels)[0], logits), "dlogits")


def test_cross_entropy_reproduces_the_golden_loss(golden):
    """The reference's logits and labels give its loss (6.01339) within 1e-5 relative."""
    loss, _ = cross_entropy_forward(golden["logits"], golden["labels"])
    assert loss == pytest.approx(float(golden["loss"]), rel=1e-5)


@pytest.mark.jit
def test_a_freshly_initialized_model_starts_near_log_v():
    """With the reference init, logits are near-uniform: the first loss is within 0.5 nats of log V = log 256."""
    config = minimmf.MMfreeConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2)
    model = minimmf.MMfreeLM.init(config, seed=0)
    ids = np.random.default_rng(0).integers(0, 256, (2, 16))
    loss = model.loss(ids, ids)
    assert abs(loss - math.log(256)) < 0.5, loss
