"""Training: metrics and files written, bit-identical resume (also after a real Ctrl-C), the
learning-rate recipe, and clear errors before any work is wasted."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from minimmf.checkpoint import load_checkpoint
from minimmf.demo import own_source_bytes
from minimmf.train import TrainConfig, learning_rate, train
from minimmf.tree import leaves

SMALL = TrainConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, tokenizer="char",
                    seq_len=16, batch_size=4, lr=3e-3, warmup_steps=3, steps=8, minutes=None,
                    eval_every=4, eval_windows=4, seed=1, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_bytes(own_source_bytes().tobytes()[:40_000])
    return path


def same_metrics(run):
    """metrics.jsonl without the wall-clock field (the only one that may differ between equal runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def assert_same_params(a, b):
    for (ka, va), (kb, vb) in zip(leaves(a), leaves(b)):
        assert ka == kb
        np.testing.assert_array_equal(va, vb, err_msg=ka)


def test_training_writes_metrics_checkpoint_and_plot(tmp_path, corpus):
    """Each evaluation appends a JSON line with the documented fields; checkpoint and plot exist."""
    r = train(SMALL, tmp_path, data=corpus, progress=False, log=lambda *a: None)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [4, 8]
    for x in recs:
        assert {"step", "tokens", "seconds", "train_loss", "val_loss", "val_bpc"} <= set(x)
        assert x["tokens"] == x["step"] * SMALL.batch_size * SMALL.seq_len
    assert recs[1]["seconds"] >= recs[0]["seconds"] > 0
    assert r.val_loss == recs[-1]["val_loss"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert load_checkpoint(tmp_path).trainer["step"] == 8


def test_bits_per_character_is_nats_per_token_converted(tmp_path, corpus):
    """val_bpc = val_loss / ln 2 / (characters per validation token); for characters that is val_loss / ln 2."""
    r = train(SMALL, tmp_path, data=corpus, progress=False, log=lambda *a: None)
    assert r.val_bpc == pytest.approx(r.val_loss / math.log(2), rel=1e-12)


def test_same_seed_gives_a_bit_identical_run(tmp_path, corpus):
    """Two runs with the same settings end with exactly the same parameters."""
    train(SMALL, tmp_path / "a", data=corpus, progress=False, log=lambda *a: None)
    train(SMALL, tmp_path / "b", data=corpus, progress=False, log=lambda *a: None)
    assert_same_params(load_checkpoint(tmp_path / "a").model.params,
                       load_checkpoint(tmp_path / "b").model.params)


@pytest.mark.parametrize("stop", [3, 4])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, corpus, stop):
    """Stopping at a step (between or at an evaluation) and resuming gives exactly the uninterrupted
    run's parameters, optimizer moments and metrics."""
    train(SMALL, tmp_path / "full", data=corpus, progress=False, log=lambda *a: None)
    train(SMALL, tmp_path / "cut", data=corpus, progress=False, log=lambda *a: None, stop_after=stop)
    assert load_checkpoint(tmp_path / "cut").trainer["step"] == stop
    train(None, tmp_path / "cut", resume=True, progress=False, log=lambda *a: None)
    assert same_metrics(tmp_path / "cut") == same_metrics(tmp_path / "full")
    full, cut = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert cut.trainer["step"] == 8
    assert_same_params(full.model.params, cut.model.params)
    assert_same_params(full.optimizer.m, cut.optimizer.m)
    assert_same_params(full.optimizer.v, cut.optimizer.v)


CLI = [sys.executable, "-m", "minimmf", "train", "--tokenizer", "char", "--hidden-size", "16",
       "--layers", "1", "--seq-len", "16", "--batch-size", "4", "--eval-every", "5",
       "--steps", "400", "--seed", "3", "--threads", "1", "--no-progress", "--sample-tokens", "0"]


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, corpus):
    """A real SIGINT mid-run saves at a step boundary; resuming ends bit-identical to an uninterrupted run."""
    cut = tmp_path / "cut"
    proc = subprocess.Popen(CLI + ["--data", str(corpus), "--out", str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (cut / "checkpoint").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "--resume" in out + err
    step = load_checkpoint(cut).trainer["step"]
    assert 5 <= step < 400
    printed = (out + err).split("Continue with: ")[1].split()        # the command exactly as printed
    assert printed[:2] == ["minimmf", "train"]
    subprocess.run([sys.executable, "-m", "minimmf"] + printed[1:] + ["--sample-tokens", "0", "--no-progress"],
                   check=True, capture_output=True)
    subprocess.run(CLI + ["--data", str(corpus), "--out", str(tmp_path / "full")], check=True,
                   capture_output=True)
    assert_same_params(load_checkpoint(cut).model.params, load_checkpoint(tmp_path / "full").model.params)
    assert same_metrics(cut) == same_metrics(tmp_path / "full")


def test_learning_rate_recipe():
    """Linear warm-up, cosine decay to min_lr_ratio, and the rate halved from the midpoint on."""
    cfg = TrainConfig(lr=4e-3, warmup_steps=10, min_lr_ratio=0.1, steps=100)
    assert learning_rate(5, 0.05, cfg) == pytest.approx(4e-3 * 0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.05))))
    before = learning_rate(49, 0.49, cfg)
    after = learning_rate(50, 0.50, cfg)
    assert after == pytest.approx(0.5 * 4e-3 * (0.1 + 0.9 * 0.5), rel=1e-12)
    assert 0.45 < after / before < 0.55
    assert learning_rate(100, 1.0, cfg) == pytest.approx(0.5 * 4e-3 * 0.1)
    assert learning_rate(100, 1.0, replace(cfg, halve_lr_midway=False)) == pytest.approx(4e-3 * 0.1)


