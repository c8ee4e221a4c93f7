"""Time to loss: minimmf's default budget-sized character model against nanoGPT's baby Shakespeare-char figures.

    python benchmarks/bench_time_to_loss.py --data tinyshakespeare.txt [--minutes 1,2,5,10] [--out DIR] [--json PATH]

For each budget M it runs the command a user would type,

    python -m minimmf train --data FILE --tokenizer char --minutes M --out DIR/M-min --no-progress --sample-tokens 0

(one fresh process per budget, one after the other), then loads the saved checkpoint and measures the loss on the
**whole** validation split in non-overlapping 64-character blocks (``data.eval_windows(val, 64)``: every character
after the first of each block scored once, with the context of its block), the protocol of the nanoGPT figures
below. The split is nanoGPT's: the first 90% of the characters train, the rest validate (``data.split_text``).

nanoGPT's figures (quoted; measured for this project on this machine kind: Karpathy's nanoGPT "baby GPT" on
tiny Shakespeare characters, PyTorch 2.13 on the CPU, 2 threads, 4 layers x 128, batch 12 x 64, a cosine schedule
sized to each budget; whole-split validation loss of its best checkpoint): 1.898 nats/char after 69 s, 1.759
after 2 min, 1.579 after 5 min, 1.521 after 11 min.

It prints the CPU model and the 1-minute load average before and after every run (the machine may be shared), a
table of loss against wall-clock beside those figures, and draws the validation curves of every run (the
32-window estimates logged during training, the whole-split value at the end, nanoGPT's points) into
``DIR/time_to_loss.png``. The text file is only read; nothing is written beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this tree's minimmf, not an installed one

# (seconds, nats/char): nanoGPT's baby character model, quoted above
NANOGPT = {1: (69, 1.898), 2: (120, 1.759), 5: (300, 1.579), 10: (660, 1.521)}
BLOCK = 64                       # nanoGPT's block size: the evaluation windows


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        else:
            name = platform.processor() or "unknown CPU"
    except OSError:
        name = platform.processor() or "unknown CPU"
    try:
        import llvmlite.binding as ll
        name += f" (LLVM: {ll.get_host_cpu_name()})"
    except Exception:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def whole_split_loss(run_dir: Path, data: str) -> tuple[float, int]:
    """Mean loss in nats/char over every non-overlapping 64-character block of the validation split."""
    from minimmf.checkpoint import load_checkpoint
    from minimmf.data import encode_split, load_corpus, split_text
    from minimmf.train import evaluate
    ck = load_checkpoint(run_dir)
    text = load_corpus(data).text
    split = encode_split(ck.tokenizer, *split_text(text))
    assert split.val_chars == len(split.val), "the whole-split loss is per character: use --tokenizer char"
    blocks = (len(split.val) - 1) // BLOCK
    return evaluate(ck.model, split.val, BLOCK, 64, None), blocks


def run_budget(minutes: float, data: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{minutes:g}-min"
    cmd = [sys.executable, "-m", "minimmf", "train", "--data", data, "--tokenizer", "char", "--minutes",
           f"{minutes:g}", "--out", str(run_dir), "--no-progress", "--sample-tokens", "0", *extra]
    load0 = os.getloadavg()[0]
    print(f"\n$ {' '.join(cmd[1:])}   (load average {load0:.2f})", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(("model:", "budget", "done:")):
            print("  " + line)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    trainer = json.loads((run_dir / "checkpoint" / "trainer.json").read_text())
    val, blocks = whole_split_loss(run_dir, data)
    load1 = os.getloadavg()[0]
    return {"minutes": minutes, "train_seconds": records[-1]["seconds"], "command_seconds": wall,
            "steps": records[-1]["step"], "tokens": records[-1]["tokens"], "threads": trainer.get("threads"),
            "config": trainer["train_config"], "val_whole_split": val, "val_blocks": blocks,
            "curve": [(r["seconds"], r["val_loss"]) for r in records], "load_average": [load0, load1]}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        s, v = zip(*r["curve"])
        line, = ax.plot(s, v, "-", lw=1.2, alpha=0.8, label=f"minimmf --minutes {r['minutes']:g} (32-window estimate)")
        ax.plot([r["train_seconds"]], [r["val_whole_split"]], "o", color=line.get_color(), ms=7)
    ns, nv = zip(*NANOGPT.values())
    ax.plot(ns, nv, "k*", ms=11, label="nanoGPT, PyTorch CPU, 2 threads (quoted)")
    ax.plot([], [], "ko", ms=7, label="minimmf, whole validation split")
    ax.set_xscale("log")
    ax.set_ylim(1.3, 2.6)
    ax.set_xlabel("training wall-clock, seconds")
    ax.set_ylabel("validation loss, nats/char")
    ax.set_title("tiny Shakespeare, characters: loss against wall-clock")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="tiny Shakespeare (input.txt of char-rnn / nanoGPT)")
    ap.add_argument("--minutes", default="1,2,5,10", help="comma-separated budgets (default 1,2,5,10)")
    ap.add_argument("--out", default="runs/time-to-loss", help="run directories and the plot go here")
    ap.add_argument("--json", help="also write every number to this JSON file")
    ap.add_argument("--train-args", default="", help="extra flags for `minimmf train` (e.g. '--threads 2')")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        raise SystemExit(f"--data {args.data}: no such file (pass tiny Shakespeare's input.txt)")
    try:
        budgets = [float(m) for m in args.minutes.split(",")]
    except ValueError:
        raise SystemExit(f"--minutes {args.minutes!r}: expected comma-separated numbers, e.g. 1,2,5,10") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# minimmf time to loss, {time.strftime('%Y-%m-%d %H:%M %Z')}; CPU: {cpu_model()}; "
          f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}")
    results = [run_budget(m, args.data, out, args.train_args.split()) for m in budgets]
    print("\n| budget | training wall-clock | whole command | steps | characters seen | threads | model (H, L, I), "
          "batch, peak lr | validation, whole split (nats/char) | nanoGPT (quoted) | load average before, after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r["config"]
        ref = NANOGPT.get(int(r["minutes"])) if float(r["minutes"]).is_integer() else None
        ref_s = f"{ref[1]:.3f} after {ref[0]} s" if ref else "-"
        verdict = "" if not ref else (" (not below)" if r["val_whole_split"] >= ref[1] else
                                      " (below)" if r["train_seconds"] <= ref[0] else " (below, but in more time)")
        print(f"| {r['minutes']:g} min | {r['train_seconds']:.0f} s | {r['command_seconds']:.0f} s | {r['steps']:,} | "
              f"{r['tokens']:,} | {r['threads']} | ({c['hidden_size']}, {c['num_hidden_layers']}, "
              f"{c['intermediate_size']}), {c['batch_size']} x {c['seq_len']}, {c['lr']:g} | "
              f"**{r['val_whole_split']:.3f}**{verdict} | {ref_s} | "
              f"{r['load_average'][0]:.2f}, {r['load_average'][1]:.2f} |")
    print(f"(whole split: {results[0]['val_blocks']:,} blocks of {BLOCK} characters)")
    plot(results, out / "time_to_loss.png")
    print(f"plot: {out / 'time_to_loss.png'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "nanogpt_quoted": NANOGPT,
                                               "runs": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
