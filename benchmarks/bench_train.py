"""Training throughput of minimmf at the presets' model shapes: fused kernels vs the NumPy reference, 1 vs 2 threads.

    python benchmarks/bench_train.py [--json PATH] [--repeats N] [--shapes tiny,char,small]

One training step = ``model.loss_and_grads(batch, batch)`` + ``clip_grads`` + ``AdamW.step`` on random tokens,
as ``minimmf/train.py`` runs it. For each shape every cell (path x threads) is timed in turn, round after round,
so a change in the machine's load hits all cells alike; each number is the median over the rounds.

    tiny   train.PRESETS["tiny"]:  V 2048, H 128, L 4, I 256, batch 16 x 128 tokens
    char   nanoGPT's baby Shakespeare-char shape: V 65, H 128, L 4, I from the released rule, batch 12 x 64
    small  train.PRESETS["small"]: V 4096, H 256, L 6, I 512, batch 16 x 256 tokens

"reference" runs every module's plain-NumPy code (``seam.using("reference")``), "fused" the Numba
kernels; both give the same numbers (tests/test_kernels_fused.py). Threads: both pools (OpenBLAS and Numba) are
set to the same count. Peak memory: tracemalloc's peak over one step (NumPy's buffers included), and the
process's maximum resident set size at the end.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc

import minimmf.kernels  # noqa: F401  (configures Numba and OpenBLAS before NumPy does anything)
import numba
import numpy as np

from minimmf.config import MMfreeConfig
from minimmf import seam
from minimmf.model import MMfreeLM
from minimmf.optim import AdamW, clip_grads

SHAPES = {   # name: (V, H, L, I, B, T)
    "tiny": (2048, 128, 4, 256, 16, 128),
    "char": (65, 128, 4, None, 12, 64),
    "small": (4096, 256, 6, 512, 16, 256),
}


from minimmf.threads import set_threads  # noqa: E402  (both pools, Numba's and OpenBLAS's, like for like)


class Trainer:
    """A model, an optimizer and a fixed stream of random batches for one shape."""

    def __init__(self, shape):
        V, H, L, I, B, T = shape
        self.config = MMfreeConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, intermediate_size=I)
        self.model = MMfreeLM.init(self.config, seed=0)
        self.opt = AdamW(lr=1e-3)
        self.rng = np.random.default_rng(0)
        self.B, self.T, self.V = B, T, V

    def step(self):
        batch = self.rng.integers(0, self.V, (self.B, self.T))
        loss, grads = self.model.loss_and_grads(batch, batch)
        grads, _ = clip_grads(grads, 1.0)
        self.opt.step(self.model.params, grads)
        return loss


def run_cell(trainer, path, threads):
    set_threads(threads)
    with seam.using("reference" if path == "reference" else "fast"):
        t0 = time.perf_counter()
        trainer.step()
        return time.perf_counter() - t0


def peak_bytes(trainer, path):
    with seam.using("reference" if path == "reference" else "fast"):
        tracemalloc.start()
        trainer.step()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def bench_shape(name, repeats, threads_list):
    V, H, L, I, B, T = SHAPES[name]
    trainers = {(p, n): Trainer(SHAPES[name]) for p in ("reference", "fused") for n in threads_list}
    cfg = next(iter(trainers.values())).config
    print(f"\n## {name}: V {V}, H {H}, L {L}, I {cfg.I}, batch {B} x {T} = {B * T} tokens/step, "
          f"{next(iter(trainers.values())).model.num_params():,} parameters")
    for (p, n), tr in trainers.items():          # warm-up: compile, fault in the optimizer state
        for _ in range(2):
            run_cell(tr, p, n)
    times = {k: [] for k in trainers}
    for _ in range(repeats):
        for k, tr in trainers.items():
            times[k].append(run_cell(tr, *k))
    rows = {}
    for (p, n), ts in times.items():
        med = float(np.median(ts))
        rows[f"{p}/{n}t"] = {"path": p, "threads": n, "ms_per_step": med * 1e3,
                             "tokens_per_s": B * T / med, "spread": [min(ts) * 1e3, max(ts) * 1e3]}
    set_threads(max(threads_list))
    for p in ("reference", "fused"):
        peak = peak_bytes(trainers[(p, max(threads_list))], p)
        for r in rows.values():
            if r["path"] == p:
                r["tracemalloc_peak_MiB"] = peak / 2**20
    unit = "chars/s" if name == "char" else "tokens/s"
    print(f"| path | threads | ms/step (median, min-max) | {unit} | peak MiB (tracemalloc, 1 step) |")
    print("|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['path']} | {r['threads']} | {r['ms_per_step']:.1f} ({r['spread'][0]:.1f}-{r['spread'][1]:.1f}) "
              f"| {r['tokens_per_s']:,.0f} | {r['tracemalloc_peak_MiB']:.1f} |")
    for n in threads_list:
        sp = rows[f"reference/{n}t"]["ms_per_step"] / rows[f"fused/{n}t"]["ms_per_step"]
        print(f"fused vs reference, {n} thread(s): {sp:.2f}x")
    if len(threads_list) > 1:
        for p in ("reference", "fused"):
            sp = rows[f"{p}/1t"]["ms_per_step"] / rows[f"{p}/{max(threads_list)}t"]["ms_per_step"]
            print(f"{p}: {max(threads_list)} threads vs 1: {sp:.2f}x")
    return {"shape": {"V": V, "H": H, "L": L, "I": cfg.I, "B": B, "T": T}, "cells": rows}


def header():
    import llvmlite.binding as ll
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "llvm_cpu": ll.get_host_cpu_name(),
            "cores": os.cpu_count(), "numba_threading_layer_max_threads": numba.config.NUMBA_NUM_THREADS,
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
            "load_average_at_start": os.getloadavg()[0]}
    print("# minimmf training throughput  (" + ", ".join(f"{k} {v}" for k, v in info.items()) + ")")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per shape (default 7)")
    ap.add_argument("--shapes", default="tiny,char,small", help="comma-separated subset of " + ",".join(SHAPES))
    ap.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    args = ap.parse_args(argv)
    results = {"env": header(), "shapes": {}}
    threads_list = [int(t) for t in args.threads.split(",")]
    t0 = time.perf_counter()
    for name in args.shapes.split(","):
        results["shapes"][name] = bench_shape(name, args.repeats if name != "small" else max(3, args.repeats // 2),
                                              threads_list)
    results["env"]["maxrss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["env"]["load_average_at_end"] = os.getloadavg()[0]
    results["env"]["wall_s"] = time.perf_counter() - t0
    print(f"\nprocess max RSS {results['env']['maxrss_MiB']:.0f} MiB; load average at end "
          f"{results['env']['load_average_at_end']:.2f}; {results['env']['wall_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
