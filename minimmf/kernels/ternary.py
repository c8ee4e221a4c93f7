"""Ternary products with additions and subtractions only, on weights packed 4 per byte.

A BitLinear layer multiplies int8 activation codes ``q_x`` by ternary weight codes ``q_w`` in {-1, 0, +1}
(SPEC §1): every product ``q_x[n, i] * q_w[o, i]`` is ``+q_x``, ``0`` or ``-q_x``, so

    y_int[n, o] = sum_i q_x[n, i] * q_w[o, i]        (an exact int32 sum of signed int8 codes)
    y = y_int / (s_x[n] * s_w)                       (the "MatMul-free" identity)

needs no multiplier at all. This module holds, for each product, a plain-NumPy reference (the specification)
and a Numba kernel proven equal to it by ``tests/test_kernels_ternary.py``:

    ternary_matmul_ref / ternary_matmul              q_x (N, I) int8, q_w (O, I) ternary -> (N, O) int32
    float_ternary_matmul_ref / float_ternary_matmul  dy (N, O) float, q_w (O, I) ternary -> (N, I) float

The kernels read the weights from a ``PackedTernary``: 2 bits per weight, 4 weights per byte, 16x fewer bytes
than float32. Layout (bitnet.cpp "I2_S"-style, interleaved so that every byte lane uses the same shifts):

    the input axis is cut into blocks of 128 (the last block padded with zero codes);
    in block b, byte j (0 <= j < 32) holds the codes of inputs 128 b + j + 32 k for k = 0, 1, 2, 3,
    the code of input 128 b + j + 32 k in bits 2k and 2k+1 (k = 0 in the two lowest bits).

The 2-bit code (the ONLY place it is defined; see ``CODE_ZERO``, ``CODE_PLUS``, ``CODE_MINUS``):

    00 -> 0,  01 -> +1 (bit 0 = "add"),  10 -> -1 (bit 1 = "subtract");  11 is never produced
    (decoders read it as +1 - 1 = 0).
"""

from typing import NamedTuple

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

import numpy as np
from numba import njit, prange

CODE_ZERO = 0b00  # weight 0: skip
CODE_PLUS = 0b01  # weight +1: add the activation
CODE_MINUS = 0b10  # weight -1: subtract the activation
BLOCK = 128  # inputs per interleaved block
BLOCK_BYTES = BLOCK // 4  # 32 bytes per block, 4 codes per byte
GROUP = 4  # the decode kernel sums 4 blocks (512 inputs) per step in int16 lanes
FLUSH_GROUPS = 8  # ... and flushes its int16 lanes to int32 every 8 groups (see _dot_packed_row)
SERIAL_BELOW = 4096  # block-rows of work under which a prange launch (~1-2 us) costs more than it saves


class PackedTernary(NamedTuple):
    """Ternary weights q_w (O, I) packed 4 per byte. Shapes: codes (O, 32 * ceil(I / 128)) uint8."""

    codes: np.ndarray
    out_features: int
    in_features: int


