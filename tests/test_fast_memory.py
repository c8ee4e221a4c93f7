"""Tests for minimmf/fast/memory.py: the training process's setup changes no number."""
import gc

import numpy as np

from minimmf.config import MMfreeConfig
from minimmf.fast.memory import prepare_process
from minimmf.model import MMfreeLM


def test_prepare_process_freezes_the_live_objects_and_changes_no_gradient():
    """After prepare_process the long-lived objects are frozen out of the collector, and a training step gives
    the same bits as before it."""
    model = MMfreeLM.init(MMfreeConfig(vocab_size=11, hidden_size=8, num_hidden_layers=2, intermediate_size=16), seed=0)
    ids = np.random.default_rng(0).integers(0, 11, (3, 9))
    loss0, g0 = model.loss_and_grads(ids, ids)
    try:
        assert prepare_process() in (True, False)           # False where the C library has no mallopt
        assert gc.get_freeze_count() > 0
        loss1, g1 = model.loss_and_grads(ids, ids)
    finally:
        gc.unfreeze()
    assert loss1 == loss0
    for a, b in zip(g0["layers"], g1["layers"]):
        np.testing.assert_array_equal(a["mlp"]["gate_proj"]["W"], b["mlp"]["gate_proj"]["W"])
