"""Tests for minimmf/validate.py: bad input is named at the public entry points, before any kernel sees it."""
import numpy as np
import pytest

from minimmf import validate


def test_token_ids_outside_the_vocabulary_are_named():
    """Token ids must be integers in [0, vocab_size); the message names the argument."""
    assert validate.token_ids(np.array([[0, 4]]), 5).shape == (1, 2)
    with pytest.raises(ValueError, match="input_ids"):
        validate.token_ids(np.array([[0, 5]]), 5)
    with pytest.raises(ValueError, match="input_ids"):
        validate.token_ids(np.array([[0.5, 1.0]]), 5)


def test_finite_tree_names_the_first_non_finite_array():
    """A NaN anywhere in a parameter tree is reported with its path and how many values are bad."""
    tree = {"layers": [{"w": np.ones(3, np.float32)}, {"w": np.array([1.0, np.nan, np.inf], np.float32)}]}
    with pytest.raises(ValueError, match=r"layers.*1.*w.* 2 NaN or inf"):
        validate.finite_tree(tree)
    validate.finite_tree({"layers": [{"w": np.ones(3, np.float32)}]})          # a finite tree passes


def test_finite_logits_pass_through_and_nan_logits_are_refused():
    """A step's finite logits are returned as they are; non-finite ones raise (naming a NaN parameter if any)."""
    params = {"w": np.array([1.0, np.nan])}
    logits = np.zeros((1, 4), np.float32)
    assert validate.finite_logits(params, logits, "state")[1] == "state"
    with pytest.raises(ValueError, match="w"):
        validate.finite_logits(params, np.full((1, 4), np.nan, np.float32), None)
