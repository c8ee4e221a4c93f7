"""Training: random windows of the corpus, AdamW with the paper's learning-rate recipe
(``schedule.py``), periodic evaluation in nats/token and bits per character, checkpoints, resume.

A run is its directory: ``checkpoint/`` (written atomically), ``metrics.jsonl`` (one record per
evaluation) and ``loss.png``. The checkpoint records every setting that defines the run (the
``TrainConfig``, the corpus's path and sha256, the thread count), so ``--resume`` continues the same
run: it reuses them, refuses a changed one by name, and truncates ``metrics.jsonl`` to the
checkpoint's step; an interrupted and resumed run gives the same weights and metrics as an
uninterrupted one. A non-finite loss, gradient or parameter stops training at the step where it
appears, naming the tensor; the last good checkpoint is never overwritten by a non-finite model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import validate
from .architectures import ARCHITECTURES
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import MMfreeConfig
from .model import MMfreeLM
from .optim import AdamW, clip_grads
from .schedule import learning_rate
from .threads import fastest_thread_count, max_threads, set_threads
from .tree import leaves


def _physical_memory() -> int | None:
    """Bytes of RAM on this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# The command-line flag of each TrainConfig field, for messages (fields without a flag go by name).
FLAGS = {"architecture": "--architecture", "hidden_size": "--hidden-size", "num_hidden_layers": "--layers",
         "tokenizer": "--tokenizer", "vocab_size": "--vocab-size", "seq_len": "--seq-len",
         "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
         "grad_clip": "--grad-clip", "steps": "--steps", "minutes": "--minutes", "eval_every": "--eval-every",
         "seed": "--seed", "threads": "--threads"}


