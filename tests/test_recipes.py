"""Budget-sized recipes: the table row a budget picks, the step count that fills it, the evaluation cadence,
and a run sized to a budget that is step-based (so it can be repeated and resumed)."""
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from minimmf import recipes
from minimmf.__main__ import build_parser
from minimmf.checkpoint import load_checkpoint
from minimmf.demo import own_source_bytes
from minimmf.recipes import (RECIPES, eval_every_for, recipe_config, recipe_for, size_to_budget,
                             steps_for_budget)
from minimmf.train import TrainConfig, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_bytes(own_source_bytes().tobytes()[:40_000])
    return path


def test_recipe_rows_are_in_increasing_budget_and_valid_configs():
    """Each tokenizer's rows are sorted by budget, and every row makes a valid TrainConfig."""
    for tok, rows in RECIPES.items():
        assert [r.minutes for r in rows] == sorted({r.minutes for r in rows})
        for r in rows:
            cfg = recipe_config(r.minutes, tok)
            assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.batch_size, cfg.seq_len,
                    cfg.lr, cfg.min_lr_ratio) == (r.hidden_size, r.num_hidden_layers, r.intermediate_size,
                                                  r.batch_size, r.seq_len, r.lr, r.min_lr_ratio)
            assert cfg.tokenizer == tok and cfg.budget_minutes == r.minutes and cfg.minutes is None


@pytest.mark.parametrize("tok", sorted(RECIPES))
def test_a_budget_uses_the_row_of_the_largest_budget_not_above_it(tok):
    """M minutes -> the row with the largest budget <= M; below every row, the smallest row."""
    rows = RECIPES[tok]
    for i, r in enumerate(rows):
        assert recipe_for(r.minutes, tok) is r
        nxt = rows[i + 1].minutes if i + 1 < len(rows) else r.minutes * 10
        assert recipe_for((r.minutes + nxt) / 2, tok) is r
    assert recipe_for(rows[0].minutes / 4, tok) is rows[0]


def test_recipe_for_rejects_a_bad_budget_or_tokenizer():
    """A non-positive budget or an unknown tokenizer is an error naming it."""
    with pytest.raises(ValueError, match="minutes"):
        recipe_for(0, "char")
    with pytest.raises(ValueError, match="tokenizer"):
        recipe_for(1, "words")


def test_steps_fill_the_budget_after_the_evaluations():
    """steps * step time + evaluations * evaluation time = FILL of the budget (rounded down), at least 1."""
    steps = steps_for_budget(60.0, 0.02, 0.1, evaluations=12, fill=0.97)
    assert steps == int((60 * 0.97 - 12 * 0.1) / 0.02)
    assert steps * 0.02 + 12 * 0.1 <= 60 * 0.97 < (steps + 1) * 0.02 + 12 * 0.1
    assert steps_for_budget(1.0, 5.0, 0.0) == 1


@pytest.mark.parametrize("steps", [1, 5, 11, 12, 13, 23, 24, 100, 2711, 40_000])
def test_a_run_of_any_length_is_evaluated_at_least_twelve_times(steps):
    """Evaluations at every eval_every-th step (and the last): every step below 12, else 12 to 23 of them."""
    every = eval_every_for(steps)
    n = len(set(range(every, steps + 1, every)) | {steps})
    assert n == steps if steps < recipes.EVALUATIONS else recipes.EVALUATIONS <= n < 2 * recipes.EVALUATIONS


@pytest.mark.parametrize("flags, budget, minutes, preset_steps", [
    (["--minutes", "2", "--tokenizer", "char"], 2.0, None, False),
    (["--minutes", "2", "--preset", "tiny"], None, 2.0, True),
    (["--minutes", "2", "--steps", "50"], None, 2.0, False),
    ([], None, 5.0, True),
])
def test_minutes_alone_picks_the_recipe_and_otherwise_only_stops_the_run(flags, budget, minutes, preset_steps):
    """`--minutes M` alone -> the recipe, sized to M; with --preset or --steps (or neither flag) the preset runs and
    the minutes are a time limit."""
    from minimmf.__main__ import train_config
    from minimmf.train import PRESETS
    cfg = train_config(build_parser().parse_args(["train", *flags]))
    assert (cfg.budget_minutes, cfg.minutes) == (budget, minutes)
    if budget:
        r = recipe_for(budget, "char")
        assert (cfg.tokenizer, cfg.hidden_size, cfg.batch_size, cfg.lr) == ("char", r.hidden_size, r.batch_size, r.lr)
    if preset_steps:
        assert cfg.steps == PRESETS["tiny"].steps


