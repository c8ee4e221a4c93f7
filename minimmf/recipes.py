"""Training recipes sized to a wall-clock budget: ``minimmf train --minutes M`` picks the model, the batch and the
learning-rate schedule from a small table of measured choices, and fixes a step count that ends at the budget.

The table (``RECIPES``) holds, per tokenizer, one row per budget where the sweep found a better choice than the row
before (``benchmarks/README.md``, "Budget-sized recipes", says what was tried, how, and what each choice gave). A
budget of M minutes uses the row of the largest budget <= M (the smallest row below that).

Why a fixed step count, not a clock: if the schedule followed the wall clock, the learning rate of every step
would depend on how busy the machine was at that moment, so no run could be repeated, or resumed, bit for bit.
Instead ``size_to_budget`` times a few training steps before the run starts (on a copy of the model, so the
run itself is untouched), and one evaluation with its checkpoint, and fixes

    steps = (M * 60 * FILL - evaluations * (eval + checkpoint)) / step_time

From then on the run is step-based: the paper's schedule (warm-up, cosine, halved midway; ``train.py``) runs
over exactly ``steps`` steps, and ``steps`` is saved in the checkpoint with every other setting, so ``--resume``
continues the same run. The budget stays a limit as well (``TrainConfig.minutes``): on a machine that turns
slower during the run than in the timed steps (a shared machine does: one 10-minute run's steps took 185 to 286
ms as other work came and went, measured), the schedule's progress becomes the fraction of the budget used once
that is ahead of the fraction of steps done, so the schedule still completes and the run ends at the budget, with
fewer steps. Only such a run depends on the clock; a run the machine keeps up with is bit for bit repeatable.

A plan timed in a slow moment leaves time unused (one 10-minute run timed 170 ms per step and finished its steps
in 523 s: measured). So the run checks its pace once, at its first evaluation (about 1/12 of the way, past the
warm-up): when the steps made so far, at the pace they were made, plus the evaluations, would finish its plan
more than ``AHEAD`` early, ``check_pace`` stretches the plan to fill the budget (``steps`` and ``eval_every``
grow; the cosine, not yet far from its peak, moves a little). The check happens once (``budget_checked_at``
records where) and is saved with the rest, so a resumed run keeps the stretched plan and does not check again.
A run that keeps to its plan is untouched: it still repeats bit for bit.

Evaluations are spread over the run too: ``EVALUATIONS`` of them whatever its length, so even a one-minute
run's ``loss.png`` draws a curve.
"""
from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass

import numpy as np

EVALUATIONS = 12          # evaluations (and checkpoints) per budget-sized run
FILL = 0.97               # the fraction of the budget the timed steps are planned to fill (the rest: noise)
WARMUP_FRACTION = 0.03    # warm-up steps as a fraction of the run (nanoGPT's character model: 100 of 5,000)
PROBE_SECONDS = 1.5       # how long the timed warm-up runs (after two untimed steps), at most
PROBE_STEPS = 20          # ... or this many timed steps, whichever comes first
AHEAD = 0.05              # check_pace stretches a plan that would end more than this fraction of the budget early


@dataclass(frozen=True)
class Recipe:
    minutes: float            # the budget this row was chosen for (it is used for budgets from here up)
    hidden_size: int          # H
    num_hidden_layers: int    # L
    intermediate_size: int    # I of the GLU
    batch_size: int           # B windows per step
    seq_len: int              # T tokens per window
    lr: float                 # peak learning rate
    vocab_size: int = 0       # BPE vocabulary size (0 for the char tokenizer)
    min_lr_ratio: float = 0.1  # where the cosine ends, as a fraction of the peak (TrainConfig's default)


# Measured choices (benchmarks/README.md, "Budget-sized recipes"); rows in increasing budget.
RECIPES = {
    "char": (   # swept at 1, 2, 5 and 10 minutes (fixed-step candidates, 2026-11-30; benchmarks/README.md)
        Recipe(minutes=1, hidden_size=128, num_hidden_layers=2, intermediate_size=256, batch_size=16, seq_len=128,
               lr=6e-3, min_lr_ratio=0.0),
        Recipe(minutes=2, hidden_size=128, num_hidden_layers=3, intermediate_size=256, batch_size=16, seq_len=128,
               lr=6e-3, min_lr_ratio=0.0),
        Recipe(minutes=10, hidden_size=128, num_hidden_layers=4, intermediate_size=256, batch_size=32, seq_len=64,
               lr=6e-3, min_lr_ratio=0.0),
    ),
    "bpe": (
        Recipe(minutes=1, hidden_size=128, num_hidden_layers=4, intermediate_size=256, batch_size=16, seq_len=64,
               lr=5e-3, vocab_size=2048),
        Recipe(minutes=5, hidden_size=128, num_hidden_layers=4, intermediate_size=256, batch_size=16, seq_len=128,
               lr=4e-3, vocab_size=2048),
        Recipe(minutes=30, hidden_size=256, num_hidden_layers=6, intermediate_size=512, batch_size=16, seq_len=256,
               lr=3e-3, vocab_size=4096),
    ),
}


def recipe_for(minutes: float, tokenizer: str) -> Recipe:
    """The row for a budget of ``minutes``: the largest budget <= minutes (the smallest row below all of them)."""
    if tokenizer not in RECIPES:
        raise ValueError(f"tokenizer must be one of {', '.join(RECIPES)}, got {tokenizer!r}")
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    rows = RECIPES[tokenizer]
    fitting = [r for r in rows if r.minutes <= minutes]
    return fitting[-1] if fitting else rows[0]


