"""Fast kernels, each beside its plain-NumPy reference: ternary products (ternary.py; ternary_gemm.py for the
training forward's many tokens), the MLGRU scan (scan.py), NumPy's float32 e^x (exp32.py), the fused training
and decode kernels.

``_numba`` is imported first so that its Numba settings apply before any kernel compiles.
"""

from . import _numba  # noqa: F401  (must come first)
from .scan import scan_backward, scan_backward_ref, scan_forward, scan_forward_ref
from .ternary import (
    OffsetPacked,
    PackedTernary,
    as_offset,
    float_ternary_matmul,
    float_ternary_matmul_ref,
    offset_matmul,
    pack_offset,
    pack_ternary,
    ternary_matmul,
    ternary_matmul_ref,
    unpack_offset,
    unpack_ternary,
)

__all__ = [
    "OffsetPacked",
    "pack_offset",
    "unpack_offset",
    "offset_matmul",
    "as_offset",
    "PackedTernary",
    "pack_ternary",
    "unpack_ternary",
    "ternary_matmul_ref",
    "ternary_matmul",
    "float_ternary_matmul_ref",
    "float_ternary_matmul",
    "scan_forward_ref",
    "scan_forward",
    "scan_backward_ref",
    "scan_backward",
]