@pytest.mark.parametrize("field, value", [("lr", -1.0), ("lr", 5.0), ("steps", 0), ("seq_len", 0),
                                          ("batch_size", -3), ("tokenizer", "words"), ("minutes", -1.0),
                                          ("weight_decay", 2.0), ("seq_len", 10**7), ("seed", -1),
                                          ("hidden_size", 10**9), ("vocab_size", 10**20), ("lr", math.nan)])
def test_absurd_hyperparameters_are_refused(field, value):
    """Out-of-range settings raise ValueError naming the flag (or setting) before anything runs."""
    from minimmf.train import FLAGS
    with pytest.raises(ValueError, match=FLAGS.get(field, field) + " must be"):
        replace(SMALL, **{field: value})


def test_a_model_too_large_for_this_machine_is_refused_with_the_estimate():
    """Sizes whose training memory (derived) exceeds the machine's RAM are refused, naming the flags."""
    with pytest.raises(ValueError, match=r"needs about .* GiB to train .*--hidden-size 16384.*choose smaller"):
        replace(SMALL, hidden_size=16384, num_hidden_layers=512)


def test_corpus_smaller_than_one_batch_is_refused(tmp_path):
    """A corpus shorter than one training window gives a clear error and writes no checkpoint."""
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be\n" * 3)
    with pytest.raises(ValueError, match="corpus too small"):
        train(replace(SMALL, seq_len=64), tmp_path / "out", data=small, progress=False, log=lambda *a: None)
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_unwritable_output_directory_is_refused(tmp_path, corpus):
    """An output directory that cannot be written is reported before training starts."""
    if os.geteuid() == 0:
        target = "/proc/minimmf-out"             # even root cannot create directories in /proc
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    with pytest.raises(ValueError, match="not writable"):
        train(SMALL, target, data=corpus, progress=False, log=lambda *a: None)


def test_resume_with_another_corpus_is_refused(tmp_path, corpus):
    """Resuming on different data would silently change the run, so it is an error."""
    train(replace(SMALL, steps=4), tmp_path, data=corpus, progress=False, log=lambda *a: None)
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1])
    with pytest.raises(ValueError, match="corpus"):
        train(None, tmp_path, data=other, resume=True, progress=False, log=lambda *a: None)


def test_resume_refuses_a_changed_setting_naming_the_flag_and_both_values(tmp_path, corpus):
    """--resume continues the same run: a different size, seed or budget is refused by name."""
    train(replace(SMALL, steps=4), tmp_path, data=corpus, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"--hidden-size is 32 here but 16 in the run.*--seed is 2 here but 1"):
        train(replace(SMALL, steps=4, hidden_size=32, seed=2), tmp_path, data=corpus, resume=True,
              progress=False, log=lambda *a: None)


def test_a_new_run_never_replaces_an_existing_one_without_overwrite(tmp_path, corpus):
    """Without resume, an existing run is refused; overwrite=True replaces it."""
    train(replace(SMALL, steps=4), tmp_path, data=corpus, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train(replace(SMALL, steps=4), tmp_path, data=corpus, progress=False, log=lambda *a: None)
    assert load_checkpoint(tmp_path).trainer["step"] == 4
    r = train(replace(SMALL, steps=4, seed=5), tmp_path, data=corpus, progress=False, log=lambda *a: None,
              overwrite=True)
    assert [m["step"] for m in r.metrics] == [4]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, corpus):
    """A half-written last line (a full disk) does not break resume; records after the checkpoint go."""
    train(SMALL, tmp_path / "full", data=corpus, progress=False, log=lambda *a: None)
    train(SMALL, tmp_path / "cut", data=corpus, progress=False, log=lambda *a: None, stop_after=5)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "tokens": 51')
    train(None, tmp_path / "cut", resume=True, progress=False, log=lambda *a: None)
    assert same_metrics(tmp_path / "cut") == same_metrics(tmp_path / "full")