def recipe_config(minutes: float, tokenizer: str = "bpe"):
    """A TrainConfig for a budget of ``minutes``: the recipe's model, batch and peak rate; the step count, the
    warm-up and the evaluation cadence are fixed by ``size_to_budget`` when the run starts."""
    from .train import TrainConfig
    r = recipe_for(minutes, tokenizer)
    return TrainConfig(hidden_size=r.hidden_size, num_hidden_layers=r.num_hidden_layers,
                       intermediate_size=r.intermediate_size, tokenizer=tokenizer,
                       vocab_size=r.vocab_size or TrainConfig.vocab_size, seq_len=r.seq_len,
                       batch_size=r.batch_size, lr=r.lr, min_lr_ratio=r.min_lr_ratio, minutes=None,
                       budget_minutes=float(minutes))


def steps_for_budget(budget_s: float, step_s: float, eval_s: float, evaluations: int = EVALUATIONS,
                     fill: float = FILL) -> int:
    """The number of steps whose time, plus ``evaluations`` evaluations, fills ``fill`` of ``budget_s`` (>= 1)."""
    if not (step_s > 0 and eval_s >= 0 and budget_s > 0):
        raise ValueError(f"need step_s > 0, eval_s >= 0, budget_s > 0; got {step_s}, {eval_s}, {budget_s}")
    return max(1, int((budget_s * fill - evaluations * eval_s) / step_s))


def eval_every_for(steps: int, evaluations: int = EVALUATIONS) -> int:
    """Steps between evaluations so that a run of ``steps`` steps is evaluated at least ``evaluations`` times
    (every step if it has fewer; the last step is always evaluated as well)."""
    return max(1, steps // evaluations)


def timed_step(model, opt, cfg, train_tokens, rng) -> float:
    """Seconds of one training step of ``model`` as a run of ``cfg`` makes it (a batch drawn from ``train_tokens``
    by ``rng``, gradients, clipping, the optimizer's update at 1% of the peak rate), the batch draw not counted."""
    from .data import sample_batch
    from .optim import clip_grads
    batch = sample_batch(train_tokens, cfg.batch_size, cfg.seq_len, rng)
    t0 = time.perf_counter()
    _, grads = model.loss_and_grads(batch, batch)
    if cfg.grad_clip:
        grads, _ = clip_grads(grads, cfg.grad_clip)
    opt.step(model.params, grads, lr=cfg.lr * 0.01)
    return time.perf_counter() - t0


def size_to_budget(cfg, model, split, log=print):
    """``cfg`` with ``steps``, ``warmup_steps`` and ``eval_every`` fixed so the run fills ``cfg.budget_minutes``,
    and ``minutes`` set to the budget: the backstop for a machine that turns slower than the timed steps said.

    Times training steps on a deep copy of ``model`` (batches from their own generator, seeded ``seed + 2``),
    then one evaluation and one checkpoint of the copy; ``model`` and the run's generator are not touched.
    Call it after the thread count is set: the time per step depends on it.
    """
    from .checkpoint import save_checkpoint
    from .optim import AdamW
    from .train import evaluate
    probe = copy.deepcopy(model)
    opt = AdamW(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 2)

    def one_step():
        return timed_step(probe, opt, cfg, split.train, rng)

    one_step(), one_step()                                          # compile, fault in the optimizer state
    times, t_end = [], time.perf_counter() + PROBE_SECONDS
    while len(times) < PROBE_STEPS and (len(times) < 3 or time.perf_counter() < t_end):
        times.append(one_step())
    step_s = float(np.median(times))
    t0 = time.perf_counter()
    evaluate(probe, split.val, cfg.seq_len, cfg.batch_size, cfg.eval_windows or None)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, probe, None, opt, {})
    eval_s = time.perf_counter() - t0
    steps = steps_for_budget(cfg.budget_minutes * 60, step_s, eval_s)
    log(f"budget {cfg.budget_minutes:g} min: {step_s * 1e3:.1f} ms/step and {eval_s:.2f} s per evaluation "
        f"measured -> {steps:,} steps, evaluated every {eval_every_for(steps):,}")
    return dataclasses.replace(cfg, steps=steps, warmup_steps=max(1, round(WARMUP_FRACTION * steps)),
                               eval_every=eval_every_for(steps), minutes=cfg.budget_minutes)


def check_pace(cfg, step: int, steps_timed: int, train_s: float, eval_s: float, elapsed_s: float, log=print):
    """``cfg`` after its one check of pace, at its first evaluation (``budget_checked_at`` = step): with ``steps``
    stretched when the run is ahead of its plan, else the same plan.

    ``steps_timed`` steps took ``train_s`` seconds (this session's steps, evaluations not counted); the evaluation
    and checkpoint just done took ``eval_s``; ``elapsed_s`` of the budget are used. At that pace the remaining
    steps and EVALUATIONS more evaluations would end at ``finish``; if that is more than AHEAD of the budget
    early, the step count becomes the one that fills ``FILL`` of it at that pace.
    """
    budget_s = cfg.budget_minutes * 60
    checked = dataclasses.replace(cfg, budget_checked_at=step)
    if steps_timed < 1 or train_s <= 0 or step * 2 >= cfg.steps:     # too little to go on, or past the midpoint
        return checked
    step_s = train_s / steps_timed
    finish = elapsed_s + (cfg.steps - step) * step_s + EVALUATIONS * eval_s
    if finish >= budget_s * (FILL - AHEAD):
        return checked
    steps = step + int((budget_s * FILL - elapsed_s - EVALUATIONS * eval_s) / step_s)   # > cfg.steps, as finish <
    log(f"at step {step:,}: {step_s * 1e3:.1f} ms/step so far, the plan of {cfg.steps:,} steps would end at "
        f"{finish:.0f} s of {budget_s:.0f}: stretched to {steps:,} steps, evaluated every {eval_every_for(steps):,}")
    return dataclasses.replace(checked, steps=steps, eval_every=eval_every_for(steps))