def _n_blocks(in_features: int) -> int:
    return -(-in_features // BLOCK)


def _check_ternary(q_w, name: str = "q_w") -> np.ndarray:
    """Validate an int8 (O, I) array of codes in {-1, 0, 1}; return it as a NumPy array."""
    q_w = np.asarray(q_w)
    if q_w.dtype != np.int8:
        raise ValueError(f"{name} must have dtype int8, got {q_w.dtype}")
    if q_w.ndim != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got shape {q_w.shape}")
    if q_w.shape[0] == 0 or q_w.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {q_w.shape}")
    if q_w.size and (q_w.min() < -1 or q_w.max() > 1):
        raise ValueError(f"{name} values must be in {{-1, 0, 1}}, got min {q_w.min()} max {q_w.max()}")
    return q_w


def _check_packed(packed) -> None:
    if not isinstance(packed, PackedTernary):
        raise ValueError(f"packed must be a PackedTernary (from pack_ternary), got {type(packed).__name__}")
    O, I = packed.out_features, packed.in_features
    expected = (O, BLOCK_BYTES * _n_blocks(I))
    c = packed.codes
    if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != expected:
        raise ValueError(f"packed.codes must be uint8 of shape {expected}, got "
                         f"{getattr(c, 'dtype', type(c))} {getattr(c, 'shape', '')}")


def pack_ternary(q_w) -> PackedTernary:
    """Pack ternary codes 4 per byte in the interleaved 128-input block layout (see module docstring).

    Shapes: q_w (O, I) int8 in {-1, 0, 1} -> PackedTernary(codes (O, 32 * ceil(I / 128)) uint8, O, I)
    """
    q_w = _check_ternary(q_w)
    O, I = q_w.shape
    nb = _n_blocks(I)
    code = np.zeros((O, nb * BLOCK), np.uint8)  # (O, 128 nb), zero codes in the padding
    code[:, :I] = np.where(q_w == 1, CODE_PLUS, np.where(q_w == -1, CODE_MINUS, CODE_ZERO))
    c = code.reshape(O, nb, 4, BLOCK_BYTES)  # [o, b, k, j] = code of input 128 b + 32 k + j
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)  # (O, nb, 32)
    return PackedTernary(np.ascontiguousarray(packed.reshape(O, nb * BLOCK_BYTES)), O, I)


def unpack_ternary(packed: PackedTernary) -> np.ndarray:
    """Exact inverse of pack_ternary. Shapes: PackedTernary (O, I) -> q_w (O, I) int8."""
    _check_packed(packed)
    O, I = packed.out_features, packed.in_features
    nb = _n_blocks(I)
    c = packed.codes.reshape(O, nb, 1, BLOCK_BYTES) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    plus = (c & CODE_PLUS).astype(np.int8)  # (O, nb, 4, 32)
    minus = ((c & CODE_MINUS) >> 1).astype(np.int8)
    return (plus - minus).reshape(O, nb * BLOCK)[:, :I].copy()


# ---------------------------------------------------------------- integer forward: q_x @ q_w.T

def ternary_matmul_ref(q_x, q_w) -> np.ndarray:
    """Specification: y_int = q_x @ q_w.T as an exact int32 sum.

    Shapes: q_x (N, I) int8, q_w (O, I) int8 in {-1, 0, 1} -> y_int (N, O) int32
    """
    return np.asarray(q_x).astype(np.int32) @ np.asarray(q_w).astype(np.int32).T


@njit(inline="always")
def _block_sum(c, x0, x1, x2, x3):
    """One code byte: (+/-/0) x0 + (+/-/0) x1 + ... by masks in int8 lanes, summed in int16 (|sum| <= 512)."""
    p0 = np.int8(-np.int8(c & 1))  # all ones if input k=0 is +1, else 0
    m0 = np.int8(-np.int8((c >> 1) & 1))  # all ones if input k=0 is -1, else 0
    p1 = np.int8(-np.int8((c >> 2) & 1))
    m1 = np.int8(-np.int8((c >> 3) & 1))
    p2 = np.int8(-np.int8((c >> 4) & 1))
    m2 = np.int8(-np.int8((c >> 5) & 1))
    p3 = np.int8(-np.int8((c >> 6) & 1))
    m3 = np.int8(-np.int8((c >> 7) & 1))
    return (np.int16(x0 & p0) - np.int16(x0 & m0) + np.int16(x1 & p1) - np.int16(x1 & m1)
            + np.int16(x2 & p2) - np.int16(x2 & m2) + np.int16(x3 & p3) - np.int16(x3 & m3))


