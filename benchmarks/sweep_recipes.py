"""The sweep behind ``minimmf/recipes.py``: train candidate recipes at one budget, compare validation loss.

    python benchmarks/sweep_recipes.py --data tinyshakespeare.txt --minutes 1 [--tokenizer char]
                                       [--candidates "H=128 L=4 I=256 B=12 T=64 lr=6e-3; ..."] [--json PATH]
    python benchmarks/sweep_recipes.py --data tinyshakespeare.txt --minutes 5 --costs "L=3; L=3 B=32 T=64; ..."
    python benchmarks/sweep_recipes.py --data tinyshakespeare.txt --minutes 5 --jobs 16 \
                                       --candidates "S=1416; S=1786 L=3 minlr=0; ..."

Each candidate is the budget's recipe row with some fields replaced: H hidden size, L layers, I GLU width, B batch,
T sequence length, lr peak rate, minlr the cosine's floor as a fraction of the peak, warm the warm-up as a fraction
of the run, wd weight decay, clip the gradient-norm limit, b2 Adam's beta2, seed the seed.

Two ways to give each candidate its budget:

- **Timed** (no ``S=``): trained exactly as ``minimmf train --minutes M`` trains (the step count fixed from a timed
  warm-up, ``recipes.size_to_budget``), each in a fresh process, one after the other, on a quiet machine.
- **Fixed steps** (``S=steps``): the step count is given, so candidates need not run on the machine whose budget
  they stand for, nor one at a time. ``--costs`` measures what a step of each candidate's shape costs on this
  machine, relative to the first, interleaved in one process (so a slow minute hits all of them), and prints the
  ``S=`` that fills the budget, from ``S`` of the recipe row's measured run (``--base-steps``). The fixed-step
  candidates can then run ``--jobs K`` at a time, each on one thread pinned to its own core, on a larger machine.
  Their bits differ from a 2-thread run's in the last place (BLAS blocks products by thread count); their loss
  does not, beyond the seed-to-seed spread the sweep itself measures (``seed=``).

It reports the loss on the whole validation split in non-overlapping 64-token blocks (``bench_time_to_loss.py``'s
measure), the steps taken and the wall-clock, with the CPU model and the load average before and after every run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this tree's minimmf, not an installed one

FIELDS = {"H": "hidden_size", "L": "num_hidden_layers", "I": "intermediate_size", "B": "batch_size",
          "T": "seq_len", "lr": "lr", "V": "vocab_size", "minlr": "min_lr_ratio", "wd": "weight_decay",
          "clip": "grad_clip", "seed": "seed", "S": "steps", "warm": "warmup", "b2": "beta2"}
FLOATS = {"lr", "minlr", "wd", "clip", "warm", "b2"}
SHAPE = ("hidden_size", "num_hidden_layers", "intermediate_size", "batch_size", "seq_len", "vocab_size")


def parse_candidate(text: str) -> dict:
    out = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in FIELDS or not value:
            raise SystemExit(f"--candidates: {item!r} is not one of {', '.join(k + '=N' for k in FIELDS)}")
        try:
            out[FIELDS[key]] = float(value) if key in FLOATS else int(value)
        except ValueError:
            raise SystemExit(f"--candidates: {item!r}: {value!r} is not a number") from None
    return out


def candidate_config(spec: dict):
    """The TrainConfig of one candidate: the budget's row, its fields replaced; fixed steps if it names S."""
    from minimmf.recipes import EVALUATIONS, WARMUP_FRACTION, recipe_config
    fields = dict(spec["fields"])
    warmup = fields.pop("warmup", WARMUP_FRACTION)
    if "beta2" in fields:
        fields["betas"] = (0.9, fields.pop("beta2"))
    cfg = dataclasses.replace(recipe_config(spec["minutes"], spec["tokenizer"]), **fields)
    if "steps" in fields:         # fixed steps: no timed warm-up; the schedule and evaluations as size_to_budget sets
        cfg = dataclasses.replace(cfg, budget_minutes=None, warmup_steps=max(1, round(warmup * cfg.steps)),
                                  eval_every=max(1, cfg.steps // EVALUATIONS), threads=spec.get("threads", -1))
    elif "warmup" in spec["fields"]:
        raise SystemExit("warm= needs S= (a timed run fixes its warm-up from the step count it measures)")
    return cfg


def relative_costs(data: str, minutes: float, tokenizer: str, texts: list[str], rounds: int = 8) -> list[float]:
    """Median seconds per training step of each candidate's shape, measured interleaved in this process."""
    import numpy as np

    from minimmf.data import encode_split, load_corpus, split_text
    from minimmf.optim import AdamW
    from minimmf.recipes import timed_step
    from minimmf.threads import sleeping_workers
    from minimmf.tokenizer import train_bpe, train_char
    sleeping_workers()
    text = load_corpus(data).text
    train_text, val_text = split_text(text)
    setups = []
    for t in texts:
        cfg = candidate_config({"minutes": minutes, "tokenizer": tokenizer, "fields": parse_candidate(t)})
        tok = train_char(text) if tokenizer == "char" else train_bpe(train_text, cfg.vocab_size)
        split = encode_split(tok, train_text, val_text)
        setups.append((cfg, split, cfg.build_model(tok.vocab_size), AdamW(lr=cfg.lr)))
    rng = np.random.default_rng(0)
    times = [[] for _ in texts]
    for r in range(rounds + 1):                                     # round 0: compile and warm up
        for i, (cfg, split, model, opt) in enumerate(setups):
            for _ in range(4):
                t = timed_step(model, opt, cfg, split.train, rng)
                if r:
                    times[i].append(t)
    return [float(np.median(t)) for t in times]


def one_run(spec: dict) -> dict:
    """In a fresh process: train one candidate into a temporary directory, measure the whole split."""
    from minimmf.data import encode_split, load_corpus, split_text
    from minimmf.train import evaluate, train
    if spec.get("cpu") is not None:                                 # --jobs: this process's own core
        os.sched_setaffinity(0, {spec["cpu"]})
    cfg = candidate_config(spec)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        r = train(cfg, out, data=spec["data"], progress=False, log=lambda *a: None)
        wall = time.perf_counter() - t0
        from minimmf.checkpoint import load_checkpoint
        ck = load_checkpoint(out)
        split = encode_split(ck.tokenizer, *split_text(load_corpus(spec["data"]).text))
        val = evaluate(ck.model, split.val, 64, 64, None)
        chars_per_token = split.val_chars / len(split.val)
    return {"steps": r.step, "train_seconds": r.seconds, "command_seconds": wall, "tokens": r.tokens,
            "val_nats_per_token": val, "val_nats_per_char": val / chars_per_token,
            "curve": [(m["seconds"], m["val_loss"]) for m in r.metrics]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    ap.add_argument("--candidates", default="", help="';'-separated candidates, each 'H=.. L=.. I=.. B=.. T=.. lr=..' "
                                                     "(fields left out: the recipe's); default: the recipe alone")
    ap.add_argument("--costs", help="';'-separated shapes: print each one's cost per step relative to the first, "
                                    "and the S= that fills the budget (see --base-steps); trains nothing")
    ap.add_argument("--base-steps", type=int, help="with --costs: the steps the first shape makes in the budget")
    ap.add_argument("--jobs", type=int, default=1, help="fixed-step candidates (S=) run this many at a time, "
                                                         "each on one thread of its own core")
    ap.add_argument("--json", help="append every result to this JSON-lines file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(json.loads(args.one))))
        return
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    if args.costs:
        texts = [c for c in args.costs.split(";") if c.strip()]
        secs = relative_costs(args.data, args.minutes, args.tokenizer, texts)
        print(f"# cost per step, {time.strftime('%Y-%m-%d %H:%M %Z')}, CPU {cpu}, load {os.getloadavg()[0]:.2f}")
        print("| shape | ms per step | relative | S= for the budget |")
        print("|---|---|---|---|")
        for t, sec in zip(texts, secs):
            s_for = f"{round(args.base_steps * secs[0] / sec):,}" if args.base_steps else "(give --base-steps)"
            print(f"| {t.strip()} | {sec * 1e3:.1f} | {sec / secs[0]:.3f} | {s_for} |")
        return
    texts = [c for c in args.candidates.split(";") if c.strip()] or [""]
    specs = [{"minutes": args.minutes, "tokenizer": args.tokenizer, "data": str(Path(args.data).resolve()),
              "fields": parse_candidate(text)} for text in texts]
    if args.jobs > 1 and any("steps" not in sp["fields"] for sp in specs):
        raise SystemExit("--jobs runs fixed-step candidates only: give every candidate S=steps (timed candidates "
                         "must run alone, or each one's timed warm-up measures the others)")
    if args.jobs > os.cpu_count():
        raise SystemExit(f"--jobs {args.jobs}: this machine has {os.cpu_count()} logical CPUs")
    print(f"# recipe sweep, {args.minutes:g} min, {args.tokenizer}, {time.strftime('%Y-%m-%d %H:%M %Z')}, CPU {cpu}, "
          f"{os.cpu_count()} logical CPUs, {args.jobs} at a time")
    print("| candidate | steps | training s | tokens | validation, whole split (nats/char) | load before, after |")
    print("|---|---|---|---|---|---|")
    env = dict(os.environ)
    if args.jobs > 1:             # one thread per job, in both pools, before Numba or BLAS start theirs
        env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending, running, free = list(zip(texts, specs)), [], list(range(args.jobs))
    while pending or running:
        while pending and free:
            text, spec = pending.pop(0)
            spec = {**spec, "cpu": free.pop(0) if args.jobs > 1 else None, "threads": 1 if args.jobs > 1 else -1}
            proc = subprocess.Popen([sys.executable, __file__, "--data", args.data, "--minutes", str(args.minutes),
                                     "--one", json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=os.getcwd(), env=env)
            running.append((text, spec, proc, os.getloadavg()[0]))
        text, spec, proc, load0 = running.pop(0)
        out, err = proc.communicate()
        if spec["cpu"] is not None:
            free.append(spec["cpu"])
        if proc.returncode != 0:
            print(f"| {text or 'recipe'} | failed: {err.strip().splitlines()[-1:]} |", flush=True)
            continue
        res = json.loads(out.strip().splitlines()[-1])
        load1 = os.getloadavg()[0]
        print(f"| {text.strip() or 'recipe'} | {res['steps']:,} | {res['train_seconds']:.0f} | {res['tokens']:,} | "
              f"{res['val_nats_per_char']:.3f} | {load0:.2f}, {load1:.2f} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**spec, **res, "load": [load0, load1], "cpu": cpu}) + "\n")


if __name__ == "__main__":
    main()
