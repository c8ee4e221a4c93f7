"""The sweep behind ``minimmf/recipes.py``: train candidate recipes at one wall-clock budget, compare validation loss.

    python benchmarks/sweep_recipes.py --data tinyshakespeare.txt --minutes 1 [--tokenizer char]
                                       [--candidates "H=128 L=4 I=256 B=12 T=64 lr=6e-3; ..."] [--json PATH]

Each candidate is the budget's recipe row with some fields replaced (H hidden size, L layers, I GLU width, B batch,
T sequence length, lr peak rate), trained exactly as ``minimmf train --minutes M`` trains (the step count fixed
from a timed warm-up, ``recipes.size_to_budget``), each in a fresh process, one after the other. It reports the
loss on the whole validation split in non-overlapping 64-token blocks (``bench_time_to_loss.py``'s measure), the
steps taken and the wall-clock, with the CPU model and the load average before and after every run.
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
          "T": "seq_len", "lr": "lr", "V": "vocab_size"}


def parse_candidate(text: str) -> dict:
    out = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in FIELDS or not value:
            raise SystemExit(f"--candidates: {item!r} is not one of {', '.join(k + '=N' for k in FIELDS)}")
        out[FIELDS[key]] = float(value) if key == "lr" else int(value)
    return out


def one_run(spec: dict) -> dict:
    """In a fresh process: train one candidate into a temporary directory, measure the whole split."""
    from minimmf.data import encode_split, load_corpus, split_text
    from minimmf.recipes import recipe_config
    from minimmf.train import evaluate, train
    cfg = dataclasses.replace(recipe_config(spec["minutes"], spec["tokenizer"]), **spec["fields"])
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
    ap.add_argument("--json", help="append every result to this JSON-lines file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(json.loads(args.one))))
        return
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# recipe sweep, {args.minutes:g} min, {args.tokenizer}, {time.strftime('%Y-%m-%d %H:%M %Z')}, CPU {cpu}, "
          f"{os.cpu_count()} logical CPUs")
    print("| candidate | steps | training s | tokens | validation, whole split (nats/char) | load before, after |")
    print("|---|---|---|---|---|---|")
    for text in [c for c in args.candidates.split(";") if c.strip()] or [""]:
        spec = {"minutes": args.minutes, "tokenizer": args.tokenizer, "data": str(Path(args.data).resolve()),
                "fields": parse_candidate(text)}
        load0 = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--data", args.data, "--minutes", str(args.minutes),
                               "--one", json.dumps(spec)], capture_output=True, text=True, cwd=os.getcwd())
        if proc.returncode != 0:
            print(f"| {text or 'recipe'} | failed: {proc.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        load1 = os.getloadavg()[0]
        print(f"| {text.strip() or 'recipe'} | {res['steps']:,} | {res['train_seconds']:.0f} | {res['tokens']:,} | "
              f"{res['val_nats_per_char']:.3f} | {load0:.2f}, {load1:.2f} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**spec, **res, "load": [load0, load1], "cpu": cpu}) + "\n")


if __name__ == "__main__":
    main()