@dataclass
class TrainConfig:
    # model
    architecture: str = "mmfree"     # "mmfree" (MMfreeLM) or "transformer++" (the baseline, minimmf/baseline)
    hidden_size: int = 128           # H
    num_hidden_layers: int = 4       # L
    intermediate_size: int | None = None   # I of the GLU (None: the released rule)
    # data
    tokenizer: str = "bpe"           # "bpe" (byte-level BPE trained on the corpus) or "char"
    vocab_size: int = 2048           # BPE vocabulary size (ignored for "char")
    seq_len: int = 128               # tokens per training window
    batch_size: int = 16             # windows per step
    # optimization
    lr: float = 4e-3                 # peak learning rate (the paper: 4e-3 for 370M)
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    halve_lr_midway: bool = True     # the paper's recipe: the rate is halved at the midpoint
    weight_decay: float = 0.01
    grad_clip: float = 1.0           # max global gradient norm (0 disables)
    betas: tuple = (0.9, 0.95)
    # budget and bookkeeping
    steps: int = 2000                # step budget
    minutes: float | None = None     # wall-clock budget; the schedule follows whichever budget binds
    budget_minutes: float | None = None  # --minutes alone: steps sized to this budget at the start (recipes.py)
    budget_checked_at: int = 0       # the step where such a run compared its pace with its plan (0: not yet)
    eval_every: int = 100            # steps between evaluations (and checkpoints)
    eval_windows: int = 32           # validation windows per evaluation (None/0: the whole split)
    seed: int = 0
    threads: int = -1                # -1: the fastest count, timed once at the start; 0: all cores; N: exactly N

    def __post_init__(self):
        from .tokenizer import MAX_BPE_VOCAB, MIN_BPE_VOCAB

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        checks = {  # field: (holds, the expected value in words)
            "architecture": (self.architecture in ARCHITECTURES, f"one of {sorted(ARCHITECTURES)}"),
            "hidden_size": (is_int(self.hidden_size) and 1 <= self.hidden_size <= 1 << 16, "an integer in [1, 65536]"),
            "num_hidden_layers": (is_int(self.num_hidden_layers) and 1 <= self.num_hidden_layers <= 1024,
                                  "an integer in [1, 1024]"),
            "intermediate_size": (self.intermediate_size is None or (is_int(self.intermediate_size)
                                  and 1 <= self.intermediate_size <= 1 << 18), "None or an integer in [1, 262144]"),
            "tokenizer": (self.tokenizer in ("bpe", "char"), "'bpe' or 'char'"),
            "vocab_size": (is_int(self.vocab_size) and MIN_BPE_VOCAB <= self.vocab_size <= MAX_BPE_VOCAB,
                           f"an integer in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB:,}]"),
            "seq_len": (is_int(self.seq_len) and 1 <= self.seq_len <= 1 << 16, "an integer in [1, 65536]"),
            "batch_size": (is_int(self.batch_size) and 1 <= self.batch_size <= 1 << 14, "an integer in [1, 16384]"),
            "lr": (is_num(self.lr) and 0 < self.lr < 1, "a number in (0, 1)"),
            "min_lr_ratio": (is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
            "warmup_steps": (is_int(self.warmup_steps) and self.warmup_steps >= 0, "a non-negative integer"),
            "weight_decay": (is_num(self.weight_decay) and 0 <= self.weight_decay < 1, "a number in [0, 1)"),
            "grad_clip": (is_num(self.grad_clip) and self.grad_clip >= 0, "a finite number >= 0 (0 = off)"),
            "steps": (is_int(self.steps) and 1 <= self.steps <= 10**9, "an integer in [1, 10**9]"),
            "minutes": (self.minutes is None or (is_num(self.minutes) and 0 < self.minutes <= 7 * 24 * 60),
                        "a number of minutes in (0, 10080] (one week)"),
            "budget_minutes": (self.budget_minutes is None or (is_num(self.budget_minutes)
                               and 0 < self.budget_minutes <= 7 * 24 * 60),
                               "None or a number of minutes in (0, 10080] (one week)"),
            "budget_checked_at": (is_int(self.budget_checked_at) and self.budget_checked_at >= 0,
                                  "a non-negative integer"),
            "eval_every": (is_int(self.eval_every) and self.eval_every >= 1, "a positive integer"),
            "eval_windows": (self.eval_windows is None or (is_int(self.eval_windows) and self.eval_windows >= 0),
                             "None or a non-negative integer"),
            "seed": (is_int(self.seed) and 0 <= self.seed < 2 ** 63, "an integer in [0, 2**63)"),
            "threads": (is_int(self.threads) and self.threads >= -1, "-1 (auto), 0 (all cores) or a count"),
        }
        for k, (ok, want) in checks.items():
            if not ok:
                raise ValueError(f"{FLAGS.get(k, k)} must be {want}, got {getattr(self, k)!r}")
        need, have = self.training_bytes(), _physical_memory()
        if have and need > have:
            raise ValueError(f"this model needs about {need / 2**30:,.1f} GiB to train (parameters, gradients, "
                             f"two AdamW moments and activations, derived from --hidden-size "
                             f"{self.hidden_size}, --layers {self.num_hidden_layers}, --vocab-size "
                             f"{self.vocab_size}, --batch-size {self.batch_size}, --seq-len {self.seq_len}), "
                             f"but this machine has {have / 2**30:,.1f} GiB: choose smaller sizes")

    def training_bytes(self) -> int:
        """A lower bound on training memory, derived: 4 float32 copies of every parameter (weights,
        gradients, AdamW's m and v) plus ~16 float32 activations of width H or I per token and layer."""
        H, L, V = self.hidden_size, self.num_hidden_layers, self.vocab_size
        I = self.intermediate_size or 4 * H
        n_params = 2 * V * H + L * (4 * H * H + 3 * H * I)
        tokens = self.batch_size * self.seq_len
        return 4 * (4 * n_params + tokens * (L * 16 * max(H, I) + V))

    def model_config(self, vocab_size: int) -> MMfreeConfig:
        return MMfreeConfig(vocab_size=vocab_size, hidden_size=self.hidden_size,
                            num_hidden_layers=self.num_hidden_layers,
                            intermediate_size=self.intermediate_size)

    def build_model(self, vocab_size: int):
        """A freshly initialized model of this ``architecture`` (seeded by ``seed``)."""
        return ARCHITECTURES[self.architecture].build(vocab_size, self.hidden_size, self.num_hidden_layers,
                                                      self.intermediate_size, self.seed)


PRESETS = {
    # the README's main job: a few minutes on 2 cores
    "tiny": TrainConfig(hidden_size=128, num_hidden_layers=4, intermediate_size=256, vocab_size=2048,
                        seq_len=128, batch_size=16, lr=4e-3, warmup_steps=100, steps=2000,
                        minutes=5.0, eval_every=100),
    "small": TrainConfig(hidden_size=256, num_hidden_layers=6, intermediate_size=512, vocab_size=4096,
                         seq_len=256, batch_size=16, lr=3e-3, warmup_steps=200, steps=6000,
                         minutes=30.0, eval_every=250),
}


def evaluate(model: MMfreeLM, ids: np.ndarray, seq_len: int, batch_size: int,
             max_windows: int | None) -> float:
    """Mean loss in nats/token over non-overlapping validation windows (deterministic)."""
    from .data import eval_windows
    total, count = 0.0, 0
    for b in eval_windows(ids, seq_len, max_windows, batch_size=batch_size):
        n = b.shape[0] * (b.shape[1] - 1)                      # scored positions in this batch
        total += model.loss(b, b) * n
        count += n
    return total / count


def ternary_zero_fraction(model: MMfreeLM) -> float:
    """Fraction of ternary weight codes that are 0, over every BitLinear."""
    from .quant import weight_quant
    zeros = total = 0
    for path, a in leaves(model.params):
        if path.endswith(".W"):
            q, _ = weight_quant(a)
            zeros += int(np.count_nonzero(q == 0))
            total += q.size
    return zeros / total


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TrainingError(ValueError):
    """Training cannot start or continue: a run that would be destroyed or changed, or a run that diverged."""


@dataclass
class RunResult:
    out: Path
    step: int
    tokens: int
    seconds: float
    val_loss: float
    val_bpc: float
    metrics: list = field(default_factory=list)


def saved_config(out) -> TrainConfig:
    """The TrainConfig the run in ``out`` was started with (what ``--resume`` continues)."""
    ck = load_checkpoint(out, with_optimizer=False)
    return _config_from_state(ck.trainer, ck.path)


def _config_from_state(state: dict, where) -> TrainConfig:
    saved = state.get("train_config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{Path(where) / 'trainer.json'} holds no training settings (train_config): "
                              f"this checkpoint cannot be resumed")
    try:
        saved = {**saved, "betas": tuple(saved["betas"])}
        return TrainConfig(**saved)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(where) / 'trainer.json'} has invalid training settings ({e})") from None