def test_sizing_times_a_copy_and_leaves_the_model_untouched(corpus):
    """size_to_budget fixes steps, warm-up and cadence from timed steps of a copy; the model keeps its bits."""
    from minimmf.data import encode_split, load_corpus, split_text
    from minimmf.tokenizer import train_char
    cfg = TrainConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, tokenizer="char", seq_len=16,
                      batch_size=4, eval_windows=4, threads=1, minutes=None, budget_minutes=0.05)
    text = load_corpus(corpus).text
    tok = train_char(text)
    split = encode_split(tok, *split_text(text))
    model = cfg.build_model(tok.vocab_size)
    before = {k: v.copy() for k, v in model.params.items() if isinstance(v, np.ndarray)}
    sized = size_to_budget(cfg, model, split, log=lambda *a: None)
    assert sized.steps >= 1 and sized.eval_every == eval_every_for(sized.steps)
    assert sized.warmup_steps == max(1, round(recipes.WARMUP_FRACTION * sized.steps))
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


def test_a_budget_sized_run_is_step_based_and_records_its_step_count(tmp_path, corpus, monkeypatch):
    """The run does exactly the sized steps when the machine keeps up (the clock only backstops), ~12
    evaluations, and the checkpoint holds the step count, so a resumed run continues the same schedule."""
    monkeypatch.setattr(recipes, "steps_for_budget", lambda *a, **k: 24)       # a known count
    monkeypatch.setattr(recipes, "AHEAD", 1.0)                                  # the run keeps to its plan
    cfg = TrainConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, tokenizer="char", seq_len=16,
                      batch_size=4, eval_windows=4, threads=1, minutes=None, budget_minutes=2.0)
    r = train(cfg, tmp_path, data=corpus, progress=False, log=lambda *a: None)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert r.step == 24 and [x["step"] for x in recs] == list(range(2, 25, 2))
    saved = load_checkpoint(tmp_path).trainer["train_config"]
    assert saved["steps"] == 24 and saved["budget_minutes"] == 2.0 and saved["eval_every"] == 2
    assert saved["minutes"] == 2.0                                              # the backstop, saved too
    assert saved["budget_checked_at"] == 2                                      # checked once, at the first eval


def _budget_cfg(steps, minutes=10.0):
    return TrainConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, tokenizer="char", steps=steps,
                       eval_every=eval_every_for(steps), minutes=minutes, budget_minutes=minutes)


@given(step_ms=st.floats(1, 2000), eval_s=st.floats(0, 5), slow=st.floats(0.2, 0.85),
       minutes=st.sampled_from([1, 2, 5, 10, 60]))
@example(step_ms=1.0, eval_s=2.0, slow=0.25, minutes=1)                         # ends at FILL to the last bit
def test_a_run_ahead_of_its_plan_is_stretched_to_end_at_the_budget(step_ms, eval_s, slow, minutes):
    """A plan timed in a slow moment (steps that take only ``slow`` of the timed time): at its first evaluation
    the run's own pace says it would end early, so the plan grows until the steps left, at that pace, and the
    evaluations left end within one step of FILL of the budget; the cadence follows the new step count."""
    budget = minutes * 60
    step_s = step_ms / 1e3
    planned = steps_for_budget(budget, step_s / slow, eval_s)                   # what the slow timing planned
    assume(planned >= 24)
    cfg = _budget_cfg(planned, minutes)
    k = cfg.eval_every                                                          # the first evaluation
    elapsed = k * step_s + eval_s
    new = recipes.check_pace(cfg, k, k, k * step_s, eval_s, elapsed, log=lambda *a: None)
    finish = lambda n: elapsed + (n - k) * step_s + recipes.EVALUATIONS * eval_s  # noqa: E731
    assert new.budget_checked_at == k
    if finish(planned) < budget * (recipes.FILL - recipes.AHEAD):
        fill, tol = budget * recipes.FILL, budget * 1e-12                      # tol: rounding of the sums only
        assert new.steps > planned and fill - step_s - tol < finish(new.steps) <= fill + tol
        assert new.eval_every == eval_every_for(new.steps)
        assert (new.warmup_steps, new.lr, new.minutes) == (cfg.warmup_steps, cfg.lr, cfg.minutes)
    else:
        assert new == dataclasses.replace(cfg, budget_checked_at=k)