@njit(inline="always")
def _dot_packed_row(x, w, nblocks, acc):
    """sum_i x[i] * q_w[i] for one packed weight row w (32 nblocks,) and padded activations x (128 nblocks,).

    acc is a zeroed int16 scratch of 32 lanes (returned zeroed). Each lane j gains at most 4 * 128 = 512 in
    magnitude per block, 2048 per group of 4 blocks; flushing to int32 every FLUSH_GROUPS = 8 groups bounds a
    lane by 8 * 2048 = 16384 < 32767, so the int16 lanes never overflow, whatever I is.
    """
    total = np.int32(0)
    ngroups = nblocks // GROUP
    for g0 in range(0, ngroups, FLUSH_GROUPS):
        for g in range(g0, min(ngroups, g0 + FLUSH_GROUPS)):
            xb = x[g * 512:(g + 1) * 512]  # 1-D views: the j loop below vectorises 32 lanes wide
            wb = w[g * 128:(g + 1) * 128]
            for j in range(32):
                acc[j] += (_block_sum(wb[j], xb[j], xb[j + 32], xb[j + 64], xb[j + 96])
                           + _block_sum(wb[j + 32], xb[j + 128], xb[j + 160], xb[j + 192], xb[j + 224])
                           + _block_sum(wb[j + 64], xb[j + 256], xb[j + 288], xb[j + 320], xb[j + 352])
                           + _block_sum(wb[j + 96], xb[j + 384], xb[j + 416], xb[j + 448], xb[j + 480]))
        for j in range(32):
            total += np.int32(acc[j])
            acc[j] = np.int16(0)
    for b in range(ngroups * GROUP, nblocks):  # the last 0-3 blocks, straight into int32
        xb = x[b * 128:(b + 1) * 128]
        wb = w[b * 32:(b + 1) * 32]
        for j in range(32):
            total += np.int32(_block_sum(wb[j], xb[j], xb[j + 32], xb[j + 64], xb[j + 96]))
    return total


ROWS_PER_TILE = 16  # a work item is (one token, 16 output rows): one int16 scratch allocation per 16 dots


@njit(inline="always")
def _ternary_tile(xp, codes, out, item, ntiles, nblocks):
    # (A second loop over several tokens per item was measured 1.5-2.8x slower: LLVM vectorised it worse.)
    n = item // ntiles
    o0 = (item % ntiles) * ROWS_PER_TILE
    acc = np.zeros(32, np.int16)
    x = xp[n]
    for o in range(o0, min(o0 + ROWS_PER_TILE, codes.shape[0])):
        out[n, o] = _dot_packed_row(x, codes[o], nblocks, acc)


