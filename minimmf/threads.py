"""Thread counts for NumPy's BLAS and for Numba, and choosing one by measurement.

On an idle 2-core machine two threads are faster than one. On a busy one they can be many times
*slower*: a parallel region (a Numba ``prange`` or a BLAS call) waits for its slowest thread, and a
thread that the OS has descheduled in favour of another process makes every region wait a full
time slice. ``fastest_thread_count`` times a piece of work at each count and returns the fastest.

The count is fixed for a whole training run: OpenBLAS blocks its products differently for different
thread counts, so the last bits of a product (and therefore of a run) depend on the count. The same
seed and the same count give bit-identical runs.

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numba
from threadpoolctl import threadpool_limits


def sleeping_workers() -> bool:
    """Make Numba's idle OpenMP workers sleep at once instead of spinning (``OMP_WAIT_POLICY=passive``), for a
    training process. A training step alternates BLAS products (OpenBLAS's own threads) with Numba kernels; on 2
    cores, workers of one pool that spin while the other pool works take the core it needs. Measured at the
    character shape on 2 threads (``benchmarks/README.md``, "Two threads"): 1.4x faster with sleeping workers,
    where spinning ones made 2 threads no faster than 1. Not for decoding, whose many tiny parallel regions
    pay a wake-up each. The OpenMP runtime reads the setting once, when Numba first starts its threads: returns
    False (and changes nothing) if that has happened already or the user set the variable."""
    import os

    from numba.np.ufunc import parallel
    if parallel._is_initialized or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "passive"
    return True


def max_threads() -> int:
    """The number of threads Numba was configured with (by default, the number of cores)."""
    return numba.config.NUMBA_NUM_THREADS


def set_threads(n: int) -> int:
    """Use ``n`` threads in both pools, Numba's and the BLAS library's. Returns the count set."""
    n = max(1, min(int(n), max_threads()))
    numba.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
    return n


def fastest_thread_count(work: Callable[[], object], candidates=None, rounds: int = 3) -> int:
    """Run ``work`` at each thread count, ``rounds`` times in turn (after one warm-up round), and
    return the count with the smallest median time. Leaves that count set."""
    candidates = sorted(set(candidates or range(1, max_threads() + 1)))
    if len(candidates) == 1:
        return set_threads(candidates[0])
    times: dict[int, list[float]] = {n: [] for n in candidates}
    for r in range(rounds + 1):
        for n in candidates:
            set_threads(n)
            t0 = time.perf_counter()
            work()
            if r:                                   # round 0 is a warm-up (and JIT compilation)
                times[n].append(time.perf_counter() - t0)
    best = min(candidates, key=lambda n: statistics.median(times[n]))
    return set_threads(best)
