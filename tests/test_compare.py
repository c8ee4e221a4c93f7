"""The comparison pipeline (minimmf/compare.py, `minimmf compare`): both models, every size, both budgets,
the JSON records with the documented fields, the fitted trend lines and the plot — on a tiny budget."""
import json
import math

import numpy as np
import pytest

from minimmf import compare
from minimmf.baseline import TransformerPP
from minimmf.__main__ import build_parser
from minimmf.checkpoint import load_checkpoint
from minimmf.demo import own_source_bytes

TINY = compare.Plan(sizes=(compare.Size(16, 1, 32), compare.Size(24, 1, 48), compare.Size(32, 1, 64)),
                    token_budget=8 * 256, minutes=0.02, seq_len=32, batch_size=8, warmup_steps=3, eval_windows=8)
FIELDS = {"model", "params", "train_tokens", "seconds", "val_bpc", "mults_per_token", "adds_per_token",
          "weight_bytes_per_token", "budget", "train_flops", "inference_weight_bytes"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    data = out / "corpus.txt"
    data.write_bytes(own_source_bytes().tobytes()[:60_000])
    return out, compare.run_comparison(out=out / "result", data=data, plan=TINY, log=lambda *a: None)


def test_comparison_writes_one_record_per_model_size_and_budget(run):
    """comparison.json: 2 models × 3 sizes × 2 budgets, each with the documented fields, finite bits/char."""
    out, records = run
    saved = json.loads((out / "result" / "comparison.json").read_text())
    assert saved == json.loads(json.dumps(records))
    assert len(saved) == 12
    assert {(r["model"], r["size"], r["budget"]) for r in saved} == {
        (m, s.name, b) for m in compare.MODELS for s in TINY.sizes for b in ("tokens", "time")}
    for r in saved:
        assert FIELDS <= set(r) and math.isfinite(r["val_bpc"]) and r["val_bpc"] > 0


def test_token_budget_runs_see_the_same_tokens_and_time_runs_the_same_seconds(run):
    """Same-token runs all train on exactly token_budget tokens; same-time runs stop at the last step that fits in
    the time budget (the next one would have taken about as long as the last)."""
    _, records = run
    tok = [r for r in records if r["budget"] == "tokens"]
    assert {r["train_tokens"] for r in tok} == {TINY.token_budget}
    limit = TINY.minutes * 60
    for r in (r for r in records if r["budget"] == "time"):
        step_s = r["seconds"] / r["steps"]                                   # a step's mean time in that run
        assert limit - 3 * step_s - 0.5 <= r["seconds"] < limit + 5


def test_mmfree_records_have_no_multiplications_in_matrix_products(run):
    """Per generated token MMfreeLM multiplies far less than Transformer++ at the same size, and reads
    fewer weight bytes (2-bit codes against float32)."""
    _, records = run
    for s in TINY.sizes:
        mm, tf = (next(r for r in records if r["model"] == m and r["size"] == s.name) for m in compare.MODELS)
        assert mm["mults_per_token"] * 3 < tf["mults_per_token"]
        assert mm["weight_bytes_per_token"] < tf["weight_bytes_per_token"]
        assert mm["inference_weight_bytes"] < tf["inference_weight_bytes"]


def test_runs_are_checkpointed_with_their_architecture(run):
    """Every run directory holds a checkpoint that loads back as the model it trained."""
    out, _ = run
    ck = load_checkpoint(out / "result" / "runs" / "tokens-transformerpp-H16-L1")
    assert ck.model.architecture == "transformer++" and ck.model.config.hidden_size == 16
    assert isinstance(ck.model, TransformerPP) and ck.trainer["train_config"]["architecture"] == "transformer++"


def test_meta_holds_the_fitted_trend_lines_and_the_plot_is_written(run):
    """comparison_meta.json has a power-law fit per model: vs params for both budgets, vs FLOPs for the token
    budget; comparison.png is a real image."""
    out, _ = run
    meta = json.loads((out / "result" / "comparison_meta.json").read_text())
    assert sorted((f["budget"], f["x"]) for f in meta["fits"]) == sorted(
        [("tokens", "params"), ("tokens", "train_flops"), ("time", "params")] * 2)
    assert (out / "result" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_power_law_fit_recovers_an_exact_power_law():
    """fit_power_law: y = 3 x^-0.2 gives back a = ln 3, b = -0.2."""
    x = np.array([1e4, 1e5, 1e6])
    a, b = compare.fit_power_law(x, 3 * x ** -0.2)
    assert a == pytest.approx(np.log(3)) and b == pytest.approx(-0.2)


def test_cli_has_the_compare_command():
    """`minimmf compare [--quick] --out DIR` parses."""
    args = build_parser().parse_args(["compare", "--quick", "--out", "x"])
    assert args.command == "compare" and args.quick and args.out == "x"