@njit(parallel=True, cache=True)
def _ternary_matmul_parallel(xp, codes, out, nblocks):
    """Work items (token n, tile of 16 output rows), split over threads."""
    ntiles = (codes.shape[0] + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    for item in prange(xp.shape[0] * ntiles):
        _ternary_tile(xp, codes, out, item, ntiles, nblocks)


@njit(cache=True)
def _ternary_matmul_serial(xp, codes, out, nblocks):
    """Same work on one thread: for tiny products a prange launch costs more than the work."""
    ntiles = (codes.shape[0] + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    for item in range(xp.shape[0] * ntiles):
        _ternary_tile(xp, codes, out, item, ntiles, nblocks)


def _check_activations(q_x, in_features: int) -> np.ndarray:
    q_x = np.asarray(q_x)
    if q_x.dtype != np.int8:
        raise ValueError(f"q_x must have dtype int8, got {q_x.dtype}")
    if q_x.ndim != 2 or q_x.shape[1] != in_features:
        raise ValueError(f"q_x must have shape (N, {in_features}), got {q_x.shape}")
    return q_x


def ternary_matmul(q_x, packed: PackedTernary) -> np.ndarray:
    """y_int = q_x @ q_w.T with additions and subtractions only, on packed codes (equals ternary_matmul_ref).

    Shapes: q_x (N, I) int8, packed (O, I) -> y_int (N, O) int32
    """
    _check_packed(packed)
    q_x = _check_activations(q_x, packed.in_features)
    N, I = q_x.shape
    nb = _n_blocks(I)
    if I == nb * BLOCK:
        xp = np.ascontiguousarray(q_x)
    else:
        xp = np.zeros((N, nb * BLOCK), np.int8)  # (N, 128 nb): zero padding meets zero codes
        xp[:, :I] = q_x
    out = np.empty((N, packed.out_features), np.int32)
    if N * packed.out_features * nb < SERIAL_BELOW:
        _ternary_matmul_serial(xp, packed.codes, out, nb)
    else:
        _ternary_matmul_parallel(xp, packed.codes, out, nb)
    return out


# ---------------------------------------------------------------- float backward: dy @ q_w

def float_ternary_matmul_ref(dy, q_w) -> np.ndarray:
    """Specification: dx = dy @ q_w, the input gradient of a BitLinear (before the 1/s_w rescale).

    Shapes: dy (N, O) float32|float64, q_w (O, I) int8 in {-1, 0, 1} -> dx (N, I), dtype of dy
    """
    dy = np.asarray(dy)
    return dy @ np.asarray(q_w).astype(dy.dtype)


@njit(inline="always")
def _float_block(dy, codes, dx, item, nblocks):
    """dx[n, block b] = sum_o (+dy[n, o] | -dy[n, o] | 0) by the codes of column block b."""
    n = item // nblocks
    b = item % nblocks
    acc = np.zeros(BLOCK, dy.dtype)  # (128,) the block's 128 outputs
    zero = acc[0]  # a 0 of dy's dtype
    dyn = dy[n]
    for o in range(codes.shape[0]):
        v = dyn[o]
        wb = codes[o, b * 32:(b + 1) * 32]
        for j in range(32):
            c = wb[j]
            acc[j] += (v if c & 1 else zero) - (v if c & 2 else zero)
            acc[j + 32] += (v if c & 4 else zero) - (v if c & 8 else zero)
            acc[j + 64] += (v if c & 16 else zero) - (v if c & 32 else zero)
            acc[j + 96] += (v if c & 64 else zero) - (v if c & 128 else zero)
    i0 = b * BLOCK
    for k in range(min(BLOCK, dx.shape[1] - i0)):
        dx[n, i0 + k] = acc[k]


@njit(parallel=True, cache=True)
def _float_ternary_parallel(dy, codes, dx, nblocks):
    """Work items (token n, block of 128 inputs), split over threads."""
    for item in prange(dy.shape[0] * nblocks):
        _float_block(dy, codes, dx, item, nblocks)


@njit(cache=True)
def _float_ternary_serial(dy, codes, dx, nblocks):
    for item in range(dy.shape[0] * nblocks):
        _float_block(dy, codes, dx, item, nblocks)


def float_ternary_matmul(dy, packed: PackedTernary) -> np.ndarray:
    """dx = dy @ q_w by adding and subtracting entries of dy (equals float_ternary_matmul_ref up to rounding).

    Shapes: dy (N, O) float32|float64, packed (O, I) -> dx (N, I), dtype of dy
    """
    _check_packed(packed)
    dy = np.asarray(dy)
    if dy.dtype not in (np.float32, np.float64):
        raise ValueError(f"dy must have dtype float32 or float64, got {dy.dtype}")
    if dy.ndim != 2 or dy.shape[1] != packed.out_features:
        raise ValueError(f"dy must have shape (N, {packed.out_features}), got {dy.shape}")
    dy = np.ascontiguousarray(dy)
    N, I = dy.shape[0], packed.in_features
    nb = _n_blocks(I)
    dx = np.empty((N, I), dy.dtype)
    if N * packed.out_features * nb < SERIAL_BELOW:
        _float_ternary_serial(dy, packed.codes, dx, nb)
    else:
        _float_ternary_parallel(dy, packed.codes, dx, nb)
    return dx
