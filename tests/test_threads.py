"""Thread counts: the tuner picks the faster count, and the numbers never depend on the count."""
import numpy as np
import pytest

import minimmf
from minimmf.threads import max_threads, set_threads
from minimmf.tree import leaves


def test_fastest_thread_count_picks_the_count_with_the_shortest_time(monkeypatch):
    """The count whose runs took least time is chosen (and left set)."""
    import minimmf.threads as threads
    monkeypatch.setattr(threads, "max_threads", lambda: 2)
    chosen = []
    monkeypatch.setattr(threads, "set_threads", lambda n: chosen.append(n) or n)
    durations = {1: 3.0, 2: 1.0}                    # two threads are faster here
    now = {"t": 0.0}

    def fake_perf_counter():
        return now["t"]

    def work():
        now["t"] += durations[chosen[-1]]

    monkeypatch.setattr(threads.time, "perf_counter", fake_perf_counter)
    assert threads.fastest_thread_count(work, rounds=2) == 2
    durations.update({1: 1.0, 2: 3.0})              # ...and now one thread is
    assert threads.fastest_thread_count(work, rounds=2) == 1


def test_gradients_are_reproducible_at_each_thread_count():
    """With a fixed thread count, repeated loss_and_grads calls give bit-identical results."""
    cfg = minimmf.MMfreeConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    model = minimmf.MMfreeLM.init(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, 50, (16, 65))
    for n in sorted({1, max_threads()}):
        set_threads(n)
        out = [model.loss_and_grads(ids, ids) for _ in range(2)]
        assert out[0][0] == out[1][0]
        g0, g1 = dict(leaves(out[0][1])), dict(leaves(out[1][1]))
        for k, v in g0.items():
            np.testing.assert_array_equal(v, g1[k], err_msg=f"{k} at {n} threads")
    set_threads(max_threads())


OPENBLAS_PROBE = """
import ctypes, os, sys
{first}
import minimmf
from minimmf.kernels import _numba
from threadpoolctl import threadpool_info
blas = [m for m in threadpool_info() if m["internal_api"] == "openblas" and m["threading_layer"] == "pthreads"]
read = ctypes.CDLL(blas[0]["filepath"]).openblas_thread_timeout() if blas else None
print(_numba.OPENBLAS_IDLE, os.environ.get("OPENBLAS_THREAD_TIMEOUT"), read)
"""


def _openblas_probe(first: str, env_timeout: str | None) -> list[str]:
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_timeout is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_timeout
    out = subprocess.run([sys.executable, "-c", OPENBLAS_PROBE.format(first=first)], env=env, capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def test_openblas_threads_get_the_short_timeout_whether_numpy_or_minimmf_is_imported_first():
    """Importing minimmf gives OpenBLAS's idle threads the short timeout (4) in both orders: before NumPy it is
    set for OpenBLAS to read when it loads; after NumPy, OpenBLAS is made to read it again. A value the user set
    is left alone."""
    from minimmf.kernels._numba import OPENBLAS_TIMEOUT
    first_minimmf = _openblas_probe("", None)
    if first_minimmf[2] == "None":
        pytest.skip("NumPy's BLAS here is not OpenBLAS with its own threads: it has no thread timeout")
    assert first_minimmf == ["set", OPENBLAS_TIMEOUT, OPENBLAS_TIMEOUT]
    assert _openblas_probe("import numpy", None) == ["restarted", OPENBLAS_TIMEOUT, OPENBLAS_TIMEOUT]
    assert _openblas_probe("import numpy", "9") == ["user", "9", "9"]
