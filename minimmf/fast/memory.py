"""The process a training loop runs in: keep freed memory for the next step, and no garbage-collector sweeps of
the long-lived objects.

A training step allocates and frees the same few hundred arrays every time (activations, caches, gradients), many
of them larger than glibc's default mmap threshold (128 KiB, raised on the fly up to 32 MiB). An array above the
threshold is mapped fresh from the OS and unmapped when freed, so the next step faults its pages in and the OS zeroes
them again: measured with ``benchmarks/profile_step.py``, that was 11-18% of a step's CPU time at the character
shape ("OS kernel" in its table). Raising the mmap threshold to its maximum and never trimming the heap keeps the
freed memory in the process, where the next step finds it. (The memory a step needs is held once, not more.)

Python's cyclic garbage collector walks every tracked object each time the youngest generation fills up; a step
makes thousands of small containers (caches, gradient trees), so it runs many times per step and, every so often,
walks all the model's long-lived objects. ``gc.freeze()`` after setup moves those out of its sight.

Neither changes a single number: both are about where memory comes from, not what is computed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_TRIM_THRESHOLD = -1        # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20   # glibc's ceiling on 64-bit systems (4 * 1024 * 1024 * sizeof(long))


def prepare_process() -> bool:
    """Keep freed memory in the process (glibc) and freeze the objects alive now out of the garbage collector's
    sweeps. Call once, after the model and optimizer exist. Returns True if the allocator setting applied."""
    gc.collect()
    gc.freeze()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):     # not glibc (macOS, musl): nothing to set
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    return mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
