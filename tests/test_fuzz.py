"""Hostile input as a specification, checked by property-based fuzzing (hypothesis).

    (a) any corruption of a valid checkpoint directory either loads the same model or raises
        CheckpointError naming a file of the checkpoint: never another exception type;
    (b) any byte string as a training corpus either trains or gives a clear ValueError naming it;
    (d) training interrupted at any point (SIGINT, or SIGKILL: anywhere, also in the middle of a
        checkpoint save) and resumed ends with the same weights and metrics as an uninterrupted run.

CI runs a few examples of each (seconds). The longer run, by hand:

    HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_fuzz.py

(300 examples for (a) and (b), 20 for (d); several minutes.) CI runs (d) on one fixed case, a SIGKILL
between the two renames of the third checkpoint save, plus one drawn one.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import minimmf
from minimmf.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minimmf.demo import own_source_bytes
from minimmf.optim import AdamW
from minimmf.train import TrainConfig, train
from minimmf.tree import leaves

from strategies import checkpoint_corruptions, corpus_bytes

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
FAST = settings(max_examples=300 if THOROUGH else 25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(max_examples=300 if THOROUGH else 6, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def same_tree(a, b) -> bool:
    la, lb = list(leaves(a)), list(leaves(b))
    return [k for k, _ in la] == [k for k, _ in lb] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(la, lb))


# ----------------------------------------------------------------------------- (a) checkpoints

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    from minimmf.tokenizer import train_char
    root = tmp_path_factory.mktemp("good")
    cfg = minimmf.MMfreeConfig(vocab_size=12, hidden_size=8, num_hidden_layers=1, intermediate_size=8)
    model = minimmf.MMfreeLM.init(cfg, seed=0)
    opt = AdamW()
    ids = np.array([[1, 2, 3, 4]])
    opt.step(model.params, model.loss_and_grads(ids, ids)[1])
    save_checkpoint(root, model, train_char("abcdefghijk"), opt, {"step": 1})
    return root / "checkpoint", model, opt


def corrupt(ckpt: Path, kind: str, name: str, arg) -> None:
    f = ckpt / name
    if kind == "extra":
        f.write_bytes(arg)
    elif kind == "delete":
        f.unlink()
    elif kind == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[:int(arg * len(data))])
    elif kind == "flip":
        data = bytearray(f.read_bytes())
        pos, bit = arg
        data[int(pos * len(data))] ^= 1 << bit
        f.write_bytes(bytes(data))
    else:                                                       # json_field: a top-level field, wrongly typed
        index, value = arg
        obj = json.loads(f.read_text())
        key = sorted(obj)[index % len(obj)]
        obj[key] = value
        f.write_text(json.dumps(obj))


def reseal(ckpt: Path) -> None:
    """Rewrite manifest.json to match the files as they now are (a corruption the manifest cannot see)."""
    from minimmf.checkpoint import _sha256
    manifest = {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
                for f in sorted(ckpt.iterdir()) if f.name != "manifest.json" and f.is_file()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def assert_loads_same_or_names_a_file(ckpt: Path, model, opt, same: bool) -> None:
    try:
        ck = load_checkpoint(ckpt)
    except CheckpointError as e:
        assert str(ckpt) in str(e), f"the error does not name the checkpoint's file: {e}"
        return
    if same:
        assert same_tree(ck.model.params, model.params)
        if ck.optimizer is not None:
            assert same_tree(ck.optimizer.m, opt.m) and same_tree(ck.optimizer.v, opt.v)


@FAST
@given(corruption=checkpoint_corruptions())
def test_a_corrupted_checkpoint_loads_the_same_model_or_names_the_file(good_checkpoint, tmp_path_factory,
                                                                      corruption):
    """Truncation, flipped bytes, deleted or extra files, wrongly typed JSON fields: the same model, or
    a CheckpointError naming the file (never another exception, a crash or a hang)."""
    src, model, opt = good_checkpoint
    ckpt = tmp_path_factory.mktemp("c") / "checkpoint"
    shutil.copytree(src, ckpt)
    corrupt(ckpt, *corruption)
    assert_loads_same_or_names_a_file(ckpt, model, opt, same=True)


@FAST
@given(corruption=checkpoint_corruptions())
def test_a_corruption_the_manifest_cannot_see_still_never_escapes_as_another_error(good_checkpoint,
                                                                                  tmp_path_factory, corruption):
    """With the manifest rewritten to match the corrupted files, every parser behind it (safetensors
    headers, config.json, trainer.json, optimizer moments) still answers with a CheckpointError or loads."""
    src, model, opt = good_checkpoint
    ckpt = tmp_path_factory.mktemp("r") / "checkpoint"
    shutil.copytree(src, ckpt)
    corrupt(ckpt, *corruption)
    if (ckpt / "manifest.json").exists() and corruption[1] != "manifest.json":
        reseal(ckpt)
    assert_loads_same_or_names_a_file(ckpt, model, opt, same=False)


# ----------------------------------------------------------------------------- (b) corpora

TINY = TrainConfig(hidden_size=8, num_hidden_layers=1, intermediate_size=8, tokenizer="char", seq_len=8,
                   batch_size=2, steps=2, eval_every=2, eval_windows=1, warmup_steps=1, minutes=None, threads=1)


@SLOW
@given(data=corpus_bytes(), tokenizer=st.sampled_from(["char", "bpe"]))
def test_any_byte_string_as_a_corpus_trains_or_gives_a_clear_error(tmp_path_factory, data, tokenizer):
    """A corpus of any bytes either trains or raises a ValueError naming the file or the corpus."""
    d = tmp_path_factory.mktemp("b")
    path = d / "corpus.bin"
    path.write_bytes(data)
    cfg = TrainConfig(**{**TINY.__dict__, "tokenizer": tokenizer, "vocab_size": 257 + 3})
    try:
        r = train(cfg, d / "run", data=path, progress=False, log=lambda *a: None)
    except ValueError as e:
        assert str(path) in str(e) or "corpus" in str(e) or "vocab" in str(e), e
        return
    assert r.step == 2 and np.isfinite(r.val_loss)


# ----------------------------------------------------------------------------- (d) interruptions

CLI = ["train", "--tokenizer", "char", "--hidden-size", "8", "--layers", "1", "--seq-len", "8",
       "--batch-size", "2", "--steps", "24", "--eval-every", "4", "--seed", "5", "--threads", "1",
       "--no-progress", "--sample-tokens", "0"]

# The subprocess kills itself with SIGKILL at a chosen checkpoint save, at a chosen moment of it.
KILLER = """
import os, signal, sys
from minimmf import fileio
at, where = int(os.environ["KILL_AT_SAVE"]), os.environ["KILL_WHERE"]
real_install, real_replace, count = fileio.install_directory, fileio.os.replace, [0]
def install(tmp, target, prefix):
    count[0] += 1
    if count[0] == at and where == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    if count[0] == at and where == "between":
        calls = [0]
        def replace(a, b):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(a, b)
        fileio.os.replace = replace
    return real_install(tmp, target, prefix)