def _check_trainer_state(state: dict, where: Path) -> None:
    """The fields of trainer.json a resume relies on, each of the right type."""
    def count(x):
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0
    expect = {"step": (count, "a non-negative integer"), "tokens": (count, "a non-negative integer"),
              "seconds": (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                          and x >= 0, "a non-negative number"),
              "rng": (lambda x: isinstance(x, dict), "a NumPy bit-generator state (object)"),
              "threads": (count, "a positive integer"),
              "recent_losses": (lambda x: isinstance(x, list) and all(
                  isinstance(v, (int, float)) and not isinstance(v, bool) for v in x), "a list of numbers")}
    for key, (ok, want) in expect.items():
        if key == "recent_losses" and key not in state:
            continue
        if key not in state or not ok(state[key]):
            raise CheckpointError(f"{where}: {key} is {state.get(key, 'missing')!r}, expected {want}; "
                                  f"this checkpoint cannot be resumed")


def _check_same_run(cfg: TrainConfig, saved: TrainConfig, out: Path) -> None:
    """Refuse to resume with a setting that differs from the run's, naming the flag and both values."""
    changed = [(FLAGS.get(f.name, f.name), getattr(cfg, f.name), getattr(saved, f.name))
               for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(saved, f.name)]
    if changed:
        desc = "; ".join(f"{flag} is {new!r} here but {old!r} in the run" for flag, new, old in changed)
        raise TrainingError(f"cannot resume {out}: {desc}. --resume continues the same run: leave these "
                            f"flags out (the run's own values are used) or start a new run in another --out")


