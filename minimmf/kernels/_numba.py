"""Numba configuration shared by every minimmf kernel; import this module before anything compiles.

Two settings, both measured on the project's 2-core AVX-512 machines (see ``benchmarks/README.md``):

1. ``OPENBLAS_THREAD_TIMEOUT=4``. OpenBLAS and Numba each keep a thread pool whose idle threads busy-wait. On
   2 cores a batch-1 generation loop that alternates NumPy BLAS calls and Numba ``prange`` kernels can collapse
   ~100x because each pool's spinning threads steal the cores the other pool needs (a training step on 2
   threads: ~3x, measured). A short OpenBLAS timeout makes its idle threads sleep quickly. OpenBLAS reads the
   variable when it is loaded, i.e. when NumPy is first imported, so we set it then (a value the user chose
   wins). When NumPy was imported first (a notebook's ``import numpy as np``), OpenBLAS has read it already:
   ``_openblas_reread_timeout`` sets it, has OpenBLAS read its variables again (``openblas_read_env``) and
   stops its threads (``blas_thread_shutdown_``, what OpenBLAS itself does before a fork); the next threaded
   product starts them again with the short timeout. Where those functions are missing, it warns instead.
2. 512-bit vectors. On AVX-512 CPUs LLVM is often tuned to prefer 256-bit vectors; adding ``-prefer-256-bit``
   to the host's feature string lets the ternary kernels use full 512-bit registers (1.3-1.5x on the decode
   kernel where measured). Numba reads ``config.CPU_FEATURES`` when its CPU code generator is first created,
   so this only takes effect if no ``@njit`` function was compiled earlier in the process; otherwise it is a
   harmless no-op. It is guarded on ``+avx512bw`` so other CPUs keep Numba's defaults, and skipped if the
   user set ``NUMBA_CPU_FEATURES`` / ``NUMBA_CPU_NAME`` themselves. Cached kernels (``cache=True``) are keyed
   by CPU name and features, so a changed setting recompiles instead of loading a mismatched binary.
"""

import os
import sys

OPENBLAS_TIMEOUT = "4"  # OpenBLAS's idle threads sleep after 2**4 = 16 idle polling rounds (its minimum)


def _openblas_reread_timeout() -> str:
    """Give an OpenBLAS that NumPy loaded already the short thread timeout. Returns what happened: "restarted"
    (OpenBLAS re-read the variable and its threads were stopped), "not openblas" (NumPy uses another BLAS or
    OpenBLAS with OpenMP threads, which has no timeout), or "warned" (the functions were not there)."""
    import ctypes
    import warnings

    from threadpoolctl import threadpool_info

    found = [m for m in threadpool_info() if m.get("internal_api") == "openblas"
             and m.get("threading_layer") == "pthreads"]
    if not found:
        return "not openblas"
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT
    try:
        lib = ctypes.CDLL(found[0]["filepath"])              # the copy already loaded: same handle
        read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
    except (OSError, AttributeError):
        warnings.warn("NumPy was imported before minimmf, so OpenBLAS's idle threads keep spinning and two "
                      "threads can be several times slower than one. Import minimmf before NumPy, or start "
                      f"Python with OPENBLAS_THREAD_TIMEOUT={OPENBLAS_TIMEOUT} set.", RuntimeWarning, stacklevel=3)
        return "warned"
    read_env()
    shutdown()
    return "restarted"


if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
    OPENBLAS_IDLE = "user"                # the user's value, read by OpenBLAS when it was loaded
elif "numpy" not in sys.modules:
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT
    OPENBLAS_IDLE = "set"                 # read by OpenBLAS when NumPy loads it, just below
else:
    OPENBLAS_IDLE = _openblas_reread_timeout()

import numba  # noqa: E402


def _configure_cpu_features() -> str | None:
    """Set numba.config.CPU_FEATURES to host features + ',-prefer-256-bit' on AVX-512BW hosts; return it."""
    if numba.config.CPU_FEATURES or numba.config.CPU_NAME:
        return None  # the user chose explicitly
    if numba.config.DISABLE_JIT:
        return None
    try:
        import llvmlite.binding as ll

        features = ll.get_host_cpu_features().flatten()
    except Exception:  # pragma: no cover - exotic llvmlite builds
        return None
    if "+avx512bw" not in features.split(","):
        return None
    numba.config.CPU_FEATURES = features + ",-prefer-256-bit"
    return numba.config.CPU_FEATURES


CPU_FEATURES = _configure_cpu_features()

njit = numba.njit
prange = numba.prange
