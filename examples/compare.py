"""MMfreeLM vs Transformer++ in miniature: the paper's comparison on a laptop.

    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python examples/compare.py --out runs/compare   # ≈ 15 min
    python examples/compare.py --quick --out runs/compare-quick                                 # ≈ 2 min

The same as ``minimmf compare``, plus a per-part op count of the largest size. Writes comparison.json (one
record per model, size and budget), comparison_meta.json (plan, recipes, fitted trend lines, environment) and
comparison.png (bits/char vs parameters and vs training FLOPs on log axes, memory at inference).
"""
import argparse

from minimmf import compare, opcount
from minimmf.checkpoint import load_checkpoint


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and budgets (a test of the pipeline)")
    p.add_argument("--out", default="runs/compare", help="output directory")
    p.add_argument("--data", help="a UTF-8 text file or folder (default: Shakespeare)")
    args = p.parse_args()
    records = compare.run_comparison(quick=args.quick, out=args.out, data=args.data)
    print(compare.format_table(records))
    big = max(records, key=lambda r: r["params"])
    for m in compare.MODELS:                          # where the multiplications are, per generated token
        run = f"{args.out}/runs/tokens-{m.replace('+', 'p')}-{big['size']}"
        model = load_checkpoint(run, with_optimizer=False).model
        print(f"\n{m} {big['size']}, one token (context {big['ops_context']}):")
        for kind, t in opcount.by_kind(opcount.ops_per_token(model, big["ops_context"])).items():
            print(f"  {kind:15s} mults {t['mults']:>10,}  adds {t['adds']:>10,}  weight bytes {t['weight_bytes']:>10,}")


if __name__ == "__main__":
    main()
