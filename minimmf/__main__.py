"""Command line: ``minimmf demo`` (or ``python -m minimmf demo``)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="minimmf", description="The MatMul-free language model in NumPy and Numba.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a tiny model on minimmf's own source for about a "
                                       "minute, then generate text with the packed ternary model")
    demo.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps < 1:
            parser.error("--steps must be at least 1")
        from .demo import run_demo
        r = run_demo(steps=args.steps, seed=args.seed)
        print(f"\ntrained {args.steps} steps in {r['seconds']:.1f} s "
              f"({r['tokens_per_second']:,.0f} tokens/s); loss {r['first_loss']:.2f} -> {r['last_loss']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