def test_a_nan_gradient_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    """A non-finite gradient stops the run naming the step and the tensor; the checkpoint stays finite."""
    from minimmf.model import MMfreeLM
    real = MMfreeLM.loss_and_grads
    calls = []

    def poisoned(self, ids, labels):
        loss, grads = real(self, ids, labels)
        calls.append(1)
        if len(calls) == 6:
            grads["layers"][1]["mlp"]["down_proj"]["W"][0, 0] = np.nan
        return loss, grads
    monkeypatch.setattr(MMfreeLM, "loss_and_grads", poisoned)
    with pytest.raises(ValueError, match=r"stopped at step 6: gradient layers\.1\.mlp\.down_proj\.W contains"
                                         r".*checkpoint \(step 4\)"):
        train(SMALL, tmp_path, data=corpus, progress=False, log=lambda *a: None)
    ck = load_checkpoint(tmp_path)
    assert ck.trainer["step"] == 4 and np.isfinite(ck.model.params["norm"]).all()


def test_save_checkpoint_refuses_a_non_finite_model(tmp_path):
    """A model holding NaN is never written over a good checkpoint."""
    import minimmf
    from minimmf.checkpoint import CheckpointError, save_checkpoint
    m = minimmf.MMfreeLM.init(minimmf.MMfreeConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                   intermediate_size=8))
    save_checkpoint(tmp_path, m)
    m.params["lower_bounds"][0, 0] = np.inf
    with pytest.raises(CheckpointError, match="not saved.*lower_bounds"):
        save_checkpoint(tmp_path, m)
    assert np.isfinite(load_checkpoint(tmp_path).model.params["lower_bounds"]).all()


def test_a_run_is_not_resumed_with_fewer_threads_than_it_was_trained_with(tmp_path):
    """Fewer threads would silently change the run's bits (BLAS blocking), so resume refuses and says why."""
    from minimmf.threads import max_threads
    from minimmf.train import _choose_threads
    with pytest.raises(ValueError, match=rf"trained with {max_threads() + 1} threads, but only {max_threads()}"):
        _choose_threads(SMALL, {"threads": max_threads() + 1}, None, None, tmp_path)


def test_more_threads_than_available_are_refused_not_clamped(tmp_path, corpus):
    """--threads N beyond what is available would silently run with fewer: refused, naming the flag."""
    from minimmf.threads import max_threads
    with pytest.raises(ValueError, match=rf"--threads {max_threads() + 1}: only {max_threads()}"):
        train(replace(SMALL, threads=max_threads() + 1), tmp_path, data=corpus, progress=False, log=lambda *a: None)


def test_resume_takes_every_setting_and_the_corpus_from_the_checkpoint(tmp_path, corpus):
    """The checkpoint records the whole TrainConfig, the corpus path and sha256 and the thread count."""
    train(replace(SMALL, steps=4), tmp_path, data=corpus, progress=False, log=lambda *a: None)
    t = load_checkpoint(tmp_path).trainer
    assert TrainConfig(**{**t["train_config"], "betas": tuple(t["train_config"]["betas"])}) == replace(SMALL, steps=4)
    assert t["data_path"] == str(corpus.resolve()) and len(t["data_sha256"]) == 64 and t["threads"] == 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus):
    run = tmp_path_factory.mktemp("finished")
    train(replace(SMALL, steps=4), run, data=corpus, progress=False, log=lambda *a: None)
    return run


@pytest.mark.parametrize("field, value", [("step", "abc"), ("tokens", -1), ("rng", [1]), ("threads", True),
                                          ("recent_losses", "x"), ("train_config", {"lr": "fast"}),
                                          ("train_config", None)])
def test_an_invalid_trainer_json_is_named_on_resume(tmp_path, finished_run, field, value):
    """A trainer.json field of the wrong type is a CheckpointError naming the file, not a traceback."""
    import shutil
    from minimmf.checkpoint import CheckpointError, _sha256
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    ckpt = tmp_path / "checkpoint"
    t = json.loads((ckpt / "trainer.json").read_text())
    t[field] = value
    (ckpt / "trainer.json").write_text(json.dumps(t))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["trainer.json"] = {"sha256": _sha256(ckpt / "trainer.json"), "bytes": (ckpt / "trainer.json").stat().st_size}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="trainer.json"):
        train(None, tmp_path, resume=True, progress=False, log=lambda *a: None)
