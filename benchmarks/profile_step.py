"""Where the milliseconds of one training step go, on one thread: BLAS, Numba kernels, NumPy, Python, the OS.

    python benchmarks/profile_step.py [--shape char|tiny|small] [--steps N] [--code DIR] [--no-perf]

Two views of the same steps (the step of ``bench_train.py``: ``loss_and_grads`` + ``clip_grads`` + ``AdamW.step``),
both in CPU time, which a busy machine inflates far less than wall-clock time:

1. By library, sampled with Linux ``perf`` (``perf record`` at 999 Hz, switched on only after three warm-up
   steps): OpenBLAS (the products), Numba's compiled kernels, NumPy (element-wise passes, copies, casts), the
   Python interpreter (its garbage collector included), the OS kernel (mostly page faults: zeroing fresh memory
   for new arrays), the C library (malloc, memset, memcpy). Shares of the samples, times the CPU ms per step.
2. By minimmf kernel, with a CPU-time stopwatch (``time.thread_time``) around each call: quantization
   (``bitlinear_front``, ``weight_quant``), the scan, and the other fused element-wise kernels.

``--code DIR`` profiles the ``minimmf`` in DIR (e.g. the files of an older commit from ``git archive``) instead
of this tree's. Threads: one (both pools), so every cycle of the step is on the calling thread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"tiny": (2048, 128, 4, 256, 16, 128), "char": (65, 128, 4, 512, 12, 64),
          "small": (4096, 256, 6, 512, 16, 256)}
QUANT = ("bitlinear_front", "weight_quant")
SCAN = ("scan_forward", "scan_backward")
FUSED = ("rmsnorm_forward", "rmsnorm_backward", "mlgru_gates_forward", "mlgru_gates_backward",
         "mlgru_output_forward", "mlgru_output_backward", "glu_act_forward", "glu_act_backward",
         "cross_entropy_forward", "cross_entropy_backward", "embedding_backward", "adamw_update")
LIBRARIES = (("OpenBLAS (products)", ("openblas",)), ("Numba kernels", ("[JIT]",)),
             ("NumPy (element-wise, copies, casts)", ("_multiarray_umath", "libm.so", "_umath")),
             ("Python interpreter (incl. garbage collector)", ("libpython", "python3")),
             ("OS kernel (page faults, zeroing new memory)", ("[kernel",)),
             ("C library (malloc, memset, memcpy)", ("libc.so",)))


def worker(shape: str, steps: int, ctl: str | None, out: str) -> None:
    """Runs in the code under test (PYTHONPATH): warm up, switch perf on, time `steps` steps, switch it off."""
    import minimmf.kernels  # noqa: F401
    import numpy as np
    from minimmf.config import MMfreeConfig
    from minimmf.model import MMfreeLM
    from minimmf.optim import AdamW, clip_grads
    from minimmf.threads import set_threads
    try:
        from minimmf.fast.memory import prepare_process
    except ImportError:
        prepare_process = None
    V, H, L, I, B, T = SHAPES[shape]
    set_threads(1)
    model = MMfreeLM.init(MMfreeConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, intermediate_size=I), seed=0)
    opt, rng = AdamW(lr=1e-3), np.random.default_rng(0)
    if prepare_process is not None:
        prepare_process()

    def step():
        batch = rng.integers(0, V, (B, T))
        _, grads = model.loss_and_grads(batch, batch)
        grads, _ = clip_grads(grads, 1.0)
        opt.step(model.params, grads)

    for _ in range(3):
        step()
    # stopwatches around the kernels, wherever a module holds them
    spent = {}

    def wrap(fn, name):
        def timed(*a, **k):
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.thread_time() - t0
        timed.__wrapped__ = fn
        return timed

    originals = {}
    import types                 # a layer module the seam watches (its class changed) must not be touched: an
    for mod in [m for n, m in list(sys.modules.items())          # edit there switches its layer to the reference
                if n.startswith("minimmf") and type(m) is types.ModuleType]:
        for name in QUANT + SCAN + FUSED:
            fn = getattr(mod, name, None)
            if callable(fn) and getattr(fn, "__module__", "").startswith("minimmf.kernels"):
                originals[(mod, name)] = fn
    timed_fns = {fn: wrap(fn, name) for (mod, name), fn in originals.items()}
    for (mod, name), fn in originals.items():
        setattr(mod, name, timed_fns[fn])
    # first pass: the stopwatches; second pass (originals back): perf and the step's CPU time
    c0 = time.process_time()
    for _ in range(steps):
        step()
    wrapped_cpu = time.process_time() - c0
    for (mod, name), fn in originals.items():
        setattr(mod, name, fn)
    if ctl:
        with open(ctl, "w") as f:
            f.write("enable\n")
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if ctl:
        with open(ctl, "w") as f:
            f.write("disable\n")
    Path(out).write_text(json.dumps({"cpu_ms": cpu / steps * 1e3, "wall_ms": wall / steps * 1e3,
                                     "wrapped_cpu_ms": wrapped_cpu / steps * 1e3,
                                     "kernels_ms": {k: v / steps * 1e3 for k, v in spent.items()},
                                     "load": os.getloadavg()[0]}))


def by_library(data: Path) -> dict:
    rep = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"], capture_output=True,
                         text=True).stdout
    shares = {name: 0.0 for name, _ in LIBRARIES}
    shares["other"] = 0.0
    for line in rep.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "%" not in line:
            continue
        pct, dso = line.split("%", 1)
        dso = dso.strip()
        for name, keys in LIBRARIES:
            if any(k in dso for k in keys):
                shares[name] += float(pct) / 100
                break
        else:
            shares["other"] += float(pct) / 100
    return shares


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="char", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--code", default=str(ROOT), help="the root of the minimmf code to profile")
    ap.add_argument("--no-perf", action="store_true", help="only the kernel stopwatches")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.shape, args.steps, args.worker[0] or None, args.worker[1])
    tmp = Path(tempfile.mkdtemp(prefix="minimmf-profile-"))
    env = dict(os.environ, PYTHONPATH=str(Path(args.code).resolve()))
    env.setdefault("NUMBA_CACHE_DIR", str(Path(args.code).resolve() / ".numba_cache"))
    res_path, data, ctl = tmp / "result.json", tmp / "perf.data", tmp / "ctl"
    cmd = [sys.executable, __file__, "--shape", args.shape, "--steps", str(args.steps), "--worker"]
    if args.no_perf:
        subprocess.run(cmd + ["", str(res_path), ""], env=env, check=True)
    else:
        os.mkfifo(ctl)
        subprocess.run(["perf", "record", "-q", "-F", "999", "-D", "-1", f"--control=fifo:{ctl}", "-o", str(data),
                        "--"] + cmd + [str(ctl), str(res_path), ""], env=env, check=True,
                       stderr=subprocess.DEVNULL)
    res = json.loads(res_path.read_text())
    V, H, L, I, B, T = SHAPES[args.shape]
    cpu = res["cpu_ms"]
    print(f"## {args.shape} (V {V}, H {H}, L {L}, I {I}, batch {B} x {T}), 1 thread, code {args.code}: "
          f"{cpu:.1f} CPU ms/step ({res['wall_ms']:.1f} ms wall; load average {res['load']:.2f})")
    if not args.no_perf:
        shares = by_library(data)
        print("\n| where (perf samples) | share | CPU ms/step |\n|---|---|---|")
        for name, s in shares.items():
            print(f"| {name} | {s:.0%} | {s * cpu:.1f} |")
    k = res["kernels_ms"]
    groups = {"quantization (bitlinear_front, weight_quant)": QUANT, "scan (forward, backward)": SCAN,
              "other fused element-wise kernels": FUSED}
    print(f"\n| minimmf kernels (stopwatch; that pass took {res['wrapped_cpu_ms']:.1f} CPU ms/step) | CPU ms/step |"
          "\n|---|---|")
    for name, fns in groups.items():
        print(f"| {name} | {sum(k.get(f, 0.0) for f in fns):.1f} |")
    for f, v in sorted(k.items(), key=lambda kv: -kv[1]):
        print(f"| &nbsp; {f} | {v:.2f} |")
    return res


if __name__ == "__main__":
    main()
