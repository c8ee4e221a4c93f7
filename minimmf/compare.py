"""The paper's comparison in miniature: MMfreeLM vs Transformer++ at several sizes, same corpus, tokenizer,
trainer, data pipeline and optimizer; each trained once for the same token budget and once for the same
wall-clock budget.

    run_comparison(quick, out)  ->  OUT/comparison.json        one record per model, size and budget
                                    OUT/comparison_meta.json   plan, recipes, environment, fitted trend lines
                                    OUT/comparison.png         bits/char vs parameters and vs training FLOPs
                                                               (log axes, fitted lines), memory at inference
                                    OUT/runs/...               every training run (metrics.jsonl, checkpoint)

Recipes (paper §4 and SPEC §6; the constants below):
    MMfreeLM       peak lr 4e-3 (the paper's 370M value), cosine to 0.1x, halved midway
    Transformer++  peak lr 3e-3, cosine to 0.1x, no halving. The paper uses 3e-4 at 370M+; at 0.5M
                   parameters and 300 steps a pilot measured here (H128-L3, see chapter 14) gave 3.51 / 3.03 /
                   2.87 / 2.89 bits/char for 3e-4 / 1e-3 / 3e-3 / 6e-3, so 3e-3, the best of that grid. (MMfreeLM
                   in the same pilot: 2.70 / 2.67 / 2.67 for 2e-3 / 4e-3 / 8e-3, so the paper's 4e-3 stays.)
Both: the same warm-up, AdamW (0.9, 0.95), weight decay 0.01, gradient clipping 1.0, batches and seed.

Taught in chapter 14 (``chapters/14-matmul-free-vs-transformer.md``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import opcount
from .architectures import architecture_of
from .checkpoint import load_checkpoint
from .train import TrainConfig, train
from .tree import leaves

MODELS = ("mmfree", "transformer++")
RECIPES = {"mmfree": {"lr": 4e-3, "halve_lr_midway": True},
           "transformer++": {"lr": 3e-3, "halve_lr_midway": False}}
LONG_CONTEXT = 2048          # context length for the memory-at-inference comparison


@dataclass(frozen=True)
class Size:
    hidden_size: int          # H
    num_hidden_layers: int    # L
    intermediate_size: int    # I (the same for both models, so the matrix sizes agree)

    @property
    def name(self) -> str:
        return f"H{self.hidden_size}-L{self.num_hidden_layers}"


@dataclass(frozen=True)
class Plan:
    sizes: tuple              # of Size
    token_budget: int         # training tokens per run in the same-token regime
    minutes: float            # wall-clock per run in the same-time regime
    seq_len: int = 128
    batch_size: int = 16
    warmup_steps: int = 50
    eval_windows: int = 128   # validation windows of seq_len for the final evaluation
    tokenizer: str = "char"   # one token per character: bits/char needs no conversion, embeddings stay small
    seed: int = 0


QUICK = Plan(sizes=(Size(32, 1, 64), Size(48, 2, 96), Size(64, 2, 128)), token_budget=40 * 512,
             minutes=0.1, seq_len=64, batch_size=8, warmup_steps=10, eval_windows=32)
FULL = Plan(sizes=(Size(64, 2, 128), Size(96, 3, 192), Size(128, 4, 256), Size(192, 4, 384)),
            token_budget=400 * 2048, minutes=1.0)


def run_config(model: str, size: Size, plan: Plan, budget: str) -> TrainConfig:
    """The trainer's settings for one run. ``budget`` is "tokens" (fixed steps) or "time" (fixed minutes)."""
    assert model in MODELS and budget in ("tokens", "time")
    steps = plan.token_budget // (plan.batch_size * plan.seq_len) if budget == "tokens" else 10**8
    return TrainConfig(architecture=model, hidden_size=size.hidden_size, num_hidden_layers=size.num_hidden_layers,
                       intermediate_size=size.intermediate_size, tokenizer=plan.tokenizer, seq_len=plan.seq_len,
                       batch_size=plan.batch_size, warmup_steps=plan.warmup_steps, steps=steps,
                       minutes=plan.minutes if budget == "time" else None, eval_every=10**9,
                       eval_windows=plan.eval_windows, seed=plan.seed, min_lr_ratio=0.1, **RECIPES[model])


