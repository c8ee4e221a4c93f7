"""Batch-1 decode and 512-token prefill of released-shape models: packed ternary vs float32, side by side.

For each shape (random weights rounded to bf16, as a bf16 checkpoint would load; no download):

    decode tokens/s      PackedMMfreeLM.step  vs  MMfreeLM.step (the float32 NumPy path of the same model)
                         and vs the float32 weight-streaming floor: the model's W @ x matvecs alone (BLAS)
    bandwidth bound      bytes read per token / copy bandwidth measured in this run -> tokens/s; the
                         fraction of it that the measured decode reaches
    read rate            a streaming read of a buffer of one token's packed bytes, same threads: the decode's
                         bytes per second as a fraction of it (a one-thread copy can beat a one-thread read:
                         see read_bandwidth)
    prefill tokens/s     a 512-token prompt in one call, packed vs float
    memory               resident bytes of the packed model vs the float32 model
    threads              all of the above at 1 and 2 threads (Numba and OpenBLAS pools set together)
    background load      with --background-load, packed decode again while a process this script starts keeps one
                         core busy (a busy loop; stopped right after), side by side in one run: 1 thread,
                         2 threads forced (guard_threads = False), and the automatic choice (the step's guard
                         decides per step from its own timings; the share of steps it ran on 2 threads)

Run from the repository root:  python benchmarks/bench_decode.py [--json PATH] [--shapes 370m 1.3b]
Medians of several repeats; the machine may be shared, so the load average is printed at start and end, and
the copy bandwidth is sampled again before each shape (the bound uses the best sample). ~4 minutes.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")     # before NumPy starts its pool (PERF-NOTES)
if "--omp-passive" in sys.argv:                            # before the OpenMP runtime loads: idle workers sleep
    os.environ["OMP_WAIT_POLICY"] = "passive"

import argparse                                            # noqa: E402
import json                                                # noqa: E402
import platform                                            # noqa: E402
import subprocess                                          # noqa: E402
import time                                                # noqa: E402

import numba                                               # noqa: E402
import numpy as np                                         # noqa: E402
from numba import njit, prange                             # noqa: E402

import minimmf                                             # noqa: E402
from minimmf.model import param_shapes                     # noqa: E402
from minimmf.packed import resident_bytes                  # noqa: E402
from minimmf.tree import leaves, tree_map                  # noqa: E402

SHAPES = {  # SPEC §7
    "370m": minimmf.MMfreeConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, intermediate_size=2816),
    "1.3b": minimmf.MMfreeConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, intermediate_size=5632),
    "tiny": minimmf.MMfreeConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=2),   # a smoke test only
    # the training presets of minimmf/train.py (generation speed of what `minimmf train` makes)
    "tiny-preset": minimmf.MMfreeConfig(vocab_size=2048, hidden_size=128, num_hidden_layers=4, intermediate_size=256),
    "small-preset": minimmf.MMfreeConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=6, intermediate_size=512),
}
DEFAULT_SHAPES = ["370m", "1.3b"]
PREFILL_T = 512


# ----------------------------------------------------------------------------- threads and timing

from minimmf.threads import set_threads  # noqa: E402  (both pools, Numba's and OpenBLAS's, like for like)


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# ----------------------------------------------------------------------------- memory bandwidth

@njit(parallel=True, cache=True)
def _copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 7) -> float:
    """(bytes read + bytes written) / time of a parallel copy at the current Numba thread count."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    _copy(src, dst)
    return 2 * nbytes / median_time(lambda: _copy(src, dst), repeats)


READ_CHUNK = 4096  # uint64 values per work item of the streaming read (32 KiB)


@njit(parallel=True, cache=True)
def _read(a, parts):
    for c in prange(parts.size):
        s = np.uint64(0)
        for i in range(c * READ_CHUNK, (c + 1) * READ_CHUNK):   # an XOR reduction: LLVM vectorises and unrolls it
            s ^= a[i]
        parts[c] = s


