"""Released names in and out: from_reference / to_reference, and their error messages."""
import numpy as np
import pytest

import minimmf
from minimmf.interop import key_table


def test_to_reference_round_trips_the_golden_state_dict(golden, golden_model):
    """to_reference(from_reference(sd)) gives back exactly the released keys, shapes and values."""
    out = minimmf.to_reference(golden_model)
    assert list(out) == [k for k, _ in golden.meta["state_dict_keys"]]       # same keys, same order
    for key, arr in golden.state_dict.items():
        assert out[key].shape == arr.shape
        np.testing.assert_array_equal(out[key], arr)


def test_key_table_covers_the_released_state_dict_keys(golden):
    """The name table produces exactly the 35 keys of the released checkpoint, in its shapes."""
    cfg = minimmf.MMfreeConfig.from_reference(golden.config)
    assert set(key_table(cfg).values()) == {k for k, _ in golden.meta["state_dict_keys"]}


def test_from_reference_copies_and_does_not_alias_the_state_dict(golden):
    """Changing the model's parameters never changes the caller's arrays."""
    sd = {k: v.copy() for k, v in golden.state_dict.items()}
    model = minimmf.from_reference(golden.config, sd)
    model.params["norm"] += 1
    np.testing.assert_array_equal(sd["model.norm.weight"], golden.state_dict["model.norm.weight"])


def test_from_reference_accepts_half_precision_weights(golden):
    """float16 weights load and are computed in float32."""
    sd = {k: v.astype(np.float16) for k, v in golden.state_dict.items()}
    model = minimmf.from_reference(golden.config, sd)
    assert model.dtype == np.float32
    assert model.forward(golden["input_ids"]).shape == golden["logits"].shape


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.pop("model.layers.1.attn.f_proj.weight"), "missing"),
    (lambda sd: sd.__setitem__("model.layers.2.attn_norm.weight", np.ones(64, np.float32)), "does not use"),
    (lambda sd: sd.__setitem__("lm_head.weight", np.zeros((255, 64), np.float32)), "lm_head.weight"),
    (lambda sd: sd.__setitem__("model.norm.weight", np.full(64, np.nan, np.float32)), "NaN"),
    (lambda sd: sd.__setitem__("model.norm.weight", np.ones(64, np.int32)), "dtype"),
])
def test_from_reference_names_the_bad_tensor(golden, mutate, message):
    """Missing, extra, mis-shaped, non-finite or integer tensors raise ValueError naming the problem."""
    sd = dict(golden.state_dict)
    mutate(sd)
    with pytest.raises(ValueError, match=message):
        minimmf.from_reference(golden.config, sd)


@pytest.mark.parametrize("field, value, message", [
    ("use_short_conv", True, "use_short_conv"),
    ("expand_ratio", 2, "expand_ratio"),
    ("tie_word_embeddings", True, "tie_word_embeddings"),
    ("model_type", "llama", "hgrn_bit"),
    ("num_heads", 3, "divisible"),
    ("hidden_size", 0, "hidden_size"),
])
def test_unsupported_config_options_are_rejected_clearly(golden, field, value, message):
    """Options no released checkpoint uses raise ConfigError naming the field."""
    cfg = dict(golden.config, **{field: value})
    with pytest.raises(minimmf.ConfigError, match=message):
        minimmf.from_reference(cfg, golden.state_dict)


def test_config_that_contradicts_the_state_dict_is_rejected(golden):
    """A config with a different vocabulary than the tensors gives an error naming the tensor."""
    cfg = dict(golden.config, vocab_size=300)
    with pytest.raises(ValueError, match="embeddings"):
        minimmf.from_reference(cfg, golden.state_dict)


def test_to_reference_maps_a_gradient_tree(golden, golden_model):
    """A gradient tree comes out under the released key names in the released shapes."""
    _, grads = golden_model.loss_and_grads(golden["input_ids"], golden["labels"])
    out = minimmf.to_reference(golden_model, grads)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in golden.state_dict.items()}
    with pytest.raises(ValueError, match="shape of the model"):
        minimmf.to_reference(golden_model, {"embeddings": grads["embeddings"]})


def test_config_round_trips_through_the_released_format(golden):
    """MMfreeConfig.to_reference() reads back to the same configuration."""
    cfg = minimmf.MMfreeConfig.from_reference(golden.config)
    assert minimmf.MMfreeConfig.from_reference(cfg.to_reference()) == cfg
    assert cfg.I == 256 and cfg.rms_norm_eps == 1e-6
