"""minimmf's batch-1 ternary product side by side with llama.cpp's ggml (TQ2_0, TQ1_0, Q8_0) and NumPy float32.

    LLAMA_CPP_DIR=/path/to/llama.cpp python benchmarks/bench_peers.py [--passes 2] [--repeats 300] [--json PATH]
    LLAMA_CPP_DIR=/path/to/llama.cpp python benchmarks/bench_peers.py --whole-model [--passes 2] [--tokens 64]

Builds nothing. LLAMA_CPP_DIR must be a llama.cpp source tree built with CMake into ``build/`` and the timing
program ``benchmarks/peers/ggml_matmul_bench.c`` compiled against it (``benchmarks/peers/build.sh``; the whole
recipe is in benchmarks/README.md). Without it, the script says how to get llama.cpp and times minimmf alone.

For every shape (out x in) of the table, mode and thread count it times, each as the median of ``--repeats`` calls:

    minimmf offset   offset_matmul(q_x, OffsetPacked)   int8 activations -> int32 sums (u8 x i8 multiply-add)
    minimmf add/sub  ternary_matmul(q_x, PackedTernary) the older kernel, for reference
    ggml TQ2_0/TQ1_0/Q8_0  ggml_mul_mat(W, x) with x float32, quantized by ggml to Q8_K / Q8_0 inside the call
    NumPy f32        W @ x with W float32

"hot": one matrix used again and again (it stays in the caches); "cold": a ring of distinct matrices whose total
size is at least twice the last-level cache, used in turn (weights come from DRAM). Each cell is the best of
``--passes`` passes (the machine may be shared: the load average is printed before and after). A second table
shows minimmf offset and ggml TQ2_0 again with one column per thread count (1 and 2 threads side by side).

``--whole-model``: batch-1 decode of a whole model with MMfreeLM-370M's matrix sizes instead (hidden 1024, 24
layers, FFN 2816, vocabulary 32000, random ternary weights). llama.cpp's side is ``llama-bench`` (text generation,
``-p 0 -n TOKENS``) on TQ2_0 and TQ1_0 GGUFs written by ``peers/make_gguf.py`` (with the ``gguf`` package of the
llama.cpp tree; written once into ``--gguf-dir`` and reused); minimmf's side is ``PackedMMfreeLM.step`` at the same
shape (``bench_decode.py``'s model and timing), TOKENS steps after a 4-token prefill. Per thread count the three are
timed one after the other, and each keeps its best of ``--passes`` passes.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import minimmf.kernels  # noqa: F401  (configures Numba first)
import numpy as np

from minimmf.kernels.ternary import offset_matmul, pack_offset, pack_ternary, ternary_matmul
from minimmf.threads import set_threads

sys.path.insert(0, str(Path(__file__).parent))
from bench_kernels import cpu_name, l3_bytes  # noqa: E402

SHAPES = [(1024, 1024), (2816, 1024), (5632, 2048), (32000, 1024)]
GGML_TYPES = ["tq2_0", "tq1_0", "q8_0"]
BENCH_NAME = "minimmf_ggml_matmul_bench"

HOW_TO_GET = """\
llama.cpp not found: set LLAMA_CPP_DIR to a llama.cpp tree built with CMake (see benchmarks/README.md):
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d ext/      # llama.cpp commit 0c1e570
    tar xzf ext/llama_cpp_python-0.3.36.tar.gz -C ext/
    export LLAMA_CPP_DIR=$PWD/ext/llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -S $LLAMA_CPP_DIR -B $LLAMA_CPP_DIR/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \\
          -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    cmake --build $LLAMA_CPP_DIR/build -j2 --target ggml llama-bench
    sh benchmarks/peers/build.sh