fileio.install_directory = install
import minimmf.checkpoint as c; c.install_directory = install
from minimmf.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def metrics_of(run: Path):
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def fuzz_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "text.txt"
    path.write_bytes(own_source_bytes().tobytes()[:8000])
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fuzz_corpus):
    run = tmp_path_factory.mktemp("full") / "run"
    subprocess.run([sys.executable, "-m", "minimmf"] + CLI + ["--data", str(fuzz_corpus), "--out", str(run)],
                   check=True, capture_output=True, timeout=300)
    return run


@settings(max_examples=20 if THOROUGH else 1, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(how="kill-in-save", when=0.0, save=3, where="between")      # the narrowest window, always tried
@given(how=st.sampled_from(["SIGINT", "SIGKILL", "kill-in-save"]), when=st.floats(0.0, 1.0),
       save=st.integers(1, 6), where=st.sampled_from(["before", "between"]))
def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path_factory, fuzz_corpus,
                                                                     uninterrupted, how, when, save, where):
    """Ctrl-C, kill -9 at any moment, or kill -9 inside a checkpoint save, then `--resume`: the same
    weights and the same metrics.jsonl as the run that was never interrupted."""
    run = tmp_path_factory.mktemp("cut") / "run"
    argv = CLI + ["--data", str(fuzz_corpus), "--out", str(run)]
    env = {**os.environ, "KILL_AT_SAVE": str(save), "KILL_WHERE": where}
    if how == "kill-in-save":
        subprocess.run([sys.executable, "-c", KILLER] + argv, env=env, capture_output=True, timeout=300)
    else:
        proc = subprocess.Popen([sys.executable, "-m", "minimmf"] + argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not (run / "checkpoint").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(when * 0.5)
        proc.send_signal(signal.SIGINT if how == "SIGINT" else signal.SIGKILL)
        proc.communicate(timeout=120)
    if not (run / "checkpoint").exists() and not list(run.glob(".checkpoint.old-*")):
        r = subprocess.run([sys.executable, "-m", "minimmf"] + argv + ["--overwrite"], capture_output=True,
                           text=True, timeout=300)                 # killed before its first checkpoint
    else:
        r = subprocess.run([sys.executable, "-m", "minimmf", "train", "--resume", "--out", str(run),
                            "--no-progress", "--sample-tokens", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert same_tree(load_checkpoint(run).model.params, load_checkpoint(uninterrupted).model.params)
    assert metrics_of(run) == metrics_of(uninterrupted)