def _check_fresh(out: Path, overwrite: bool) -> None:
    """Never destroy an existing run without --resume or --overwrite."""
    ours = [out / "checkpoint", out / "metrics.jsonl", out / "loss.png"]
    found = [p.name for p in ours if p.exists()] + [p.name for p in out.glob(".checkpoint.old-*")]
    if not found:
        return
    if not overwrite:
        raise TrainingError(f"{out} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                            f"--overwrite to replace it, or another --out")
    import shutil
    for p in out.glob(".checkpoint.old-*"):
        shutil.rmtree(p, ignore_errors=True)
    if (out / "checkpoint").exists():
        shutil.rmtree(out / "checkpoint")
    for p in ours[1:]:
        p.unlink(missing_ok=True)


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (at most ``up_to_step``). A torn last line (a write cut short
    by a crash or a full disk) is dropped; any other unreadable line is an error naming the line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError("not a metrics record")
        except (ValueError, UnicodeDecodeError) as e:
            if all(not rest.strip() for rest in lines[i:]):                 # the last line: torn
                break
            raise TrainingError(f"{path}, line {i}, is not a metrics record ({e}); fix or delete that line") from None
        if up_to_step is None or rec["step"] <= up_to_step:
            records.append(rec)
    return records


def _write_metrics(path: Path, records: list[dict]) -> None:
    from .fileio import atomic_write_bytes
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def _load_run_corpus(data, state: dict, out: Path):
    """The corpus of a resumed run: ``data`` if given, else the one the run was trained on; same sha256."""
    from .data import load_corpus
    if data is None and state.get("data_path"):
        data = state["data_path"]
        if not Path(data).exists():
            raise TrainingError(f"cannot resume {out}: its corpus {data} no longer exists; pass the same text "
                                f"with --data")
    corpus = load_corpus(data)
    if state.get("data_sha256") != _fingerprint(corpus.text):
        raise TrainingError(f"cannot resume {out}: the corpus ({corpus.source}, sha256 "
                            f"{_fingerprint(corpus.text)[:12]}...) differs from the one it was trained on "
                            f"({state.get('data_source')}, sha256 {str(state.get('data_sha256'))[:12]}...)")
    return corpus, data


def train(cfg: TrainConfig | None, out, data=None, resume: bool = False, progress: bool = True,
          log=print, stop_after: int | None = None, overwrite: bool = False) -> RunResult:
    """Train a new run into ``out``, or continue the one there (``resume=True``).

    A new run refuses an ``out`` that holds a run unless ``overwrite``. A resumed run takes every
    setting from its checkpoint: ``cfg`` may be None, and if given must equal the run's settings;
    ``data`` may be None (the run's own corpus is used) and must hash like the run's.
    ``stop_after`` ends the run at that step as an interruption would (for tests): saved, then return.
    """
    from .data import encode_split, load_corpus, sample_batch, split_text
    from .threads import sleeping_workers
    from .tokenizer import train_bpe, train_char

    sleeping_workers()                           # before any kernel starts Numba's threads (threads.py says why)
    out = Path(out)
    _check_writable(out)
    state = {}
    if resume:
        ck = load_checkpoint(out)
        state = ck.trainer
        saved = _config_from_state(state, ck.path)
        if cfg is not None:
            _check_same_run(cfg, saved, out)
        cfg = saved
        corpus, data = _load_run_corpus(data, state, out)
        model, tokenizer, opt = ck.model, ck.tokenizer, ck.optimizer
        if tokenizer is None or opt is None:
            raise CheckpointError(f"{ck.path} has no {'tokenizer.json' if tokenizer is None else 'optimizer state'}"
                                  f": it cannot be resumed (it is a model only; use it with generate)")
        _check_trainer_state(state, ck.path / "trainer.json")
    else:
        if cfg is None:
            raise ValueError("train: cfg is None; a new run needs a TrainConfig")
        _check_fresh(out, overwrite)
        corpus = load_corpus(data)
    train_text, val_text = split_text(corpus.text)
    if not resume:
        tokenizer = train_char(corpus.text) if cfg.tokenizer == "char" else train_bpe(train_text, cfg.vocab_size)
        model = cfg.build_model(tokenizer.vocab_size)
        opt = AdamW(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    split = encode_split(tokenizer, train_text, val_text)
    n_window = cfg.seq_len + 1
    if len(split.train) < n_window or len(split.val) < n_window:
        raise ValueError(f"corpus too small: {len(split.train)} training and {len(split.val)} validation "
                         f"tokens, but one window needs {n_window}; use a smaller --seq-len or a larger corpus")
    rng = np.random.default_rng(cfg.seed)
    if resume:
        try:
            rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{out / 'checkpoint' / 'trainer.json'} has an invalid rng state ({e})") from None
    step, tokens, seconds0 = state.get("step", 0), state.get("tokens", 0), state.get("seconds", 0.0)
    step0 = step
    time_up = state.get("time_up") is True                      # the time limit ended the run (not an interrupt)
    recent = list(state.get("recent_losses", []))               # train losses since the last evaluation
    val_cpt = split.val_chars / len(split.val)                  # characters per validation token
    metrics_path = out / "metrics.jsonl"
    if resume:                                                  # the metrics of this checkpoint, no later
        _write_metrics(metrics_path, read_metrics(metrics_path, up_to_step=step))
    else:
        log(f"model: {model.num_params():,} parameters, L={cfg.num_hidden_layers} H={cfg.hidden_size} "
            f"I={model.config.I} V={model.config.vocab_size} ({tokenizer.kind} tokenizer) | "
            f"corpus: {corpus.source}, {len(split.train):,} train / {len(split.val):,} val tokens")
    data_path = None if data is None else str(Path(data).resolve())

    def trainer_state():
        return {"step": step, "tokens": tokens, "seconds": seconds, "rng": rng.bit_generator.state,
                "threads": threads, "recent_losses": [float(x) for x in recent],
                "train_config": dataclasses.asdict(cfg), "data_sha256": _fingerprint(corpus.text),
                "data_path": data_path, "data_source": corpus.source, "time_up": time_up}

    from .fast.memory import prepare_process
    prepare_process()                                          # keep freed memory for the next step
    threads = _choose_threads(cfg, state, model, split, out)
    if cfg.budget_minutes is not None and not resume:          # fix the step count that fills the budget
        from .recipes import size_to_budget
        cfg = size_to_budget(cfg, model, split, log)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, leave=True)
    t_start = time.perf_counter() - seconds0
    seconds = seconds0
    result = None
    last_saved = step
    with _DeferredInterrupt() as interrupt:                     # Ctrl-C ends the run between steps
        spent = cfg.minutes is not None and step > 0 and (seconds0 >= cfg.minutes * 60 or time_up)  # a resumed
        while not spent:                                        # run whose time was already up makes no more steps
            seconds = time.perf_counter() - t_start
            if step >= cfg.steps:                               # (a time budget ends the loop below, after
                break                                           # the last step's evaluation and checkpoint)
            prog = step / cfg.steps
            if cfg.minutes is not None:
                prog = max(prog, seconds / (cfg.minutes * 60))
            step += 1
            t_step = seconds
            lr = learning_rate(step, prog, cfg)
            batch = sample_batch(split.train, cfg.batch_size, cfg.seq_len, rng)   # (B, T + 1)
            try:                                   # a non-finite loss, gradient or parameter stops the run here
                loss, grads = model.loss_and_grads(batch, batch)
                validate.finite_tree(grads, "gradient")
                if cfg.grad_clip:
                    grads, _ = clip_grads(grads, cfg.grad_clip)
                opt.step(model.params, grads, lr=lr)
                validate.finite_tree(model.params, "after the update, parameter")
            except (ValueError, FloatingPointError) as e:
                if bar is not None:
                    bar.close()
                raise TrainingError(f"training stopped at step {step}: {e}. The last good checkpoint "
                                    f"(step {last_saved}) in {out} is kept; try a lower --lr or --grad-clip "
                                    f"and start again") from None
            tokens += cfg.batch_size * cfg.seq_len
            recent.append(loss)
            seconds = time.perf_counter() - t_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / max(seconds, 1e-9):,.0f}", refresh=False)
            # a time limit ends the run at the last step that fits: the next would take about as long as this one
            time_up = cfg.minutes is not None and seconds + (seconds - t_step) >= cfg.minutes * 60
            last = step >= cfg.steps or time_up
            if step % cfg.eval_every == 0 or last:
                result = _evaluate_and_log(model, split, cfg, step, tokens, seconds, recent, lr, val_cpt,
                                           metrics_path, bar, log)
                recent = []
                save_checkpoint(out, model, tokenizer, opt, trainer_state())
                last_saved = step
                if cfg.budget_minutes is not None and not cfg.budget_checked_at and not last:
                    from .recipes import check_pace                 # the first evaluation of a budget-sized run
                    now = time.perf_counter() - t_start
                    cfg = check_pace(cfg, step, step - step0, seconds - seconds0, now - seconds, now, log)
                    if bar is not None:
                        bar.total = cfg.steps
                    save_checkpoint(out, model, tokenizer, opt, trainer_state())
            if interrupt.requested or step == stop_after:
                if last_saved != step:
                    save_checkpoint(out, model, tokenizer, opt, trainer_state())
                if interrupt.requested:
                    if bar is not None:
                        bar.close()
                    log(f"\ninterrupted at step {step}; checkpoint saved in {out}. "
                        f"Continue with: minimmf train --resume --out {shlex.quote(str(out))}")
                    raise KeyboardInterrupt
                break
            if last:
                break
    if bar is not None:
        bar.close()
    records = read_metrics(metrics_path)
    if result is None:                                          # resumed a finished run, or stopped early
        result = records[-1] if records else {"val_loss": float("nan"), "val_bpc": float("nan")}
    if records:
        try:
            from .plots import plot_metrics
            plot_metrics(metrics_path, out / "loss.png")
        except ImportError:
            pass
    return RunResult(out, step, tokens, seconds, result["val_loss"], result["val_bpc"], records)