Timing minimmf and NumPy alone."""


def ggml_program():
    """The compiled timing program under $LLAMA_CPP_DIR/build/bin, or None (after saying what is missing)."""
    root = os.environ.get("LLAMA_CPP_DIR")
    if not root:
        print(HOW_TO_GET)
        return None
    exe = Path(root) / "build" / "bin" / BENCH_NAME
    if not exe.is_file():
        print(f"LLAMA_CPP_DIR={root} has no {exe.relative_to(root)}: compile it with "
              f"`LLAMA_CPP_DIR={root} sh benchmarks/peers/build.sh`. Timing minimmf and NumPy alone.")
        return None
    return exe


def shape_arg(text: str) -> tuple[int, int]:
    """'5632x2048' -> (5632, 2048): out x in, in a multiple of 256 (ggml's TQ2_0 block)."""
    try:
        O, I = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is OUTxIN, e.g. 5632x2048; got {text!r}") from None
    if O < 1 or I < 256 or I % 256:
        raise argparse.ArgumentTypeError(f"OUT must be >= 1 and IN a multiple of 256 (ggml's blocks); got {text!r}")
    return O, I


def ring_size(mode, nbytes):
    """1 matrix for "hot"; for "cold" enough distinct matrices to fill twice the last-level cache."""
    return 1 if mode == "hot" else max(2, -(-2 * l3_bytes() // nbytes))


def time_ring(call, ring, repeats):
    """Median and minimum seconds of call(k) over `repeats` calls, k cycling through the ring (after one warm lap)."""
    for k in range(ring):
        call(k)
    ts = np.empty(repeats)
    for r in range(repeats):
        t0 = time.perf_counter()
        call(r % ring)
        ts[r] = time.perf_counter() - t0
    return float(np.median(ts)), float(ts.min())


def time_minimmf(O, I, mode, threads, repeats, rng):
    """Times (s) of minimmf's two kernels and NumPy float32 on one shape/mode/thread count."""
    set_threads(threads)
    q_x = rng.integers(-128, 128, size=(1, I), dtype=np.int8)
    x32 = q_x[0].astype(np.float32)
    out = {}
    R = ring_size(mode, O * I // 4)
    q_ws = [rng.integers(-1, 2, size=(O, I), dtype=np.int8) for _ in range(min(R, 2))]

    def ring(packed):  # R distinct arrays (copies), two distinct contents: packed once, copied (a cold ring is large)
        return [p._replace(codes=p.codes.copy()) for k in range(R) for p in [packed[k % len(packed)]]]
    offset = ring([pack_offset(q) for q in q_ws])
    out["minimmf offset"] = time_ring(lambda k: offset_matmul(q_x, offset[k]), R, repeats)[0]
    del offset
    old = ring([pack_ternary(q) for q in q_ws])
    out["minimmf add/sub"] = time_ring(lambda k: ternary_matmul(q_x, old[k]), R, repeats)[0]
    del old
    R32 = ring_size(mode, O * I * 4)
    w32 = [q_ws[k % len(q_ws)].astype(np.float32) for k in range(R32)]
    out["NumPy f32"] = time_ring(lambda k: w32[k] @ x32, R32, max(20, repeats // 4))[0]
    return out


def time_ggml(exe, kind, O, I, mode, threads, repeats):
    """Median seconds of ggml_mul_mat for one weight type, from the timing program's output line."""
    bytes_per_weight = {"tq2_0": 2.0625 / 8, "tq1_0": 1.6875 / 8, "q8_0": 34 / 32, "f32": 4}[kind]
    R = ring_size(mode, int(O * I * bytes_per_weight))
    line = subprocess.run([str(exe), kind, str(O), str(I), str(threads), str(R), str(repeats)],
                          check=True, capture_output=True, text=True).stdout.split()
    return float(line[5]) * 1e-6


def print_thread_columns(cells, threads, with_ggml: bool) -> None:
    """The same cells with one column per thread count, minimmf offset and ggml TQ2_0 side by side (µs)."""
    names = ["minimmf offset"] + (["ggml TQ2_0"] if with_ggml else [])
    cols = [(name, t) for name in names for t in threads]
    head = [f"{name}, {t} thread{'s' if t > 1 else ''}" for name, t in cols]
    if with_ggml:
        head += [f"minimmf ÷ TQ2_0, {t} thread{'s' if t > 1 else ''}" for t in threads]
    print("\n| out × in | mode | " + " | ".join(head) + " |")
    print("|---|---|" + "---|" * len(head))
    for O, I in SHAPES:
        for mode in ("hot", "cold"):
            if not all((O, I, t, mode) in cells for t in threads):
                continue
            row = [f"{cells[(O, I, t, mode)][name] * 1e6:,.0f}" for name, t in cols]
            if with_ggml:
                row += [f"{cells[(O, I, t, mode)]['minimmf offset'] / cells[(O, I, t, mode)]['ggml TQ2_0']:.2f}"
                        for t in threads]
            print(f"| {O} × {I} | {mode} | " + " | ".join(row) + " |")


def llama_bench_rate(gguf: Path, threads: int, tokens: int, repeats: int = 3) -> float:
    """llama-bench's text-generation rate (tokens/s, its mean over ``repeats`` runs) for one GGUF."""
    exe = Path(os.environ["LLAMA_CPP_DIR"]) / "build" / "bin" / "llama-bench"
    out = subprocess.run([str(exe), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", str(threads),
                          "-r", str(repeats), "-o", "json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llama-bench failed ({out.returncode}): {out.stderr.strip()[-800:]}")
    return float(json.loads(out.stdout)[0]["avg_ts"])


def whole_model(args) -> None:
    """Batch-1 decode of the 370M shape: llama-bench on TQ2_0 / TQ1_0 GGUFs against PackedMMfreeLM.step."""
    root = os.environ.get("LLAMA_CPP_DIR")
    if not root or not (Path(root) / "build" / "bin" / "llama-bench").is_file():
        print(HOW_TO_GET.replace("Timing minimmf and NumPy alone.", "Then run --whole-model again."))
        raise SystemExit(1)
    from bench_decode import SHAPES as DECODE_SHAPES
    from bench_decode import decode_rate, random_bf16_model
    ggufs = {}
    args.gguf_dir.mkdir(parents=True, exist_ok=True)
    for kind in ("tq2_0", "tq1_0"):
        ggufs[kind] = args.gguf_dir / f"mmf370m-{kind}.gguf"
        if not ggufs[kind].is_file():
            print(f"writing {ggufs[kind]} (peers/make_gguf.py) ...", flush=True)
            env = dict(os.environ, PYTHONPATH=str(Path(root) / "gguf-py"))
            tmp = ggufs[kind].with_suffix(".part")
            subprocess.run([sys.executable, str(Path(__file__).parent / "peers" / "make_gguf.py"), str(tmp),
                            "--type", kind], check=True, env=env, stdout=subprocess.DEVNULL)
            tmp.replace(ggufs[kind])
    model = random_bf16_model(DECODE_SHAPES["370m"]).pack()
    load0 = os.getloadavg()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average at start {load0[0]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    best = {}
    for p in range(args.passes):
        for t in args.threads:
            got = {f"llama.cpp {k.upper()}": llama_bench_rate(g, t, args.tokens) for k, g in ggufs.items()}
            set_threads(t)
            got["minimmf packed"] = decode_rate(model, args.tokens, repeats=3)
            for name, v in got.items():
                best.setdefault(t, {})[name] = max(best.get(t, {}).get(name, 0.0), v)
            print(f"pass {p + 1}/{args.passes}, {t} thread(s): " + ", ".join(f"{k} {v:.1f}" for k, v in got.items())
                  + f" tok/s; load average {os.getloadavg()[0]:.2f}", flush=True)
    print("\n| threads | llama.cpp TQ2_0 | llama.cpp TQ1_0 | minimmf packed | minimmf ÷ llama.cpp TQ2_0 |")
    print("|---|---|---|---|---|")
    for t, got in best.items():
        print(f"| {t} | {got['llama.cpp TQ2_0']:.1f} tok/s | {got['llama.cpp TQ1_0']:.1f} | "
              f"{got['minimmf packed']:.1f} | {got['minimmf packed'] / got['llama.cpp TQ2_0']:.2f} |")
    load1 = os.getloadavg()
    print(f"\n(batch-1 decode, {args.tokens} tokens per run; each cell the best of {args.passes} passes; "
          f"load average at end {load1[0]:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "load_start": load0, "load_end": load1,
                                         "tokens": args.tokens, "rates": best}, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passes", type=int, default=2, help="passes over the whole table; each cell keeps its best")
    ap.add_argument("--repeats", type=int, default=300, help="calls per cell and pass (median taken)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["hot", "cold"], choices=["hot", "cold"])
    ap.add_argument("--shapes", type=shape_arg, nargs="+", default=SHAPES, metavar="OUTxIN",
                    help="the products to time (default: the four of the table, e.g. 5632x2048)")
    ap.add_argument("--json", type=Path, help="also write every number here")
    ap.add_argument("--whole-model", action="store_true", help="batch-1 decode of the 370M shape: llama-bench on "
                                                               "TQ2_0/TQ1_0 GGUFs against PackedMMfreeLM.step")
    ap.add_argument("--tokens", type=int, default=64, help="--whole-model: tokens generated per timed run")
    ap.add_argument("--gguf-dir", type=Path, default=Path("runs/peers"),
                    help="--whole-model: where the GGUFs are written once and reused")
    args = ap.parse_args(argv)
    if args.whole_model:
        return whole_model(args)
    exe = ggml_program()
    load0 = os.getloadavg()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, L3 {l3_bytes() >> 20} MiB; "
          f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    rng = np.random.default_rng(0)
    cells = {}
    for p in range(args.passes):
        for O, I in args.shapes:
            for mode in args.modes:
                for t in args.threads:
                    key = (O, I, t, mode)
                    reps = args.repeats if mode == "hot" else max(60, args.repeats // 3)
                    got = time_minimmf(O, I, mode, t, reps, rng)
                    if exe is not None:
                        for kind in GGML_TYPES:
                            got[f"ggml {kind.upper()}"] = time_ggml(exe, kind, O, I, mode, t, reps)
                    best = cells.setdefault(key, got)
                    for name, v in got.items():
                        best[name] = min(best[name], v)
                    print(f"  {O} × {I}, {mode}, {t} thread(s): " + ", ".join(
                        f"{name} {v * 1e6:,.0f} µs" for name, v in got.items()), flush=True)
            print(f"pass {p + 1}/{args.passes}: {O} × {I} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    cols = ["minimmf offset", "minimmf add/sub"] + ([f"ggml {k.upper()}" for k in GGML_TYPES] if exe else [])
    cols += ["NumPy f32"]
    print("\n| out × in | threads | mode | " + " | ".join(cols) + (" | minimmf ÷ TQ2_0 |" if exe else " |"))
    print("|---|---|---|" + "---|" * len(cols) + ("---|" if exe else ""))
    for (O, I, t, mode), got in sorted(cells.items(), key=lambda kv: (kv[0][0] * kv[0][1], kv[0][3], kv[0][2])):
        row = [f"{O} × {I}", str(t), mode] + [f"{got[c] * 1e6:,.0f}" for c in cols]
        if exe:
            row.append(f"{got['minimmf offset'] / got['ggml TQ2_0']:.2f}")
        print("| " + " | ".join(row) + " |")
    print_thread_columns(cells, args.threads, exe is not None)
    load1 = os.getloadavg()
    print(f"\n(µs, median of calls, best of {args.passes} passes; load average at end "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; machine shared with other processes)")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_name(), "load_start": load0, "load_end": load1,
            "cells": [{"out": O, "in": I, "threads": t, "mode": m, **v} for (O, I, t, m), v in cells.items()]},
            indent=1))


if __name__ == "__main__":
    main()
