"""Checkpoints: exact round trip, atomic writes (even when the writer dies midway), clear errors."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minimmf
from minimmf.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minimmf.optim import AdamW
from minimmf.tree import leaves


def tiny_model(seed=0):
    cfg = minimmf.MMfreeConfig(vocab_size=13, hidden_size=8, num_hidden_layers=2, intermediate_size=8)
    return minimmf.MMfreeLM.init(cfg, seed=seed)


def trained_state(seed=0):
    model = tiny_model(seed)
    opt = AdamW(lr=1e-2)
    ids = np.random.default_rng(seed).integers(0, 13, (2, 6))
    for _ in range(3):
        _, g = model.loss_and_grads(ids, ids)
        opt.step(model.params, g)
    return model, opt


def assert_same_tree(a, b):
    la, lb = dict(leaves(a)), dict(leaves(b))
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)


def test_checkpoint_round_trips_parameters_and_optimizer_exactly(tmp_path):
    """Parameters, AdamW moments and step count come back bit for bit."""
    model, opt = trained_state()
    save_checkpoint(tmp_path, model, optimizer=opt, trainer={"step": 3})
    ck = load_checkpoint(tmp_path)
    assert ck.model.config == model.config and ck.trainer["step"] == 3
    assert_same_tree(ck.model.params, model.params)
    assert_same_tree(ck.optimizer.m, opt.m)
    assert_same_tree(ck.optimizer.v, opt.v)
    assert ck.optimizer.t == opt.t == 3


def test_checkpoint_model_part_is_in_the_released_layout(tmp_path):
    """config.json and model.safetensors use the released keys, so from_reference reads them."""
    from safetensors.numpy import load_file
    model, _ = trained_state()
    path = save_checkpoint(tmp_path, model)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "hgrn_bit"
    sd = load_file(str(path / "model.safetensors"))
    assert "model.layers.1.attn.f_proj.norm.weight" in sd
    assert_same_tree(minimmf.from_reference(cfg, sd).params, model.params)


def test_saving_again_replaces_the_checkpoint_and_leaves_no_temporaries(tmp_path):
    """A second save replaces the first; no hidden temporary or moved-aside directory remains."""
    save_checkpoint(tmp_path, tiny_model(0))
    m1 = tiny_model(1)
    save_checkpoint(tmp_path, m1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert_same_tree(load_checkpoint(tmp_path).model.params, m1.params)


KILL_SCRIPT = """
import os, sys, numpy as np, minimmf, minimmf.checkpoint as ck
cfg = minimmf.MMfreeConfig(vocab_size=13, hidden_size=8, num_hidden_layers=2, intermediate_size=8)
model = minimmf.MMfreeLM.init(cfg, seed=1)
where = sys.argv[2]
if where == "while-writing":
    real = ck.save_file
    def dying_save(tensors, path):
        real(tensors, path)
        with open(path, "r+b") as f:      # leave a half-written file behind, then die
            f.truncate(os.path.getsize(path) // 2)
        os._exit(9)
    ck.save_file = dying_save
elif where == "between-renames":
    real_replace = os.replace
    calls = []
    def dying_replace(a, b):
        real_replace(a, b)
        calls.append(b)
        if len(calls) == 1:               # old checkpoint moved aside, new one not yet in place
            os._exit(9)
    ck.os.replace = dying_replace
ck.save_checkpoint(sys.argv[1], model)
"""


@pytest.mark.parametrize("where", ["while-writing", "between-renames"])
def test_a_save_killed_midway_leaves_the_previous_checkpoint_intact(tmp_path, where):
    """If the writing process dies at any point, loading gives the previous complete checkpoint."""
    old = tiny_model(0)
    save_checkpoint(tmp_path, old)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(tmp_path), where])
    assert r.returncode == 9                                     # it really died midway
    assert_same_tree(load_checkpoint(tmp_path).model.params, old.params)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".checkpoint.tmp")) \
        == ["checkpoint"]


def test_truncated_checkpoint_file_is_reported(tmp_path):
    """A truncated model.safetensors gives a CheckpointError naming the file."""
    path = save_checkpoint(tmp_path, tiny_model())
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        load_checkpoint(tmp_path)


def test_corrupted_checkpoint_file_is_reported(tmp_path):
    """One flipped byte is caught by the manifest's sha256."""
    path = save_checkpoint(tmp_path, tiny_model())
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path)


def test_checkpoint_with_a_mismatched_config_is_reported(tmp_path):
    """A config.json that contradicts the tensors is refused, naming the tensor."""
    path = save_checkpoint(tmp_path, tiny_model())
    (path / "manifest.json").unlink()                            # hand-edited: no manifest
    cfg = json.loads((path / "config.json").read_text())
    cfg["hidden_size"] = 16
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_gives_a_helpful_error(tmp_path):
    """Pointing at an empty directory says what was expected."""
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)