def _evaluate_and_log(model, split, cfg, step, tokens, seconds, recent, lr, val_cpt, path, bar, log):
    val = evaluate(model, split.val, cfg.seq_len, cfg.batch_size, cfg.eval_windows or None)
    rec = {"step": step, "tokens": tokens, "seconds": round(seconds, 3),
           "train_loss": float(np.mean(recent)) if recent else None, "val_loss": val,
           "val_bpc": val / val_cpt / math.log(2), "lr": lr,
           "ternary_zero_fraction": ternary_zero_fraction(model) if ARCHITECTURES[cfg.architecture].ternary else None}
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    msg = (f"step {step}: train {rec['train_loss']:.3f}, val {val:.3f} nats/token = "
           f"{rec['val_bpc']:.3f} bits/char ({seconds:.0f} s)")
    (bar.write if bar is not None else log)(msg)
    return rec


def _choose_threads(cfg, state, model, split, out) -> int:
    """The thread count for the whole run (the last bits of BLAS products depend on it, see threads.py).

    A resumed run keeps the count it started with, and refuses to continue where fewer threads are
    available: a silent change would change its bits (OpenBLAS blocks a product differently per count).
    -1 times a few forward+backward passes of a probe batch at each count (from its own random
    generator, so the run's batches are unchanged).
    """
    if "threads" in state:
        n = state["threads"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise CheckpointError(f"{out / 'checkpoint' / 'trainer.json'}: threads is {n!r}, expected a "
                                  f"positive integer")
        if n > max_threads():
            raise TrainingError(f"cannot resume {out} bit for bit: it was trained with {n} threads, but only "
                                f"{max_threads()} are available here (NUMBA_NUM_THREADS / CPU cores), and the "
                                f"last bits of every product depend on the count. Resume it on a machine "
                                f"with {n} or more cores")
        return set_threads(n)
    if cfg.threads > max_threads():
        raise TrainingError(f"--threads {cfg.threads}: only {max_threads()} threads are available here "
                            f"(NUMBA_NUM_THREADS / CPU cores); pass at most {max_threads()}, or 'auto'")
    if cfg.threads > 0:
        return set_threads(cfg.threads)
    if cfg.threads == 0:
        return set_threads(max_threads())
    from .data import sample_batch
    probe = sample_batch(split.train, cfg.batch_size, cfg.seq_len, np.random.default_rng(cfg.seed + 1))
    return fastest_thread_count(lambda: model.loss_and_grads(probe, probe))


class _DeferredInterrupt:
    """Turn the first Ctrl-C into a request honoured at the next step boundary, so the state saved
    is always that of a completed step (a second Ctrl-C interrupts at once; the last checkpoint
    on disk stays intact because checkpoints are written atomically)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a directory for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output directory {out} is not writable ({e.strerror}); pick another --out") from None