def inference_memory(model, context: int) -> dict:
    """Bytes held to generate the next token after ``context`` tokens: weights (MMfreeLM packed 2-bit,
    Transformer++ float32 — the arrays' nbytes) plus the decoding state (derived: MLGRU state L·H floats,
    KV cache 2·L·S·H floats)."""
    c = model.config
    if not architecture_of(model).ternary:
        weights = sum(int(a.nbytes) for _, a in leaves(model.params))
        state = model.kv_cache_bytes(1, context)
    else:
        weights = model.pack().resident_bytes()
        state = c.num_hidden_layers * c.hidden_size * np.dtype(model.dtype).itemsize
    return {"weights": weights, "state": state}


def record(model_name: str, size: Size, plan: Plan, budget: str, result, model) -> dict:
    """One line of comparison.json: what was trained, what it reached, and what a token costs."""
    ops = opcount.totals(opcount.ops_per_token(model, context=plan.seq_len))
    mem = inference_memory(model, LONG_CONTEXT)
    flops_tok = opcount.training_flops_per_token(model, plan.seq_len)
    return {"model": model_name, "size": size.name, "hidden_size": size.hidden_size,
            "num_hidden_layers": size.num_hidden_layers, "intermediate_size": size.intermediate_size,
            "params": model.num_params(), "budget": budget, "steps": result.step,
            "train_tokens": result.tokens, "seconds": round(result.seconds, 2),
            "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9), 1),
            "val_loss": result.val_loss, "val_bpc": result.val_bpc,
            "train_flops": result.tokens * flops_tok,
            "mults_per_token": ops["mults"], "adds_per_token": ops["adds"],
            "weight_bytes_per_token": ops["weight_bytes"], "cache_bytes_per_token": ops["cache_bytes"],
            "ops_context": plan.seq_len,
            "inference_weight_bytes": mem["weights"], f"state_bytes_at_{LONG_CONTEXT}": mem["state"],
            "lr": RECIPES[model_name]["lr"]}


def fit_power_law(x, y) -> tuple[float, float]:
    """Least squares of log y = a + b log x. Returns (a, b): y ≈ e^a x^b."""
    b, a = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(a), float(b)


def fits(records: list[dict]) -> list[dict]:
    """Trend lines of val_bpc against params (both budgets) and against train_flops (token budget only: under
    a time budget every run gets about the same FLOPs, so a line through them says nothing), per model."""
    out = []
    for budget in ("tokens", "time"):
        for m in MODELS:
            rs = [r for r in records if r["model"] == m and r["budget"] == budget]
            if len(rs) < 2:
                continue
            for xkey in ("params", "train_flops") if budget == "tokens" else ("params",):
                a, b = fit_power_law([r[xkey] for r in rs], [r["val_bpc"] for r in rs])
                out.append({"model": m, "budget": budget, "x": xkey, "log_intercept": a, "exponent": b})
    return out


def run_comparison(quick: bool = False, out="runs/compare", data=None, plan: Plan | None = None,
                   progress: bool = False, log=print) -> list[dict]:
    """Train every (model, size, budget) of the plan (QUICK or FULL unless ``plan`` is given) and write
    comparison.json, comparison_meta.json and comparison.png into ``out``. Returns the records."""
    plan = plan or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, t0 = [], time.perf_counter()
    for budget in ("tokens", "time"):
        for size in plan.sizes:
            for m in MODELS:
                cfg = run_config(m, size, plan, budget)
                run_dir = out / "runs" / f"{budget}-{m.replace('+', 'p')}-{size.name}"
                r = train(cfg, run_dir, data=data, progress=progress, log=lambda *a: None,
                          overwrite=True)                            # the sweep owns these run folders
                model = load_checkpoint(run_dir, with_optimizer=False).model
                records.append(record(m, size, plan, budget, r, model))
                x = records[-1]
                log(f"[{time.perf_counter() - t0:6.0f} s] {budget:6s} {m:13s} {size.name:8s} "
                    f"{x['params']:>9,} params  {x['train_tokens']:>9,} tokens  {x['seconds']:6.1f} s  "
                    f"{x['val_bpc']:.3f} bits/char")
    (out / "comparison.json").write_text(json.dumps(records, indent=1))
    meta = {"plan": dataclasses.asdict(plan), "recipes": RECIPES, "fits": fits(records),
            "environment": environment(), "total_seconds": round(time.perf_counter() - t0, 1),
            "data": str(data) if data is not None else "default corpus (Shakespeare, minimmf.data.load_corpus)"}
    (out / "comparison_meta.json").write_text(json.dumps(meta, indent=1))
    plot_comparison(records, out / "comparison.png")
    return records


