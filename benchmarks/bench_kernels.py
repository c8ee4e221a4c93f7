"""Benchmark minimmf's kernels against NumPy/BLAS, side by side in one run (see benchmarks/README.md).

    python benchmarks/bench_kernels.py [--json PATH] [--only decode load training gemm scan compile]

1. decode: packed ternary matvec (N = 1) vs NumPy float32 matvec of the same matrix, hot and from DRAM,
   with 1 and 2 threads; and a thread sweep checking that 2 threads are never slower than 1.
1c. load: offset_matmul at 1 and 2 threads, and guarded by ParallelGuard, for each threading strategy (Numba's
   omp layer, omp with OMP_WAIT_POLICY=passive, the workqueue layer), on a quiet machine and while a busy-loop
   subprocess started by the benchmark keeps one core busy.
2. training shapes (N = 4096 tokens): ternary_matmul vs BLAS on the dequantized float32 matrix, and
   float_ternary_matmul vs BLAS dy @ q_w.
2b. gemm: the training forward's product at the presets' shapes, ternary_gemm (exact integer sums, divided row
   by row) vs what the readable layer does (BLAS's float product, then the division), 1 and 2 threads.
3. MLGRU scan (B, T, D) = (8, 256, 512) float32: Numba vs the NumPy loop, and kernel time / time to stream
   the kernel's inputs and outputs once at the measured copy bandwidth.
4. first-call compile time of each kernel (cold: a subprocess with a fresh NUMBA_CACHE_DIR) and cached load.

Every time is the median of several repeats. Ratios > 1 mean the minimmf kernel is faster.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import minimmf.kernels  # noqa: F401  (configures Numba first)
import numba
import numpy as np

from minimmf.kernels import (
    float_ternary_matmul,
    pack_ternary,
    scan_backward,
    scan_backward_ref,
    scan_forward,
    scan_forward_ref,
    ternary_matmul,
)
from minimmf.kernels import _numba as nbcfg

RESULTS = {}


def median_time(fn, repeats=9, inner=1, setup=None):
    """Median over `repeats` samples of the time of one call (each sample averages `inner` calls)."""
    fn()  # warm up (compiles on first use)
    ts = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        ts.append((time.perf_counter() - t0) / inner)
    return float(np.median(ts))


from minimmf.threads import set_threads  # noqa: E402  (both pools, Numba's and OpenBLAS's, like for like)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def l3_bytes():
    try:
        s = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(s[:-1]) * 1024 if s.endswith("K") else int(s)
    except (OSError, ValueError):
        return 32 << 20


def header():
    import llvmlite.binding as ll

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "cpu": cpu_name(),
        "llvm_cpu": ll.get_host_cpu_name(),
        "cores": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "threading_layer": None,
        "prefer_512_bit": nbcfg.CPU_FEATURES is not None,
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        "l3_bytes": l3_bytes(),
        "load_average_at_start": os.getloadavg()[0],
    }
    RESULTS["env"] = info
    return info


def table(title, cols, rows):
    print(f"\n## {title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def us(t):
    return f"{t * 1e6:,.0f} µs" if t < 1e-2 else f"{t * 1e3:,.1f} ms"


# ---------------------------------------------------------------- 1. decode matvec

def bench_decode():
    rng = np.random.default_rng(0)
    rows, out = [], []
    for O, I in [(2816, 1024), (5632, 2048)]:
        q_w = rng.integers(-1, 2, size=(O, I), dtype=np.int8)
        q_x = rng.integers(-128, 128, size=(1, I), dtype=np.int8)
        x32 = q_x[0].astype(np.float32)
        for where in ("hot", "DRAM"):
            if where == "hot":
                nw = 1
            else:  # rotate through enough copies that each call finds its matrix out of the L3 cache
                nw = max(2, -(-3 * l3_bytes() // (O * I * 4)))
            w32s = [q_w.astype(np.float32) for _ in range(nw)]
            npk = 1 if where == "hot" else max(2, -(-3 * l3_bytes() // (O * I // 4)))
            packs = [pack_ternary(q_w) for _ in range(npk)]
            for nt in (1, 2):
                set_threads(nt)
                k = [0]

                def kern():
                    k[0] = (k[0] + 1) % npk
                    ternary_matmul(q_x, packs[k[0]])

                def blas():
                    k[0] = (k[0] + 1) % nw
                    w32s[k[0]] @ x32

                tk = median_time(kern, repeats=7, inner=max(npk, 20))
                tb = median_time(blas, repeats=7, inner=max(nw, 20) if where == "hot" else nw)
                rows.append([f"{O}×{I}", where, str(nt), us(tk), f"{O * I / tk / 1e9:.1f}", us(tb), f"{tb / tk:.2f}×"])
                out.append(dict(O=O, I=I, where=where, threads=nt, kernel_s=tk, sgemv_s=tb, ratio=tb / tk))
            del w32s, packs
    set_threads(numba.config.NUMBA_NUM_THREADS)
    table("1. Decode: packed ternary matvec (N = 1) vs NumPy float32 matvec of the same matrix",
          ["out×in", "matrix in", "threads", "ternary_matmul", "G weights/s", "float32 W @ x", "ratio"], rows)
    RESULTS["decode"] = out

    # Thread sweep: two threads must never be slower than one.
    rows, sweep = [], []
    for O, I in [(64, 64), (256, 256), (512, 512), (768, 256), (1024, 1024), (2816, 1024), (5632, 2048)]:
        q_w = rng.integers(-1, 2, size=(O, I), dtype=np.int8)
        q_x = rng.integers(-128, 128, size=(1, I), dtype=np.int8)
        p = pack_ternary(q_w)
        t = {}
        for nt in (1, 2):
            set_threads(nt)
            t[nt] = median_time(lambda: ternary_matmul(q_x, p), repeats=9, inner=200 if O * I < 1e6 else 20)
        rows.append([f"{O}×{I}", us(t[1]), us(t[2]), f"{t[1] / t[2]:.2f}×"])
        sweep.append(dict(O=O, I=I, t1_s=t[1], t2_s=t[2], speedup=t[1] / t[2]))
    set_threads(numba.config.NUMBA_NUM_THREADS)
    table("1b. Decode kernel, 1 vs 2 threads (whole call incl. checks and padding)",
          ["out×in", "1 thread", "2 threads", "2-thread speedup"], rows)
    RESULTS["decode_threads"] = sweep


# ---------------------------------------------------------------- 1c. two threads with a background load

LOAD_SHAPES = [(1024, 1024), (2816, 1024), (5632, 2048)]
LOAD_STRATEGIES = {  # name -> environment of the measuring process (set before Numba is imported)
    "omp (default)": {},
    "omp, OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
}


def load_child(repeats):
    """(In a child process.) Median time of offset_matmul per shape at 1 and 2 threads, and of the guarded call."""
    from minimmf.kernels.ternary import ParallelGuard, offset_matmul, pack_offset

    rng = np.random.default_rng(5)
    res = []
    for O, I in LOAD_SHAPES:
        p = pack_offset(rng.integers(-1, 2, size=(O, I), dtype=np.int8))
        q_x = rng.integers(-128, 128, size=(1, I), dtype=np.int8)
        t = {}
        for nt in (1, 2):
            set_threads(nt)
            t[nt] = median_time(lambda: offset_matmul(q_x, p, parallel=nt > 1), repeats=repeats)
        guard = ParallelGuard()
        t["guard"] = median_time(lambda: guard.call(offset_matmul, q_x, p), repeats=repeats)
        res.append(dict(O=O, I=I, t1_s=t[1], t2_s=t[2], guard_s=t["guard"], layer=numba.threading_layer(),
                        guard_parallel_share=guard.parallel_share()))
    print(json.dumps(res))


def bench_load(repeats=400):
    """1 vs 2 threads (and the guarded choice) for each threading strategy, quiet and with one busy core."""
    rows, out = [], []
    for busy in (False, True):
        for name, env in LOAD_STRATEGIES.items():
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                time.sleep(0.3 if busy else 0)
                child = subprocess.run([sys.executable, __file__, "--load-child", str(repeats)], check=True,
                                       capture_output=True, text=True, env={**os.environ, **env})
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            for r in json.loads(child.stdout.strip().splitlines()[-1]):
                r.update(strategy=name, busy_core=busy)
                out.append(r)
                rows.append([name, "yes" if busy else "no", f"{r['O']}×{r['I']}", us(r["t1_s"]), us(r["t2_s"]),
                             f"{r['t1_s'] / r['t2_s']:.2f}×", us(r["guard_s"]), f"{r['t1_s'] / r['guard_s']:.2f}×",
                             f"{r['guard_parallel_share']:.0%}"])
    table("1c. offset_matmul, 1 vs 2 threads, with and without a busy-loop process on the machine",
          ["threading", "busy core", "out×in", "1 thread", "2 threads", "speedup", "guarded (2 allowed)",
           "guarded speedup", "calls run in parallel"], rows)
    RESULTS["load"] = out


# ---------------------------------------------------------------- 2. training shapes

def bench_training():
    rng = np.random.default_rng(1)
    N = 4096
    rows, out = [], []
    for I, O in [(256, 768), (512, 1536)]:
        q_w = rng.integers(-1, 2, size=(O, I), dtype=np.int8)
        q_x = rng.integers(-128, 128, size=(N, I), dtype=np.int8)
        dy = rng.standard_normal((N, O)).astype(np.float32)
        p = pack_ternary(q_w)
        w32 = q_w.astype(np.float32)
        x32 = q_x.astype(np.float32)
        for nt in (1, 2):
            set_threads(nt)
            tk = median_time(lambda: ternary_matmul(q_x, p), repeats=5)
            tb = median_time(lambda: x32 @ w32.T, repeats=5)
            tbc = median_time(lambda: q_x.astype(np.float32) @ w32.T, repeats=5)
            tf = median_time(lambda: float_ternary_matmul(dy, p), repeats=5)
            tfb = median_time(lambda: dy @ w32, repeats=5)
            rows.append([f"{I}→{O}", str(nt), us(tk), us(tb), us(tbc), f"{tb / tk:.2f}×", us(tf), us(tfb), f"{tfb / tf:.2f}×"])
            out.append(dict(I=I, O=O, N=N, threads=nt, ternary_matmul_s=tk, blas_s=tb, blas_with_cast_s=tbc,
                            float_ternary_s=tf, blas_dy_w_s=tfb))
    set_threads(numba.config.NUMBA_NUM_THREADS)
    table(f"2. Training shapes, N = {N} tokens: add/sub kernels vs BLAS on the {{-1,0,1}} float32 matrix",
          ["in→out", "threads", "ternary_matmul", "BLAS x32 @ W32.T", "BLAS incl. int8→f32 cast", "ratio (no cast)",
           "float_ternary_matmul", "BLAS dy @ W32", "ratio"], rows)
    RESULTS["training"] = out


GEMM_SHAPES = [  # (label, N tokens, in, out): the BitLinears of a training step at the presets' shapes
    ("tiny: f, i, g, o", 2048, 128, 128), ("tiny: gate + up", 2048, 128, 512), ("tiny: down", 2048, 256, 128),
    ("tiny: head", 2048, 128, 2048), ("char: gate + up", 768, 128, 1024), ("char: down", 768, 512, 128),
    ("char: head", 768, 128, 65),
]


def bench_gemm():
    from minimmf.kernels import fused
    from minimmf.kernels.ternary_gemm import ternary_gemm

    rng = np.random.default_rng(2)
    rows, out = [], []
    for label, N, I, O in GEMM_SHAPES:
        q_x = rng.integers(-127, 128, size=(N, I)).astype(np.float32)
        q_w = rng.integers(-1, 2, size=(O, I)).astype(np.float32)
        den = rng.uniform(1, 100, size=(N, 1)).astype(np.float32)

        def readable():
            y = q_x @ q_w.T
            return fused.divide_rows(y, den)
        assert np.array_equal(ternary_gemm(q_x, q_w, den), readable())
        for nt in (1, 2):
            set_threads(nt)
            tk = median_time(lambda: ternary_gemm(q_x, q_w, den), repeats=15)
            tb = median_time(readable, repeats=15)
            rows.append([label, f"{N}×{I}→{O}", str(nt), us(tk), us(tb), f"{tb / tk:.2f}×"])
            out.append(dict(label=label, N=N, I=I, O=O, threads=nt, ternary_gemm_s=tk, blas_and_divide_s=tb))
    set_threads(numba.config.NUMBA_NUM_THREADS)
    table("2b. The training forward's product: ternary_gemm vs BLAS's float product and the division (same bits)",
          ["BitLinear", "tokens×in→out", "threads", "ternary_gemm", "BLAS + divide_rows", "ratio"], rows)
    RESULTS["gemm"] = out


# ---------------------------------------------------------------- 3. scan

def copy_bandwidth(nbytes, repeats=7):
    """Bytes moved per second (read + write) by np.copyto of an nbytes array."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    t = median_time(lambda: np.copyto(dst, src), repeats=repeats)
    return 2 * nbytes / t


