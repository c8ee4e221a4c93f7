"""Transformer++ through minimmf's own trainer and checkpoints: the same loop, data and optimizer as
MMfreeLM, a checkpoint that loads back exactly, and a bit-identical resume."""
import json

import numpy as np
import pytest

from minimmf.baseline import TransformerPP
from minimmf.checkpoint import load_checkpoint
from minimmf.demo import own_source_bytes
from minimmf.model import MMfreeLM
from minimmf.train import TrainConfig, train
from minimmf.tree import leaves

SMALL = TrainConfig(architecture="transformer++", hidden_size=16, num_hidden_layers=2, intermediate_size=32,
                    tokenizer="char", seq_len=16, batch_size=4, lr=3e-3, halve_lr_midway=False, warmup_steps=3,
                    steps=8, minutes=None, eval_every=4, eval_windows=4, seed=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_bytes(own_source_bytes().tobytes()[:40_000])
    return path


def quiet(*a):
    pass


def test_trainer_builds_the_architecture_it_is_told():
    """architecture="transformer++" builds a TransformerPP; the default stays MMfreeLM."""
    assert TrainConfig().architecture == "mmfree"
    assert isinstance(TrainConfig(hidden_size=16, num_hidden_layers=1).build_model(10), MMfreeLM)
    assert isinstance(TrainConfig(architecture="transformer++", hidden_size=64, num_hidden_layers=1)
                      .build_model(10), TransformerPP)
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig(architecture="lstm")


def test_transformer_checkpoint_loads_back_exactly(tmp_path, corpus):
    """config.json says "transformer++"; the parameters come back bit for bit under minimmf's tree paths."""
    r = train(SMALL, tmp_path, data=corpus, progress=False, log=quiet)
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["architecture"] == "transformer++"
    ck = load_checkpoint(tmp_path)
    assert isinstance(ck.model, TransformerPP)
    assert ck.model.loss(np.array([[1, 2, 3, 4]]), np.array([[1, 2, 3, 4]])) > 0
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["val_loss"] == r.val_loss and recs[-1]["ternary_zero_fraction"] is None


def test_interrupted_and_resumed_transformer_run_is_bit_identical(tmp_path, corpus):
    """Stopping at step 3 and resuming to step 8 gives exactly the uninterrupted run's parameters."""
    train(SMALL, tmp_path / "full", data=corpus, progress=False, log=quiet)
    train(SMALL, tmp_path / "cut", data=corpus, progress=False, log=quiet, stop_after=3)
    train(SMALL, tmp_path / "cut", data=corpus, resume=True, progress=False, log=quiet)
    full, cut = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    for (ka, a), (kb, b) in zip(leaves(full.model.params), leaves(cut.model.params)):
        assert ka == kb
        np.testing.assert_array_equal(a, b, err_msg=ka)