def environment() -> dict:
    """What the numbers were measured on."""
    import numba
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
            **{k: os.environ.get(k) for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


# ----------------------------------------------------------------------------- presentation

def format_table(records: list[dict]) -> str:
    """A Markdown table of the records."""
    head = ("| budget | model | size | params | tokens | seconds | val bits/char | train FLOPs | "
            "mults/token | adds/token | weight bytes/token |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {r['budget']} | {r['model']} | {r['size']} | {r['params']:,} | {r['train_tokens']:,} | "
            f"{r['seconds']:.0f} | {r['val_bpc']:.3f} | {r['train_flops']:.2e} | {r['mults_per_token']:,} | "
            f"{r['adds_per_token']:,} | {r['weight_bytes_per_token']:,} |" for r in records]
    return "\n".join([head, *rows])


STYLE = {"mmfree": ("tab:blue", "o", "MMfreeLM"), "transformer++": ("tab:orange", "s", "Transformer++")}


def plot_comparison(records: list[dict], png) -> Path:
    """Four panels: bits/char vs parameters (same tokens; same time), bits/char vs training FLOPs (both
    budgets), inference memory vs context (the largest size). Log axes and fitted power laws, like the
    paper's scaling figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    panels = [(ax[0, 0], "tokens", "params", "parameters", "same token budget"),
              (ax[0, 1], "time", "params", "parameters", "same wall-clock budget"),
              (ax[1, 0], None, "train_flops", "training FLOPs (derived: 3 × forward)",
               "both budgets (filled: same tokens, fitted; hollow: same time)")]
    for a, budget, xkey, xlabel, title in panels:
        for m in MODELS:
            color, marker, label = STYLE[m]
            for b, fill in (("tokens", color), ("time", "none")):
                if budget not in (None, b):
                    continue
                rs = sorted((r for r in records if r["model"] == m and r["budget"] == b), key=lambda r: r[xkey])
                if not rs:
                    continue
                x = np.array([r[xkey] for r in rs], float)
                y = np.array([r["val_bpc"] for r in rs], float)
                a.plot(x, y, marker, color=color, mfc=fill, ms=7,
                       label=f"{label} ({b} budget)" if budget is None else label)
                if len(rs) >= 2 and (budget is not None or b == "tokens"):   # no FLOPs fit under a time budget
                    ca, cb = fit_power_law(x, y)
                    xs = np.geomspace(x.min(), x.max(), 50)
                    a.plot(xs, np.exp(ca) * xs ** cb, "-" if b == "tokens" else "--", color=color, lw=1,
                           label=f"fit: ∝ x^{cb:.3f}")
        a.set_xscale("log")
        a.set_yscale("log")
        a.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        a.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2f"))
        a.set_xlabel(xlabel)
        a.set_ylabel("validation bits per character")
        a.set_title(title)
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    a = ax[1, 1]
    big = max(records, key=lambda r: r["params"])
    S = np.geomspace(1, 32768, 60)
    for m in MODELS:
        r = next((r for r in records if r["model"] == m and r["size"] == big["size"]), None)
        if r is None:
            continue
        color, _, label = STYLE[m]
        L, H = r["num_hidden_layers"], r["hidden_size"]
        state = np.full_like(S, L * H * 4) if m == "mmfree" else 2 * L * H * 4 * S
        a.plot(S, (r["inference_weight_bytes"] + state) / 1e6, color=color, label=f"{label}: weights + state")
        a.axhline(r["inference_weight_bytes"] / 1e6, color=color, ls=":", lw=1)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("context length (tokens)")
    a.set_ylabel("MB held at inference (derived)")
    a.set_title(f"memory at inference, {big['size']} (dotted: weights alone)")
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=8)
    fig.suptitle("MMfreeLM vs Transformer++ in miniature (measured here)")
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png