def bench_scan():
    B, T, D = 8, 256, 512
    rng = np.random.default_rng(2)
    f = rng.uniform(0, 1, (B, T, D)).astype(np.float32)
    i = rng.standard_normal((B, T, D)).astype(np.float32)
    h0 = rng.standard_normal((B, D)).astype(np.float32)
    dh = rng.standard_normal((B, T, D)).astype(np.float32)
    h = scan_forward(f, i, h0)
    arr = f.nbytes
    bw_dram = copy_bandwidth(256 << 20)
    bw_same = copy_bandwidth(3 * arr)  # a working set as large as the forward's
    fwd_bytes, bwd_bytes = 3 * arr, 5 * arr
    rows, out = [], []
    for nt in (1, 2):
        set_threads(nt)
        tfr = median_time(lambda: scan_forward_ref(f, i, h0), repeats=7)
        tfk = median_time(lambda: scan_forward(f, i, h0), repeats=9)
        tbr = median_time(lambda: scan_backward_ref(dh, f, h, h0), repeats=7)
        tbk = median_time(lambda: scan_backward(dh, f, h, h0), repeats=9)
        for name, tr, tk, nbytes in (("forward", tfr, tfk, fwd_bytes), ("backward", tbr, tbk, bwd_bytes)):
            s_dram, s_same = nbytes / bw_dram, nbytes / bw_same
            rows.append([name, str(nt), us(tr), us(tk), f"{tr / tk:.1f}×", f"{nbytes / 2**20:.0f} MiB",
                         f"{tk / s_dram:.2f}", f"{tk / s_same:.2f}"])
            out.append(dict(kind=name, threads=nt, numpy_s=tr, numba_s=tk, speedup=tr / tk, bytes=nbytes,
                            kernel_over_stream_large_copy=tk / s_dram, kernel_over_stream_same_size=tk / s_same))
    set_threads(numba.config.NUMBA_NUM_THREADS)
    print(f"\ncopy bandwidth (np.copyto, read + write, current thread count): 256 MiB {bw_dram / 1e9:.1f} GB/s; "
          f"{3 * arr / 2**20:.0f} MiB {bw_same / 1e9:.1f} GB/s")
    table(f"3. MLGRU scan, (B,T,D) = ({B},{T},{D}) float32: Numba vs the NumPy loop over T",
          ["pass", "threads", "NumPy loop", "Numba", "speedup", "bytes streamed", "kernel / stream (256 MiB copy bw)",
           "kernel / stream (same-size copy bw)"], rows)
    RESULTS["scan"] = dict(rows=out, copy_bw_large=bw_dram, copy_bw_same_size=bw_same)


