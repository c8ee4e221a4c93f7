"""Training throughput of minimmf at the presets' shapes: this working tree against an older commit, side by side.

    python benchmarks/bench_train.py [--against COMMIT] [--shapes tiny,char,small] [--threads 1,2] [--rounds N]
                                     [--json PATH]

One training step = ``model.loss_and_grads(batch, batch)`` + ``clip_grads`` + ``AdamW.step`` on random tokens,
as ``minimmf train`` runs it (with the process set up as ``minimmf train`` sets it up, where the code has such a
setup). Every (code, threads) cell of a shape runs in its own worker process, started from the root of its code:
this tree, and the files of commit ``--against`` (``git archive``, kept in the system's temporary directory
for the next run; default: none, this tree alone), so each imports its own ``minimmf``. The workers take turns, round after round: each turn runs steps for about
``--turn`` seconds and reports their median; a change in the machine's load hits every cell alike. Each number
printed is the median over the rounds.

    tiny   the `tiny` preset: V 2048, H 128, L 4, I 256, batch 16 x 128 tokens
    char   nanoGPT's baby Shakespeare-char shape: V 65, H 128, L 4, I 512 (the released rule), batch 12 x 64
    small  the `small` preset: V 4096, H 256, L 6, I 512, batch 16 x 256 tokens

Threads: both pools (OpenBLAS and Numba) are set to the same count, once per worker. The CPU model and the load
average at start and end are printed: on a shared machine, read the 2-thread cells with care.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {   # name: (V, H, L, I, B, T)
    "tiny": (2048, 128, 4, 256, 16, 128),
    "char": (65, 128, 4, 512, 12, 64),
    "small": (4096, 256, 6, 512, 16, 256),
}

# The worker: runs in the root of one code version (so `import minimmf` is that version's), reads "seconds\n"
# from stdin, trains steps for about that long, answers with the per-step times; "quit" ends it.
WORKER = r"""
import json, sys, time
import minimmf.kernels                      # configures Numba and OpenBLAS before NumPy does anything
import numpy as np
from minimmf.config import MMfreeConfig
from minimmf.model import MMfreeLM
from minimmf.optim import AdamW, clip_grads
from minimmf.threads import set_threads
try:                                        # the process setup `minimmf train` does (newer code only)
    from minimmf.fast.memory import prepare_process
except ImportError:
    prepare_process = None
try:
    from minimmf.threads import sleeping_workers
    sleeping_workers()                      # before set_threads starts Numba's workers
except ImportError:
    pass
V, H, L, I, B, T, threads = json.loads(sys.argv[1])
set_threads(threads)
model = MMfreeLM.init(MMfreeConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, intermediate_size=I), seed=0)
opt = AdamW(lr=1e-3)
rng = np.random.default_rng(0)
if prepare_process is not None:
    prepare_process()

def step():
    batch = rng.integers(0, V, (B, T))
    t0 = time.perf_counter()
    loss, grads = model.loss_and_grads(batch, batch)
    grads, _ = clip_grads(grads, 1.0)
    opt.step(model.params, grads)
    return time.perf_counter() - t0

for _ in range(3):
    step()
print(json.dumps({"ready": True, "params": model.num_params(), "I": model.config.I}), flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    budget, times = float(line), []
    t_end = time.perf_counter() + budget
    while not times or time.perf_counter() < t_end:
        times.append(step())
    print(json.dumps(times), flush=True)
"""


class Worker:
    def __init__(self, root: Path, shape, threads: int):
        env = dict(os.environ)
        env.setdefault("NUMBA_CACHE_DIR", str(root / ".numba_cache"))
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps([*shape, threads])], cwd=root,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self._read())

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark worker died (exit code {self.proc.wait()}); see its error above")
        return line

    def turn(self, seconds: float) -> list[float]:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return json.loads(self._read())

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait()


def old_tree(commit: str) -> Path:
    """The files of ``commit`` (``git archive``) in a directory under the system's temporary directory, extracted
    once and kept, so that its Numba cache (``.numba_cache`` there) survives from one benchmark run to the next."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", commit], check=True, capture_output=True,
                         text=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"minimmf-bench-{sha}"
    if not (path / "minimmf" / "__init__.py").exists():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    return path


