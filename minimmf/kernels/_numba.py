"""Numba configuration shared by every minimmf kernel; import this module before anything compiles.

Two settings, both measured on the project's 2-core AVX-512 machines (see ``benchmarks/README.md``):

1. ``OPENBLAS_THREAD_TIMEOUT=4``. OpenBLAS and Numba each keep a thread pool whose idle threads busy-wait. On
   2 cores a batch-1 generation loop that alternates NumPy BLAS calls and Numba ``prange`` kernels can collapse
   ~100x because each pool's spinning threads steal the cores the other pool needs. A short OpenBLAS timeout
   makes its idle threads sleep quickly. OpenBLAS reads the variable only when it is loaded, i.e. when NumPy is
   first imported, so we set it (``setdefault``: a value the user chose wins) only if NumPy is not imported
   yet; otherwise it would have no effect and we leave the environment alone.
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

if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

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