# ---------------------------------------------------------------- 4. compile times

COMPILE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from unittest import mock
    t0 = time.perf_counter()
    import numpy as np
    import minimmf.kernels as K
    from minimmf.kernels import ternary, scan
    t_import = time.perf_counter() - t0
    q_w = np.ones((2, 3), np.int8); q_x = np.ones((1, 3), np.int8); p = K.pack_ternary(q_w)
    f = np.full((1, 2, 3), 0.5); h0 = np.zeros((1, 3))
    calls = {
        "ternary_matmul": lambda: K.ternary_matmul(q_x, p),
        "float_ternary_matmul f32": lambda: K.float_ternary_matmul(np.ones((1, 2), np.float32), p),
        "float_ternary_matmul f64": lambda: K.float_ternary_matmul(np.ones((1, 2)), p),
        "scan_forward f32": lambda: K.scan_forward(f.astype(np.float32), f.astype(np.float32), h0.astype(np.float32)),
        "scan_backward f32": lambda: K.scan_backward(*[a.astype(np.float32) for a in (f, f, f, h0)]),
        "scan_forward f64": lambda: K.scan_forward(f, f, h0),
        "scan_backward f64": lambda: K.scan_backward(f, f, f, h0),
    }
    out = {"import": t_import}
    for path, below in (("serial", 10**12), ("parallel", 0)):
        with mock.patch.object(ternary, "SERIAL_BELOW", below), mock.patch.object(scan, "SERIAL_BELOW", below):
            for name, fn in calls.items():
                t = time.perf_counter(); fn(); out[f"{name} ({path})"] = time.perf_counter() - t
    print(json.dumps(out))