def bench_shape(name: str, codes: dict, threads_list, rounds: int, turn: float) -> dict:
    V, H, L, I, B, T = SHAPES[name]
    workers = {(c, n): Worker(root, SHAPES[name], n) for c, root in codes.items() for n in threads_list}
    info = next(iter(workers.values())).info
    print(f"\n## {name}: V {V}, H {H}, L {L}, I {info['I']}, batch {B} x {T} = {B * T} tokens/step, "
          f"{info['params']:,} parameters", flush=True)
    per_round = {k: [] for k in workers}
    try:
        for _ in range(rounds):
            for k, w in workers.items():
                per_round[k].append(statistics.median(w.turn(turn)))
                time.sleep(0.2)                       # let the idle pools of the last worker go quiet
    finally:
        for w in workers.values():
            w.close()
    rows = {}
    for (c, n), ts in per_round.items():
        med = statistics.median(ts)
        rows[f"{c}/{n}t"] = {"code": c, "threads": n, "ms_per_step": med * 1e3, "tokens_per_s": B * T / med,
                             "spread_ms": [min(ts) * 1e3, max(ts) * 1e3]}
    unit = "chars/s" if name == "char" else "tokens/s"
    print(f"| code | threads | ms/step (median of {rounds} rounds; min-max) | {unit} |")
    print("|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['code']} | {r['threads']} | {r['ms_per_step']:.1f} ({r['spread_ms'][0]:.1f}-"
              f"{r['spread_ms'][1]:.1f}) | {r['tokens_per_s']:,.0f} |")
    names = list(codes)
    if len(names) == 2:
        for n in threads_list:
            sp = rows[f"{names[1]}/{n}t"]["ms_per_step"] / rows[f"{names[0]}/{n}t"]["ms_per_step"]
            print(f"{names[0]} vs {names[1]}, {n} thread(s): {sp:.2f}x")
    if len(threads_list) > 1:
        for c in names:
            sp = rows[f"{c}/{threads_list[0]}t"]["ms_per_step"] / rows[f"{c}/{threads_list[-1]}t"]["ms_per_step"]
            print(f"{c}: {threads_list[-1]} threads vs {threads_list[0]}: {sp:.2f}x")
    return {"shape": {"V": V, "H": H, "L": L, "I": info["I"], "B": B, "T": T}, "cells": rows}


def header(codes: dict) -> dict:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import llvmlite.binding as ll
    import numba
    import numpy as np
    info = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu, "llvm_cpu": ll.get_host_cpu_name(),
            "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "codes": {c: str(p) for c, p in codes.items()},
            "load_average_at_start": os.getloadavg()[0]}
    print("# minimmf training throughput  (" + ", ".join(f"{k} {v}" for k, v in info.items()) + ")", flush=True)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", help="also run this commit (e.g. c80597e), from its files in a temporary directory")
    ap.add_argument("--shapes", default="tiny,char", help="comma-separated subset of " + ",".join(SHAPES))
    ap.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    ap.add_argument("--rounds", type=int, default=7, help="turns per cell (default 7)")
    ap.add_argument("--turn", type=float, default=1.5, help="seconds of steps per turn (default 1.5)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        raise SystemExit(f"--shapes: unknown {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    threads_list = [int(t) for t in args.threads.split(",")]
    old = old_tree(args.against) if args.against else None
    codes = ({f"old {args.against}": old} if old else {}) | {"this tree": ROOT}
    results = {"env": header(codes), "shapes": {}}
    t0 = time.perf_counter()
    for name in args.shapes.split(","):
        results["shapes"][name] = bench_shape(name, codes, threads_list, args.rounds, args.turn)
    results["env"]["load_average_at_end"] = os.getloadavg()[0]
    results["env"]["wall_s"] = time.perf_counter() - t0
    print(f"\nload average at start {results['env']['load_average_at_start']:.2f}, at end "
          f"{results['env']['load_average_at_end']:.2f}; {results['env']['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