def read_bandwidth(nbytes: int, repeats: int = 7) -> float:
    """Bytes / time of a plain streaming read (every byte read once, nothing written, no software prefetch) of
    an nbytes buffer, at the current Numba thread count. A decode step only reads its weights, and a one-thread
    copy of a large buffer can be faster per byte than such a read (glibc's memcpy, which the copy loop becomes,
    switches to non-temporal stores above a size threshold), so the read is a second yardstick; not a bound: the
    row kernels prefetch in software and can read faster (benchmarks/README.md)."""
    n = max(1, nbytes // (8 * READ_CHUNK))
    a = np.random.default_rng(0).integers(0, 2**63, n * READ_CHUNK, dtype=np.uint64)
    parts = np.empty(n, np.uint64)
    _read(a, parts)
    return a.nbytes / median_time(lambda: _read(a, parts), repeats)


# ----------------------------------------------------------------------------- models

def random_bf16_model(config, seed: int = 0) -> minimmf.MMfreeLM:
    """N(0, 0.02) weights (norm gains 1, lower bounds 0) rounded to bf16 values, float32 storage."""
    rng = np.random.default_rng(seed)

    def leaf(shape):
        if len(shape) == 1:
            return np.ones(shape, np.float32)
        a = rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(0.02)
        u = a.view(np.uint32)                                  # round to nearest-even bf16, in place
        u += np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))
        u &= np.uint32(0xFFFF0000)
        return a
    params = tree_map(leaf, param_shapes(config))
    params["lower_bounds"] = np.zeros_like(params["lower_bounds"])
    return minimmf.MMfreeLM(config, params)


def weight_matrices(model) -> list[np.ndarray]:
    """Every BitLinear weight matrix, in the order a decode step reads them."""
    return [W for path, W in leaves(model.params) if path.endswith(".W")]


def bytes_per_token(model, packed: bool) -> int:
    """Bytes a decode step must read: every weight matrix (2-bit codes or float32), gains, scales,
    lower bounds and one embedding row; activations and states are a few KB and are left out."""
    H = model.config.hidden_size
    total = resident_bytes(model) - model.params["embeddings"].nbytes
    return total + (model.params["embeddings"].nbytes // model.config.vocab_size if packed else 4 * H)


# ----------------------------------------------------------------------------- measurements

def decode_rate(model, n_tokens: int, repeats: int = 3, warmup: int | None = None) -> float:
    """Batch-1 tokens/s of model.step after a 4-token prefill: median over repeats of n_tokens steps."""
    _, state = model.prefill(np.array([[1, 2, 3, 4]]))
    tok = np.array([5])

    def run(n=n_tokens):
        s = state
        for _ in range(n):
            _, s = model.step(tok, s)
    run(warmup or n_tokens)                                    # warm-up: compile, page in
    return n_tokens / median_time(run, repeats)


def float_floor_rate(model, repeats: int = 5) -> float:
    """Tokens/s of the float32 weight stream alone: one BLAS W @ x per BitLinear, nothing else."""
    mats = weight_matrices(model)
    xs = {W.shape[1]: np.ones(W.shape[1], np.float32) for W in mats}

    def run():
        for W in mats:
            W @ xs[W.shape[1]]
    run()
    return 1.0 / median_time(run, repeats)


def prefill_rate(model, repeats: int) -> float:
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, PREFILL_T))
    model.prefill(ids[:, :8])
    return PREFILL_T / median_time(lambda: model.prefill(ids), repeats)


