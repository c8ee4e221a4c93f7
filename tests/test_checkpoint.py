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
    os.replace = dying_replace            # the renames of fileio.install_directory
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


def _resealed(ckpt):
    """Rewrite manifest.json to match the files as they now are."""
    import json as _json
    from minimmf.checkpoint import _sha256
    manifest = {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
                for f in sorted(ckpt.iterdir()) if f.name != "manifest.json"}
    (ckpt / "manifest.json").write_text(_json.dumps(manifest))


@pytest.mark.parametrize("name, content, message", [
    ("config.json", b"[1, 2]", r"config.json holds a JSON list, expected a JSON object"),
    ("config.json", b"\xff\xfe{}", r"config.json is not UTF-8"),
    ("config.json", b'{"architecture": [1]}', r"config.json names architecture \[1\]; expected one of"),
    ("trainer.json", b"{not json", r"trainer.json is not valid JSON"),
    ("trainer.json", b'"a string"', r"trainer.json holds a JSON str"),
    ("manifest.json", b'{"config.json": 5}', r"manifest.json is malformed at 'config.json'"),
    ("manifest.json", b"[]", r"manifest.json holds a JSON list"),
])
def test_malformed_json_files_are_named_with_what_was_expected(tmp_path, name, content, message):
    """A JSON file of the wrong shape or encoding is a CheckpointError naming it and the expected form."""
    m = tiny_model(0)
    save_checkpoint(tmp_path, m, None, AdamW(), {"step": 1})
    ckpt = tmp_path / "checkpoint"
    (ckpt / name).write_bytes(content)
    if name != "manifest.json":
        _resealed(ckpt)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_a_safetensors_header_with_wrongly_typed_fields_is_named(tmp_path):
    """dtype/shape/data_offsets of the wrong type give a message naming the file, not a TypeError."""
    import json as _json
    import struct
    from minimmf.pretrained import read_safetensors
    f = tmp_path / "model.safetensors"
    header = _json.dumps({"w": {"dtype": "F32", "shape": "ab", "data_offsets": ["0", 4]}}).encode()
    f.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"model.safetensors .*fields of the wrong type"):
        read_safetensors(f)


def test_optimizer_moments_of_the_wrong_shape_are_refused_at_load(tmp_path):
    """Moments whose shapes differ from the parameters never reach the AdamW kernel (it would crash)."""
    from safetensors.numpy import save_file
    m, opt = trained_state()
    save_checkpoint(tmp_path, m, None, opt, {"step": 1})
    ckpt = tmp_path / "checkpoint"
    from minimmf.tree import leaves
    state = {f"m.{p}": a for p, a in leaves(opt.m)}
    state.update({f"v.{p}": a for p, a in leaves(opt.v)})
    state["m.norm"] = np.zeros(3, np.float32)
    save_file(state, str(ckpt / "optimizer.safetensors"))
    _resealed(ckpt)
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors: optimizer moment m norm has shape \(3,\)"):
        load_checkpoint(tmp_path)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC while writing is a CheckpointError saying so; the last checkpoint is intact, no temporaries."""
    import errno
    import pathlib
    m = tiny_model(0)
    save_checkpoint(tmp_path, m, None, None, {"step": 1})

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is kept"):
        save_checkpoint(tmp_path, tiny_model(1), None, None, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).trainer["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