""")


def bench_compile():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = []
        for _ in range(2):  # first: cold compile into the empty cache; second: load from it
            r = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                               check=True)
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    rows = [[k, f"{cold[k]:.2f} s", f"{warm[k] * 1e3:.1f} ms"] for k in cold]
    rows.append(["total", f"{sum(cold.values()):.1f} s", f"{sum(warm.values()) * 1e3:.0f} ms"])
    table("4. First call of each kernel in a fresh process: cold compile vs loaded from cache=True",
          ["first call", "cold (empty NUMBA_CACHE_DIR)", "cached"], rows)
    RESULTS["compile"] = dict(cold=cold, cached=warm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    ap.add_argument("--only", nargs="+", choices=["decode", "load", "training", "gemm", "scan", "compile"],
                    help="run only these sections (default: all)")
    ap.add_argument("--load-child", type=int, metavar="REPEATS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_child:
        return load_child(args.load_child)
    info = header()
    t0 = time.perf_counter()
    ternary_matmul(np.ones((8, 1024), np.int8), pack_ternary(np.ones((1024, 1024), np.int8)))  # parallel path
    info["threading_layer"] = numba.threading_layer()
    print("# minimmf kernel benchmark\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    sections = {"decode": bench_decode, "load": bench_load, "training": bench_training, "gemm": bench_gemm,
                "scan": bench_scan, "compile": bench_compile}
    for name, fn in sections.items():
        if args.only is None or name in args.only:
            fn()
    RESULTS["wall_s"] = time.perf_counter() - t0
    RESULTS["env"]["load_average_at_end"] = os.getloadavg()[0]
    print(f"\nwall time {RESULTS['wall_s']:.0f} s; 1-min load average at start {info['load_average_at_start']:.2f}, "
          f"at end {os.getloadavg()[0]:.2f} (other processes on this 2-core machine distort 2-thread timings)")
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    main()