def loaded_rates(packed, n_decode: int, n_max: int, repeats: int = 7, round_s: float = 3.0) -> list[dict]:
    """Packed decode tok/s while one core is kept busy, side by side: 1 thread, n_max threads forced, n_max threads
    with the guard choosing per step (and the share of steps it ran on all threads). One background process for
    all three; the modes take turns, repeat after repeat and in rotated order, so that a change in the machine's
    other load, or what one mode leaves behind (a spinning worker, caches), falls on all of them; medians over the
    repeats. A round is n_decode steps or round_s seconds, whichever ends first (forced onto a busy core, a step
    can be 100x slower than on one thread)."""
    modes = [("1 thread", 1, True)]
    if n_max > 1:
        modes += [(f"{n_max} threads, forced", n_max, False), (f"{n_max} threads allowed, automatic", n_max, True)]
    _, state = packed.prefill(np.array([[1, 2, 3, 4]]))
    tok = np.array([5])
    rates = {m[0]: [] for m in modes}
    steps = {m[0]: [0, 0] for m in modes}                      # guarded steps, of which on all threads

    def run(n=n_decode):
        """(steps done, seconds)"""
        s, k, t0 = state, 0, time.perf_counter()
        while k < n:
            _, s = packed.step(tok, s)
            k += 1
            if time.perf_counter() - t0 > round_s:
                break
        return k, time.perf_counter() - t0

    saved = packed.num_threads
    with BackgroundLoad():
        for rep in range(repeats + 1):                         # the first round warms up (not kept)
            for label, n, guarded in modes[rep % len(modes):] + modes[:rep % len(modes)]:   # each follows each
                set_threads(n)
                packed.num_threads, packed.guard_threads = n, guarded
                run(1)                                         # the plan exists, the thread count is settled
                guard = packed._decode_plan.guard
                calls, par = guard.n_calls, guard.n_parallel
                k, seconds = run()
                if rep:
                    rates[label].append(k / seconds)
                    steps[label][0] += guard.n_calls - calls
                    steps[label][1] += guard.n_parallel - par
        load = os.getloadavg()[0]
    packed.num_threads, packed.guard_threads = saved, True
    return [{"mode": label, "threads": n, "tok_s": float(np.median(rates[label])), "load_avg": load,
             "share_on_all_threads": steps[label][1] / steps[label][0] if steps[label][0] else None}
            for label, n, _ in modes]


