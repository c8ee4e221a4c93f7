"""Training: random windows of the corpus, AdamW with the paper's learning-rate recipe, periodic
evaluation in nats/token and bits per character, checkpoints, resume.

The learning-rate recipe (SPEC §6; Zhu et al. 2024, §4): linear warm-up to a large peak (ternary
weights only move when a latent weight crosses a rounding threshold, so they need a larger step
than the 3e-4 of a float Transformer), cosine decay to ``min_lr_ratio`` of the peak, and the
rate halved at the midpoint of training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, save_checkpoint
from .config import MMfreeConfig
from .model import MMfreeLM
from .optim import AdamW, clip_grads
from .threads import fastest_thread_count, max_threads, set_threads
from .tree import leaves


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
    eval_every: int = 100            # steps between evaluations (and checkpoints)
    eval_windows: int = 32           # validation windows per evaluation (None/0: the whole split)
    seed: int = 0
    threads: int = -1                # -1: the fastest count, timed once at the start; 0: all cores; N: exactly N

    def __post_init__(self):
        checks = {"hidden_size": self.hidden_size >= 1, "num_hidden_layers": self.num_hidden_layers >= 1,
                  "seq_len": self.seq_len >= 1, "batch_size": self.batch_size >= 1,
                  "lr": 0 < self.lr < 1, "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
                  "warmup_steps": self.warmup_steps >= 0, "weight_decay": 0 <= self.weight_decay < 1,
                  "grad_clip": self.grad_clip >= 0, "steps": self.steps >= 1,
                  "minutes": self.minutes is None or 0 < self.minutes <= 7 * 24 * 60,
                  "budget_minutes": self.budget_minutes is None or 0 < self.budget_minutes <= 7 * 24 * 60,
                  "eval_every": self.eval_every >= 1, "tokenizer": self.tokenizer in ("bpe", "char"),
                  "vocab_size": self.vocab_size >= 1,
                  "architecture": self.architecture in ("mmfree", "transformer++")}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            k = bad[0]
            raise ValueError(f"training setting {k}={getattr(self, k)!r} is out of range; see "
                             f"`minimmf train --help` for the meaning and sensible values")
        if self.seq_len > 1 << 16 or self.batch_size > 1 << 14:
            raise ValueError(f"seq_len={self.seq_len} / batch_size={self.batch_size} is absurdly large")

    def model_config(self, vocab_size: int) -> MMfreeConfig:
        return MMfreeConfig(vocab_size=vocab_size, hidden_size=self.hidden_size,
                            num_hidden_layers=self.num_hidden_layers,
                            intermediate_size=self.intermediate_size)

    def build_model(self, vocab_size: int):
        """A freshly initialized model of this ``architecture`` (seeded by ``seed``)."""
        if self.architecture == "transformer++":
            from .baseline import TransformerConfig, TransformerPP
            return TransformerPP.init(TransformerConfig.for_width(vocab_size, self.hidden_size,
                                      self.num_hidden_layers, self.intermediate_size), seed=self.seed)
        return MMfreeLM.init(self.model_config(vocab_size), seed=self.seed)


PRESETS = {
    # the README's main job: a few minutes on 2 cores
    "tiny": TrainConfig(hidden_size=128, num_hidden_layers=4, intermediate_size=256, vocab_size=2048,
                        seq_len=128, batch_size=16, lr=4e-3, warmup_steps=100, steps=2000,
                        minutes=5.0, eval_every=100),
    "small": TrainConfig(hidden_size=256, num_hidden_layers=6, intermediate_size=512, vocab_size=4096,
                         seq_len=256, batch_size=16, lr=3e-3, warmup_steps=200, steps=6000,
                         minutes=30.0, eval_every=250),
}


def learning_rate(step: int, progress: float, cfg: TrainConfig) -> float:
    """lr at ``step`` (1-based) given training ``progress`` in [0, 1]: warm-up, cosine, halved midway."""
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cos = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    half = 0.5 if (cfg.halve_lr_midway and progress >= 0.5) else 1.0
    return cfg.lr * warm * cos * half


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


@dataclass
class RunResult:
    out: Path
    step: int
    tokens: int
    seconds: float
    val_loss: float
    val_bpc: float
    metrics: list = field(default_factory=list)


def train(cfg: TrainConfig, out, data=None, resume: bool = False, progress: bool = True,
          log=print, stop_after: int | None = None) -> RunResult:
    """Train (or resume) a model into ``out``. ``stop_after`` ends the process early at that step
    as an interruption would (for tests), after saving."""
    from .data import encode_split, load_corpus, sample_batch, split_text
    from .tokenizer import train_bpe, train_char

    out = Path(out)
    _check_writable(out)
    corpus = load_corpus(data)
    train_text, val_text = split_text(corpus.text)
    state = {}
    if resume:
        ck = load_checkpoint(out)
        state = ck.trainer
        if state.get("data_sha256") != _fingerprint(corpus.text):
            raise ValueError(f"cannot resume: the corpus ({corpus.source}) differs from the one "
                             f"{out} was trained on ({state.get('data_source')})")
        saved = state["train_config"]
        saved["betas"] = tuple(saved["betas"])
        cfg = dataclasses.replace(TrainConfig(**saved), steps=cfg.steps, minutes=cfg.minutes)
        model, tokenizer, opt = ck.model, ck.tokenizer, ck.optimizer
    else:
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
        rng.bit_generator.state = state["rng"]
    step, tokens, seconds0 = state.get("step", 0), state.get("tokens", 0), state.get("seconds", 0.0)
    val_cpt = split.val_chars / len(split.val)                  # characters per validation token
    metrics_path = out / "metrics.jsonl"
    if not resume and metrics_path.exists():
        metrics_path.unlink()
    if not resume:
        log(f"model: {model.num_params():,} parameters, L={cfg.num_hidden_layers} H={cfg.hidden_size} "
            f"I={model.config.I} V={model.config.vocab_size} ({tokenizer.kind} tokenizer) | "
            f"corpus: {corpus.source}, {len(split.train):,} train / {len(split.val):,} val tokens")

    def trainer_state():
        return {"step": step, "tokens": tokens, "seconds": seconds, "rng": rng.bit_generator.state,
                "threads": threads,
                "train_config": dataclasses.asdict(cfg), "data_sha256": _fingerprint(corpus.text),
                "data_source": corpus.source}

    from .fast.memory import prepare_process
    prepare_process()                                          # keep freed memory for the next step
    threads = _choose_threads(cfg, state, model, split, tokenizer)
    if cfg.budget_minutes is not None and not resume:          # fix the step count that fills the budget
        from .recipes import size_to_budget
        cfg = size_to_budget(cfg, model, split, log)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, leave=True)
    t_start = time.perf_counter() - seconds0
    seconds = seconds0
    recent, result = [], None
    with _DeferredInterrupt() as interrupt:                     # Ctrl-C ends the run between steps
        while True:
            seconds = time.perf_counter() - t_start
            if step >= cfg.steps or (cfg.minutes is not None and seconds >= cfg.minutes * 60):
                break
            prog = step / cfg.steps
            if cfg.minutes is not None:
                prog = max(prog, seconds / (cfg.minutes * 60))
            step += 1
            lr = learning_rate(step, prog, cfg)
            batch = sample_batch(split.train, cfg.batch_size, cfg.seq_len, rng)   # (B, T + 1)
            loss, grads = model.loss_and_grads(batch, batch)
            if cfg.grad_clip:
                grads, _ = clip_grads(grads, cfg.grad_clip)
            opt.step(model.params, grads, lr=lr)
            tokens += cfg.batch_size * cfg.seq_len
            recent.append(loss)
            seconds = time.perf_counter() - t_start
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / max(seconds, 1e-9):,.0f}", refresh=False)
            last = step >= cfg.steps or (cfg.minutes is not None and seconds >= cfg.minutes * 60)
            if step % cfg.eval_every == 0 or last or step == stop_after:
                result = _evaluate_and_log(model, split, cfg, step, tokens, seconds, recent, lr, val_cpt,
                                           metrics_path, bar, log)
                recent = []
                save_checkpoint(out, model, tokenizer, opt, trainer_state())
            if interrupt.requested:
                save_checkpoint(out, model, tokenizer, opt, trainer_state())
                if bar is not None:
                    bar.close()
                log(f"\ninterrupted at step {step}; checkpoint saved in {out}. "
                    f"Continue with: minimmf train --resume --out {out}")
                raise KeyboardInterrupt
            if step == stop_after:
                break
    if bar is not None:
        bar.close()
    if result is None:                                          # resumed a finished run
        result = {"val_loss": float("nan"), "val_bpc": float("nan")}
    try:
        from .plots import plot_metrics
        plot_metrics(metrics_path, out / "loss.png")
    except ImportError:
        pass
    return RunResult(out, step, tokens, seconds, result["val_loss"], result["val_bpc"],
                     [json.loads(line) for line in metrics_path.read_text().splitlines()])


def _evaluate_and_log(model, split, cfg, step, tokens, seconds, recent, lr, val_cpt, path, bar, log):
    val = evaluate(model, split.val, cfg.seq_len, cfg.batch_size, cfg.eval_windows or None)
    rec = {"step": step, "tokens": tokens, "seconds": round(seconds, 3),
           "train_loss": float(np.mean(recent)) if recent else None, "val_loss": val,
           "val_bpc": val / val_cpt / math.log(2), "lr": lr,
           "ternary_zero_fraction": ternary_zero_fraction(model) if cfg.architecture == "mmfree" else None}
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    msg = (f"step {step}: train {rec['train_loss']:.3f}, val {val:.3f} nats/token = "
           f"{rec['val_bpc']:.3f} bits/char ({seconds:.0f} s)")
    (bar.write if bar is not None else log)(msg)
    return rec


def _choose_threads(cfg, state, model, split, tokenizer) -> int:
    """The thread count for the whole run (the last bits of BLAS products depend on it, see threads.py).

    A resumed run keeps the count it started with; -1 times a few forward+backward passes of a probe
    batch at each count (from its own random generator, so the run's batches are unchanged).
    """
    if "threads" in state:
        return set_threads(state["threads"])
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
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output directory {out} is not writable ({e.strerror}); pick another --out") from None
