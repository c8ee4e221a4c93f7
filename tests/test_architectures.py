"""Tests for minimmf/architectures.py: each architecture builds, saves and loads itself through one registry."""
import numpy as np
import pytest

from minimmf.architectures import ARCHITECTURES, architecture_of, architecture_of_config


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_saved_model_loads_back_with_the_same_logits(name):
    """build -> to_saved -> from_saved gives a model of the same architecture and the same logits."""
    arch = ARCHITECTURES[name]
    model = arch.build(40, 16, 2, 32, 0)
    assert architecture_of(model) is arch
    config, state = arch.to_saved(model)
    again = architecture_of_config(config).from_saved(config, state)
    assert architecture_of(again) is arch
    ids = np.random.default_rng(0).integers(0, 40, (2, 7))
    np.testing.assert_array_equal(again.forward(ids), model.forward(ids))


def test_a_released_config_without_an_architecture_field_is_an_mmfree_model():
    """The released checkpoints' config.json has no "architecture" field: it describes an MMfreeLM."""
    assert architecture_of_config({"model_type": "hgrn_bit"}).name == "mmfree"


@pytest.mark.parametrize("bad", ["gpt", 3, None])
def test_an_unknown_architecture_is_named_with_the_choices(bad):
    """A config naming no known architecture is refused with the value and the known names."""
    with pytest.raises(ValueError, match="expected one of"):
        architecture_of_config({"architecture": bad})