class BackgroundLoad:
    """A second process keeping one core busy (a busy loop) while the block runs."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)                                        # let it start and take its core
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def bench_shape(name: str, config, threads: list[int], bw: dict, quick: bool, packed_only: bool = False,
                background: bool = False) -> dict:
    """Every measurement for one shape. ``bw`` {threads: copy bandwidth} is updated with fresh samples
    (the bound uses the best sample: other processes can only make a copy slower, not faster)."""
    t0 = time.perf_counter()
    model = random_bf16_model(config)
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = model.pack()
    t_pack = time.perf_counter() - t0
    big = config.hidden_size > 1024
    r = {"shape": name, "L": config.num_hidden_layers, "H": config.hidden_size, "I": config.I,
         "V": config.vocab_size, "params": model.num_params(), "init_s": t_init, "pack_s": t_pack,
         "resident_fp32": resident_bytes(model), "resident_packed": packed.resident_bytes(),
         "embedding_storage": repr(packed.params["embeddings"]),
         "bytes_per_token_packed": bytes_per_token(packed, True),
         "bytes_per_token_fp32": bytes_per_token(model, False), "threads": {}}
    # the two paths agree on this model too (a quick check, not the test)
    ids = np.array([[3, 1, 4, 1, 5]])
    a, b = model.forward(ids), packed.forward(ids)
    r["max_abs_logit_diff_packed_vs_float"] = float(np.abs(a - b).max())
    r["load_avg"] = os.getloadavg()[0]
    n_decode = 8 if quick else (32 if big else 64)
    for n in threads:
        set_threads(n)
        bw[n] = max(bw[n], copy_bandwidth(repeats=5))
        t = {"decode_packed": decode_rate(packed, n_decode, repeats=5),
             "read_bandwidth": read_bandwidth(r["bytes_per_token_packed"])}
        if not packed_only:
            t["decode_float"] = decode_rate(model, 1 if big else 2, repeats=2 if big else 3, warmup=1)
            t["decode_float_floor"] = float_floor_rate(model)
            if not (big and n != min(threads)):                # 1.3B prefill: one thread count (time budget)
                t["prefill_packed"] = prefill_rate(packed, 1 if (quick or big) else 2)
                t["prefill_float"] = prefill_rate(model, 1 if (quick or big) else 2)
        r["threads"][n] = t
    if background:
        r["loaded"] = loaded_rates(packed, n_decode, max(threads))
    for n, t in r["threads"].items():                          # bounds with the best bandwidth seen
        t["copy_bandwidth"] = bw[n]
        for kind in ("packed", "fp32"):
            bound = bw[n] / r[f"bytes_per_token_{kind}"]
            t[f"bound_{kind}"] = bound
        t["fraction_of_bound_packed"] = t["decode_packed"] / t["bound_packed"]
        t["fraction_of_read_packed"] = t["decode_packed"] * r["bytes_per_token_packed"] / t["read_bandwidth"]
        if "decode_float" in t:
            t["fraction_of_bound_float_floor"] = t["decode_float_floor"] / t["bound_fp32"]
            t["speedup_vs_float_step"] = t["decode_packed"] / t["decode_float"]
            t["speedup_vs_float_floor"] = t["decode_packed"] / t["decode_float_floor"]
    set_threads(max(threads))
    r["tuned_threads"] = packed.tune_threads(n_tokens=4, candidates=threads)
    set_threads(r["tuned_threads"])                            # OpenBLAS too, as in the rows above
    r["decode_packed_tuned"] = decode_rate(packed, n_decode)
    return r


# ----------------------------------------------------------------------------- report

def fmt_bytes(b: float) -> str:
    return f"{b / 1e6:,.1f} MB" if b < 1e9 else f"{b / 1e9:,.2f} GB"


def report(res: dict) -> str:
    out = []
    cpu = res.get("cpu", "?")
    for r in res["shapes"]:
        out.append(f"\n## {r['shape']}: L={r['L']} H={r['H']} I={r['I']} V={r['V']}, {r['params'] / 1e6:,.0f} M "
                   f"parameters (random, bf16-valued); init {r['init_s']:.1f} s, pack() {r['pack_s']:.1f} s; "
                   f"load average {r['load_avg']:.2f}")
        out.append(f"resident: fp32 model {fmt_bytes(r['resident_fp32'])}, packed {fmt_bytes(r['resident_packed'])} "
                   f"= 1/{r['resident_fp32'] / r['resident_packed']:.1f} ({r['embedding_storage']})")
        out.append(f"bytes read per token: packed {fmt_bytes(r['bytes_per_token_packed'])}, "
                   f"fp32 {fmt_bytes(r['bytes_per_token_fp32'])}; max |logit diff| packed vs float on 5 tokens: "
                   f"{r['max_abs_logit_diff_packed_vs_float']:.2e}")
        if "decode_float" not in next(iter(r["threads"].values())):   # --packed-only
            out.append("\n| threads | packed step tok/s | packed bound tok/s | packed % of bound | copy bw GB/s "
                       "| read bw GB/s | packed % of read |")
            out.append("|" + "---|" * 7)
            for n, t in r["threads"].items():
                out.append(f"| {n} | {t['decode_packed']:.1f} | {t['bound_packed']:.0f} "
                           f"| {100 * t['fraction_of_bound_packed']:.0f}% | {t['copy_bandwidth'] / 1e9:.1f} "
                           f"| {t['read_bandwidth'] / 1e9:.1f} | {100 * t['fraction_of_read_packed']:.0f}% |")
            out.append(f"\npacked.tune_threads() chose {r['tuned_threads']} thread(s): "
                       f"{r['decode_packed_tuned']:.1f} tok/s")
            if len(r["threads"]) == 2:
                t1, t2 = r["threads"][1], r["threads"][2]
                out.append(f"\n2 threads ÷ 1 thread: packed decode {t2['decode_packed'] / t1['decode_packed']:.2f}×")
            out.extend(report_loaded(r, cpu))
            continue
        out.append("\n| threads | packed step tok/s | float32 step tok/s | float32 W@x floor tok/s | packed ÷ float step "
                   "| packed ÷ floor | packed bound tok/s | packed % of bound | floor % of fp32 bound "
                   f"| prefill {PREFILL_T} packed tok/s | prefill float tok/s |")
        out.append("|" + "---|" * 11)
        for n, t in r["threads"].items():
            out.append(f"| {n} | {t['decode_packed']:.1f} | {t['decode_float']:.2f} | {t['decode_float_floor']:.1f} "
                       f"| {t['speedup_vs_float_step']:.1f}× | {t['speedup_vs_float_floor']:.1f}× "
                       f"| {t['bound_packed']:.0f} | {100 * t['fraction_of_bound_packed']:.0f}% "
                       f"| {100 * t['fraction_of_bound_float_floor']:.0f}% "
                       f"| {t.get('prefill_packed', float('nan')):.0f} | {t.get('prefill_float', float('nan')):.0f} |")
        out.append(f"\npacked.tune_threads() chose {r['tuned_threads']} thread(s): "
                   f"{r['decode_packed_tuned']:.1f} tok/s")
        if len(r["threads"]) == 2:
            t1, t2 = r["threads"][1], r["threads"][2]
            out.append(f"\n2 threads ÷ 1 thread: packed decode {t2['decode_packed'] / t1['decode_packed']:.2f}×, "
                       f"float decode {t2['decode_float'] / t1['decode_float']:.2f}×"
                       + (f", packed prefill {t2['prefill_packed'] / t1['prefill_packed']:.2f}×"
                          if "prefill_packed" in t2 else ""))
        out.append("copy bandwidth used for the bounds (best sample so far): " + ", ".join(
            f"{n} thread(s) {t['copy_bandwidth'] / 1e9:.1f} GB/s" for n, t in r["threads"].items()))
        out.append("streaming read of one token's packed bytes: " + ", ".join(
            f"{n} thread(s) {t['read_bandwidth'] / 1e9:.1f} GB/s (packed decode reads at "
            f"{100 * t['fraction_of_read_packed']:.0f}% of it)" for n, t in r["threads"].items()))
        out.extend(report_loaded(r, cpu))
    return "\n".join(out)


def report_loaded(r: dict, cpu: str) -> list[str]:
    """The --background-load table: one core busy, 1 thread vs all threads forced vs the automatic choice."""
    if "loaded" not in r:
        return []
    rows = r["loaded"]
    out = [f"\nwith one core kept busy by a background process ({cpu}):",
           "\n| mode | tok/s | ÷ 1 thread | steps on all threads | load avg |", "|---|---|---|---|---|"]
    for row in rows:
        share = row["share_on_all_threads"]
        out.append(f"| {row['mode']} | {row['tok_s']:.1f} | {row['tok_s'] / rows[0]['tok_s']:.2f} "
                   f"| {'' if share is None else f'{100 * share:.0f}%'} | {row['load_avg']:.2f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write every number to this file")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=DEFAULT_SHAPES)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (a smoke test)")
    ap.add_argument("--packed-only", action="store_true",
                    help="packed decode and its bound only (no float32 step, float floor or prefill)")
    ap.add_argument("--background-load", action="store_true",
                    help="also time packed decode while a busy-loop process started here keeps one core busy")
    ap.add_argument("--omp-passive", action="store_true",
                    help="set OMP_WAIT_POLICY=passive (idle Numba OpenMP workers sleep instead of spinning)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    res = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu,
           "llvm_cpu": numba.config.CPU_NAME or __import__("llvmlite.binding").binding.get_host_cpu_name(),
           "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
           "numba": numba.__version__, "minimmf": minimmf.__version__,
           "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "load_avg_start": os.getloadavg()[0], "copy_bandwidth": {}, "shapes": []}
    for n in args.threads:
        set_threads(n)
        res["copy_bandwidth"][n] = copy_bandwidth()
    res["threading_layer"] = numba.threading_layer()
    print(f"# bench_decode  {res['date_utc']} UTC  {cpu} ({res['llvm_cpu']}), {res['cores']} cores; Python "
          f"{res['python']}, NumPy {res['numpy']}, Numba {res['numba']} ({res['threading_layer']}), "
          f"OPENBLAS_THREAD_TIMEOUT={res['openblas_thread_timeout']}, OMP_WAIT_POLICY={res['omp_wait_policy']}; "
          f"load average {res['load_avg_start']:.2f}")
    print("copy bandwidth (read + write, 256 MiB, Numba prange): " + ", ".join(
        f"{n} thread{'s' if n > 1 else ''} {bw / 1e9:.1f} GB/s" for n, bw in res["copy_bandwidth"].items()))
    for name in args.shapes:
        r = bench_shape(name, SHAPES[name], args.threads, res["copy_bandwidth"], args.quick, args.packed_only,
                        args.background_load)
        res["shapes"].append(r)
        print(report({"shapes": [r], "cpu": cpu}), flush=True)
    res["load_avg_end"] = os.getloadavg()[0]
    res["wall_s"] = time.perf_counter() - t_start
    print(f"\nwall time {res['wall_s']:.0f} s; load average at start {res['load_avg_start']:.2f}, "
          f"at end {res['load_avg_end']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