@pytest.mark.parametrize("pace", [1.0, 1.3, 3.0])
def test_a_run_on_or_behind_its_plan_keeps_it(pace):
    """Steps as fast as timed, or slower: nothing to stretch (the clock's backstop handles slower); only the
    check is recorded. Past the midpoint (the halving) the plan is never changed."""
    cfg = _budget_cfg(3000, 10.0)
    step_s = 0.97 * 600 / 3000 * pace                                           # the plan's own pace, or slower
    k = cfg.eval_every
    new = recipes.check_pace(cfg, k, k, k * step_s, 0.0, k * step_s, log=lambda *a: None)
    assert new == dataclasses.replace(cfg, budget_checked_at=k)
    late = recipes.check_pace(cfg, 1500, 1500, 1.0, 0.0, 1.0, log=lambda *a: None)   # far ahead, but halfway
    assert late == dataclasses.replace(cfg, budget_checked_at=1500)


def test_a_budget_sized_run_ahead_of_its_plan_uses_its_budget_and_resumes_without_a_second_check(
        tmp_path, corpus, monkeypatch):
    """Timed steps that said 24 steps fill 3 s (the machine then runs them much faster): the run stretches its
    plan at its first evaluation, makes more steps, and records where it checked; resuming the run continues
    the stretched plan and does not check again."""
    monkeypatch.setattr(recipes, "steps_for_budget", lambda *a, **k: 24)
    lines = []
    cfg = TrainConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, tokenizer="char", seq_len=16,
                      batch_size=4, eval_windows=4, threads=1, minutes=None, budget_minutes=0.05)
    r = train(cfg, tmp_path, data=corpus, progress=False, log=lines.append, stop_after=30)
    saved = load_checkpoint(tmp_path).trainer["train_config"]
    assert saved["budget_checked_at"] == 2 and saved["steps"] > 24 and r.step == 30
    assert any("stretched to" in line for line in lines)
    again = train(None, tmp_path, resume=True, progress=False, log=lines.append, stop_after=32)
    resaved = load_checkpoint(tmp_path).trainer["train_config"]
    assert again.step == 32 and resaved["steps"] == saved["steps"] and resaved["budget_checked_at"] == 2


def test_a_budget_sized_run_ends_at_the_budget_on_a_machine_slower_than_its_timed_steps(tmp_path, corpus,
                                                                                        monkeypatch):
    """If the steps turn out slower than the timed warm-up said (here: far more steps than the budget holds), the
    clock ends the run at the budget, and the schedule still completes: the last step runs near the cosine's end."""
    from minimmf.schedule import learning_rate
    monkeypatch.setattr(recipes, "steps_for_budget", lambda *a, **k: 10**6)    # "the machine slowed down"
    budget = 0.02                                                               # 1.2 s
    cfg = TrainConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, tokenizer="char", seq_len=16,
                      batch_size=4, eval_windows=4, threads=1, minutes=None, budget_minutes=budget)
    r = train(cfg, tmp_path, data=corpus, progress=False, log=lambda *a: None)
    assert 1 <= r.step < 10**6 and r.seconds < 30                               # stopped by the clock, early
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == r.step                                           # evaluated and saved at the end
    saved = load_checkpoint(tmp_path).trainer["train_config"]
    sized = TrainConfig(**{**saved, "betas": tuple(saved["betas"])})
    assert sized.minutes == budget and sized.steps == 10**6
    # the last step ran near the schedule's end (progress by the clock: it started just before the budget ran out)
    assert learning_rate(r.step, 1.0, sized) <= recs[-1]["lr"] <= learning_rate(r.step, 0.8, sized)


def test_a_run_the_clock_ended_makes_no_more_steps_when_resumed(tmp_path, corpus, monkeypatch):
    """The time limit ends a run at the last step that fits, before the limit itself: resuming it must not read
    the few seconds left as time for one more step."""
    monkeypatch.setattr(recipes, "steps_for_budget", lambda *a, **k: 10**6)
    cfg = TrainConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, tokenizer="char", seq_len=16,
                      batch_size=4, eval_windows=4, threads=1, minutes=None, budget_minutes=0.02)
    first = train(cfg, tmp_path, data=corpus, progress=False, log=lambda *a: None)
    assert load_checkpoint(tmp_path).trainer["time_up"] is True
    again = train(None, tmp_path, resume=True, progress=False, log=lambda *a: None)
    assert again.step == first.step
