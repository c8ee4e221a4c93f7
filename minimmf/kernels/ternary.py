"""Ternary products with additions and subtractions only, on weights packed 4 per byte.

A BitLinear layer multiplies int8 activation codes ``q_x`` by ternary weight codes ``q_w`` in {-1, 0, +1}
(SPEC §1): every product ``q_x[n, i] * q_w[o, i]`` is ``+q_x``, ``0`` or ``-q_x``, so

    y_int[n, o] = sum_i q_x[n, i] * q_w[o, i]        (an exact int32 sum of signed int8 codes)
    y = y_int / (s_x[n] * s_w)                       (the "MatMul-free" identity)

needs no multiplier at all. This module holds, for each product, a plain-NumPy reference (the specification)
and a Numba kernel proven equal to it by ``tests/test_kernels_ternary.py``:

    ternary_matmul_ref / ternary_matmul              q_x (N, I) int8, q_w (O, I) ternary -> (N, O) int32 (add/sub)
    ternary_matmul_ref / offset_matmul               the same product on codes w + 1 by u8 x i8 multiply-adds
    float_ternary_matmul_ref / float_ternary_matmul  dy (N, O) float, q_w (O, I) ternary -> (N, I) float

Weights are packed 2 bits each, 4 per byte, 16x fewer bytes than float32, in one interleaved layout
(bitnet.cpp "I2_S"-style, so that every byte lane uses the same shifts):

    the input axis is cut into blocks of 128 (the last block padded with the code of 0);
    in block b, byte j (0 <= j < 32) holds the codes of inputs 128 b + j + 32 k for k = 0, 1, 2, 3,
    the code of input 128 b + j + 32 k in bits 2k and 2k+1 (k = 0 in the two lowest bits).

Two 2-bit codes fill that layout:

    OffsetPacked (pack_offset): c = w + 1 (``OFFSET_CODE``; see "offset codes" below). What a packed model stores
        (``bitlinear.pack_bitlinear``) and what ``offset_matmul`` (the fast kernel; its row functions
        ``offset_rows_int`` / ``offset_rows_scaled`` are called from the fused decode kernels) and
        ``float_ternary_matmul`` read.
    PackedTernary (pack_ternary): 00 -> 0, 01 -> +1 (bit 0 = "add"), 10 -> -1 (bit 1 = "subtract"); 11 is never
        produced (decoders read it as +1 - 1 = 0); the ONLY place it is defined is ``CODE_ZERO``, ``CODE_PLUS``,
        ``CODE_MINUS``. What the add/sub kernel ``ternary_matmul`` reads (the first kernel chapter 6 teaches), and
        what packed models held before offset codes: ``as_offset`` / ``offset_from_packed`` convert it.

Taught in chapter 6 (``chapters/06-ternary-kernel.md``).
"""

import platform
import time
from typing import NamedTuple

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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


# ================================================================ offset codes: w + 1 in 2 bits, u8 x i8 multiply-add
#
# The add/sub kernel above spends ~8 vector instructions per code byte turning bits into masks. Storing each
# weight as the unsigned number c = w + 1 in {0, 1, 2} instead turns the product into an ordinary multiply-add,
#
#     sum_i w_i x_i  =  sum_i c_i x_i  -  sum_i x_i                 (the offset: one number per token, not per row)
#
# and x86 has an instruction for exactly "unsigned byte times signed byte, adjacent pairs added into int16":
# ``vpmaddubsw`` (AVX2, 32 bytes at a time). Per 128 weights of one row the kernel does one 32-byte load of codes,
# one 16-bit shift (by 4) and 4 ANDs to pick the four 2-bit fields, 4 ``vpmaddubsw`` against the int8 activations
# and 4 int16 adds; every 8 blocks ``vpmaddwd`` by 1s widens the int16 lanes into int32 ones: ~0.1 instructions per
# weight against ~0.29 above. Fields 1 and 3 are not shifted down: masked with 12 they read 4 c, so their products
# go to a second int16 sum (4 times theirs), divided by 4 once per row at the end. Nothing saturates or
# overflows: a pair is at most 2 * 2 * 128 = 512 in magnitude (2048 for the fields read as 4 c), so a block adds at
# most 1024 to a lane of the first sum and 4096 to one of the second, and 8 blocks at most 8192 and 32768 (the
# second: -32768 at the very worst, all activations -128; 8 * 4064 = 32512 the other way: int16 holds both).
# Four rows are done per pass so that the activations are loaded once for four rows. The layout is the interleaved
# one above with only the code values changed (``OFFSET_CODE = {-1: 0b00, 0: 0b01, +1: 0b10}``), so
# ``offset_from_packed`` converts a ``PackedTernary`` by looking each byte up in a 256-entry table.
#
# LLVM does not find ``vpmaddubsw`` in a plain loop (it proves that the products fit in int16, widens both
# operands and multiplies with ``vpmullw``), so the AVX2 kernel calls the two x86 instructions through
# ``numba.extending.intrinsic``. On every other CPU, and with NUMBA_DISABLE_JIT=1, the same arithmetic runs as a
# plain loop (``_offset_rows_portable``); both are proven equal to ``ternary_matmul_ref`` by the tests.

OFFSET_CODE = {-1: 0b00, 0: 0b01, 1: 0b10}  # 2-bit code = w + 1; 0b11 is never produced
OFFSET_ROWS = 4  # rows per pass of the AVX2 kernel (the activations are loaded once per 4 rows)
OFFSET_TILE = 16  # rows per parallel work item
OFFSET_GROUP = 8  # blocks summed in int16 lanes before widening (the bound: the comment above)


class OffsetPacked(NamedTuple):
    """Ternary weights q_w (O, I) stored as w + 1, 4 per byte. Shapes: codes (O, 32 * ceil(I / 128)) uint8."""

    codes: np.ndarray
    out_features: int
    in_features: int


def pack_offset(q_w) -> OffsetPacked:
    """Pack codes w + 1 four per byte, in the interleaved 128-input layout of ``pack_ternary``.

    Padding inputs get the code of 0 (0b01). Shapes: q_w (O, I) int8 in {-1, 0, 1} -> OffsetPacked (O, I)
    """
    q_w = _check_ternary(q_w)
    O, I = q_w.shape
    nb = _n_blocks(I)
    code = np.full((O, nb * BLOCK), OFFSET_CODE[0], np.uint8)  # (O, 128 nb)
    code[:, :I] = (q_w + 1).astype(np.uint8)
    c = code.reshape(O, nb, 4, BLOCK_BYTES)  # [o, b, k, j] = code of input 128 b + 32 k + j
    packed = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)  # (O, nb, 32)
    return OffsetPacked(np.ascontiguousarray(packed.reshape(O, nb * BLOCK_BYTES)), O, I)


def _check_offset(packed) -> None:
    if not isinstance(packed, OffsetPacked):
        raise ValueError(f"packed must be an OffsetPacked (from pack_offset or offset_from_packed), "
                         f"got {type(packed).__name__}")
    O, I = packed.out_features, packed.in_features
    expected = (O, BLOCK_BYTES * _n_blocks(I))
    c = packed.codes
    if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != expected or not c.flags.c_contiguous:
        raise ValueError(f"packed.codes must be C-contiguous uint8 of shape {expected}, got "
                         f"{getattr(c, 'dtype', type(c))} {getattr(c, 'shape', '')}")


def unpack_offset(packed: OffsetPacked) -> np.ndarray:
    """Exact inverse of pack_offset. Shapes: OffsetPacked (O, I) -> q_w (O, I) int8."""
    _check_offset(packed)
    O, I = packed.out_features, packed.in_features
    nb = _n_blocks(I)
    c = packed.codes.reshape(O, nb, 1, BLOCK_BYTES) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    q = (c & 0b11).astype(np.int8) - np.int8(1)  # (O, nb, 4, 32)
    if np.any(q > 1):
        raise ValueError("packed.codes holds the unused code 0b11")
    return q.reshape(O, nb * BLOCK)[:, :I].copy()


def _byte_table() -> np.ndarray:
    """(256,) uint8: the offset-coded byte holding the same four weights as each PackedTernary byte."""
    old = np.arange(256, dtype=np.uint16)
    new = np.zeros(256, np.uint16)
    for k in range(4):
        field = (old >> (2 * k)) & 0b11  # 00 -> 0, 01 -> +1, 10 -> -1, 11 -> 0 (see CODE_*)
        w = (field & CODE_PLUS).astype(np.int16) - ((field & CODE_MINUS) >> 1).astype(np.int16)
        new |= (w + 1).astype(np.uint16) << (2 * k)
    return new.astype(np.uint8)


OLD_TO_OFFSET_BYTE = _byte_table()


def offset_from_packed(packed: PackedTernary) -> OffsetPacked:
    """Convert weights packed by ``pack_ternary`` (the layout models are built with) to offset codes.

    Same interleaving, so each byte maps to one byte: codes = table[old codes]; padding 00 becomes 01 (w = 0).
    Shapes: PackedTernary (O, I) -> OffsetPacked (O, I)
    """
    _check_packed(packed)
    return OffsetPacked(np.ascontiguousarray(OLD_TO_OFFSET_BYTE[packed.codes]), packed.out_features,
                        packed.in_features)


def as_offset(packed) -> OffsetPacked:
    """The offset codes of packed weights in either layout: an OffsetPacked as it is (checked), a PackedTernary
    (the older layout, e.g. an object packed before offset codes) converted by ``offset_from_packed``."""
    if isinstance(packed, PackedTernary):
        return offset_from_packed(packed)
    _check_offset(packed)
    return packed


# ---------------------------------------------------------------- the row kernels (raw sums sum_i c_i x_i)

@njit(inline="always")
def _offset_rows_portable(codes, r0, r1, xp, nblocks, raw):
    """raw[o] = sum_i c[o, i] xp[i] (codes c = w + 1) for rows r0 <= o < r1; xp padded to 128 nblocks."""
    for o in range(r0, r1):
        w = codes[o]
        total = np.int32(0)
        for b in range(nblocks):
            xb = xp[b * 128:(b + 1) * 128]  # 1-D views: the j loop vectorises
            wb = w[b * 32:(b + 1) * 32]
            s = np.int32(0)
            for j in range(32):
                c = wb[j]
                s += (np.int32(c & 3) * np.int32(xb[j]) + np.int32((c >> 2) & 3) * np.int32(xb[j + 32])
                      + np.int32((c >> 4) & 3) * np.int32(xb[j + 64]) + np.int32(c >> 6) * np.int32(xb[j + 96]))
            total += s
        raw[o] = total


def _host_has_avx2() -> bool:
    """True when the JIT is on and LLVM reports AVX2 for this x86-64 host (then the intrinsic kernel is used)."""
    if numba.config.DISABLE_JIT or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        import llvmlite.binding as ll

        return "+avx2" in ll.get_host_cpu_features().flatten().split(",")
    except Exception:  # pragma: no cover - exotic llvmlite builds
        return False


HAVE_AVX2 = _host_has_avx2()
PREFETCH_PASSES = 2  # the row kernels ask for the code bytes of the rows they will read this many passes later
PREFETCH_LOCALITY = 3  # llvm.prefetch locality 3 = prefetcht0, into L1. Measured on an AVX-512 VNNI Xeon, 370M decode,
# 1 thread, % of the bandwidth bound: 2 passes into L1 42-59 % (4 runs), 8 passes with prefetcht2 (locality 1)
# 56 / 61 %, 16 passes non-temporal (locality 0) 20 % (benchmarks/README.md): the spread between repeats is as
# large as the difference, so L1 it stays.


class _RowsCode:
    """What the row kernels' code generators share, for R rows from r0: the arrays' data pointers, the R row
    pointers, R accumulators of type ``acc_type``, unaligned vector loads, the prefetch of the code bytes of
    PREFETCH_PASSES passes ahead, and at the end each accumulator's lanes added and stored in raw[r0 + r]."""

    def __init__(self, context, builder, sig, args, R: int, acc_type):
        self.b, self.R = builder, R
        ca = context.make_array(sig.args[0])(context, builder, args[0])
        self.x = context.make_array(sig.args[2])(context, builder, args[2]).data
        self.out = context.make_array(sig.args[4])(context, builder, args[4]).data
        self.r0, self.nb = args[1], args[3]
        self.idx = self.r0.type
        row_stride = cgutils.unpack_tuple(builder, ca.strides, 2)[0]
        self.rows = [builder.gep(ca.data, [builder.mul(builder.add(self.r0, self.const(r)), row_stride)])
                     for r in range(R)]
        self.accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_type, None)) for _ in range(R)]
        self.ahead = builder.mul(row_stride, self.const(PREFETCH_PASSES * R))
        self.prefetch = self.function("llvm.prefetch.p0", ir.VoidType(), [cgutils.voidptr_t] + [ir.IntType(32)] * 3)

    def const(self, v: int):
        return ir.Constant(self.idx, v)

    def function(self, name: str, ret, params):
        return cgutils.get_or_insert_function(self.b.module, ir.FunctionType(ret, params), name)

    def load(self, base, offset, vty):
        return self.b.load(self.b.bitcast(self.b.gep(base, [offset]), vty.as_pointer()), align=1)

    def prefetch_ahead(self, b, nbytes: int) -> None:
        """Ask for the code bytes PREFETCH_PASSES passes ahead of block b at the rate a pass consumes its own (the
        R rows are contiguous: R * 32 bytes per block), nbytes of them, one request per 64-byte line."""
        i32 = ir.IntType(32)
        ahead0 = self.b.add(self.ahead, self.b.mul(b, self.const(self.R * 32)))
        for line in range(0, nbytes, 64):
            at = self.b.gep(self.rows[0], [self.b.add(ahead0, self.const(line))])
            self.b.call(self.prefetch, [self.b.bitcast(at, cgutils.voidptr_t), ir.Constant(i32, 0),
                                        ir.Constant(i32, PREFETCH_LOCALITY), ir.Constant(i32, 1)])

    def store_sums(self) -> None:
        i32 = ir.IntType(32)
        for r in range(self.R):
            acc = self.b.load(self.accs[r])
            total = self.b.extract_element(acc, ir.Constant(i32, 0))
            for lane in range(1, acc.type.count):
                total = self.b.add(total, self.b.extract_element(acc, ir.Constant(i32, lane)))
            self.b.store(total, self.b.gep(self.out, [self.b.add(self.r0, self.const(r))]))


def _rows_intrinsic(R: int, acc_type, emit_loops):
    """An intrinsic (codes, r0, xp, nblocks, raw) -> None doing raw[r0 + r] = sum_i c[r0 + r, i] xp[i], r < R,
    whose loops over the blocks ``emit_loops(code: _RowsCode)`` writes (adding into code.accs)."""
    @intrinsic
    def rows(typingctx, codes, r0, xp, nblocks, raw):
        sig = types.void(codes, r0, xp, nblocks, raw)

        def codegen(context, builder, sig, args):
            code = _RowsCode(context, builder, sig, args, R, acc_type)
            emit_loops(code)
            code.store_sums()
            return context.get_dummy_value()

        return sig, codegen

    return rows


def _avx2_rows_intrinsic(R: int):
    """The AVX2 row kernel for R rows: per block b and row r, with h = codes >> 4 (one 16-bit shift),
    the fields e_0 = c & 3, e_1 = c & 12 (= 4 c_1), e_2 = h & 3, e_3 = h & 12 (= 4 c_3);
    t_r += vpmaddubsw(e_0, x_0) + vpmaddubsw(e_2, x_2) and u_r += vpmaddubsw(e_1, x_1) + vpmaddubsw(e_3, x_3)
    (16 int16 lanes each, x_k = xp[128b+32k:][:32]); every OFFSET_GROUP blocks acc_r += vpmaddwd(t_r, 1) and
    odd_r += vpmaddwd(u_r, 1) (int32 lanes); at the end acc_r += odd_r >> 2 (exact: u_r is a sum of multiples of 4).
    """
    i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
    v32i8, v16i16, v8i32 = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
    mask3, mask12 = ir.Constant(v32i8, [3] * 32), ir.Constant(v32i8, [12] * 32)
    ones = ir.Constant(v16i16, [1] * 16)

    def emit_loops(code: _RowsCode) -> None:
        builder, const = code.b, code.const
        maddubs = code.function("llvm.x86.avx2.pmadd.ub.sw", v16i16, [v32i8, v32i8])
        maddwd = code.function("llvm.x86.avx2.pmadd.wd", v8i32, [v16i16, v16i16])
        group = const(OFFSET_GROUP)
        ngroups = builder.sdiv(builder.add(code.nb, const(OFFSET_GROUP - 1)), group)
        sums = [[cgutils.alloca_once(builder, v16i16) for _ in range(2)] for _ in range(R)]   # t_r, u_r
        odds = [cgutils.alloca_once_value(builder, ir.Constant(v8i32, None)) for _ in range(R)]
        with cgutils.for_range(builder, ngroups) as gloop:
            b0 = builder.mul(gloop.index, group)
            b1 = builder.add(b0, group)
            b1 = builder.select(builder.icmp_signed("<", b1, code.nb), b1, code.nb)
            for r in range(R):
                for t in sums[r]:
                    builder.store(ir.Constant(v16i16, None), t)
            with cgutils.for_range_slice(builder, b0, b1, const(1)) as (b, _):
                x0 = builder.mul(b, const(128))
                xs = [code.load(code.x, builder.add(x0, const(32 * k)), v32i8) for k in range(4)]
                w0 = builder.mul(b, const(32))
                code.prefetch_ahead(b, R * 32)
                for r in range(R):
                    w = code.load(code.rows[r], w0, v32i8)
                    h = builder.bitcast(builder.lshr(builder.bitcast(w, v16i16), ir.Constant(v16i16, [4] * 16)),
                                        v32i8)
                    even = builder.add(builder.call(maddubs, [builder.and_(w, mask3), xs[0]]),
                                       builder.call(maddubs, [builder.and_(h, mask3), xs[2]]))
                    odd = builder.add(builder.call(maddubs, [builder.and_(w, mask12), xs[1]]),
                                      builder.call(maddubs, [builder.and_(h, mask12), xs[3]]))
                    builder.store(builder.add(builder.load(sums[r][0]), even), sums[r][0])
                    builder.store(builder.add(builder.load(sums[r][1]), odd), sums[r][1])
            for r in range(R):  # widen the group's int16 lanes into the int32 accumulators
                builder.store(builder.add(builder.load(code.accs[r]),
                                          builder.call(maddwd, [builder.load(sums[r][0]), ones])), code.accs[r])
                builder.store(builder.add(builder.load(odds[r]),
                                          builder.call(maddwd, [builder.load(sums[r][1]), ones])), odds[r])
        for r in range(R):
            odd = builder.ashr(builder.load(odds[r]), ir.Constant(v8i32, [2] * 8))
            builder.store(builder.add(builder.load(code.accs[r]), odd), code.accs[r])

    return _rows_intrinsic(R, v8i32, emit_loops)


def _host_has_vnni512() -> bool:
    """True when the JIT is on and LLVM reports AVX-512 BW and VNNI for this host (then the VNNI kernel is used)."""
    if not HAVE_AVX2:
        return False
    import llvmlite.binding as ll

    features = ll.get_host_cpu_features().flatten().split(",")
    return "+avx512bw" in features and "+avx512vnni" in features


HAVE_VNNI512 = _host_has_vnni512()


# AVX-512 VNNI has the whole "unsigned byte times signed byte, four adjacent products added" step as ONE
# instruction that also accumulates into int32 lanes: ``vpdpbusd``. With it the kernel needs no int16 sums and no
# widening, and each instruction covers 64 weights instead of 32. Per 256 weights of one row (the two blocks b and
# b + 1, which are 64 consecutive code bytes) it does one 64-byte load, 4 ANDs and 4 ``vpdpbusd``. Field k of those
# 64 bytes holds inputs 128 b + 32 k + j (bytes j < 32) and 128 (b + 1) + 32 k + j (bytes 32 + j), so the
# matching activations are the two 32-byte pieces xp[128 b + 32 k:][:32] and xp[128 (b + 1) + 32 k:][:32] side by
# side: loaded once per pass for all R rows. An odd last block is done with the upper halves zeroed.
#
# The fields are not shifted down: e_k = byte & (3 << 2k) is 4^k c_k, still an unsigned byte (at most 128), so
# ``vpdpbusd`` sums 4^k times the products of field k. Each field has its own accumulator (R x 4 of them), which
# holds a multiple of 4^k in every lane, and at the end acc_0 + (acc_1 >> 2) + (acc_2 >> 4) + (acc_3 >> 6) is the
# exact sum. That saves the 3 shifts, which run on the same port as ``vpdpbusd`` on Intel cores, and gives the
# 4 R multiply-adds of a step 4 R independent chains instead of R chains of 4 (``vpdpbusd`` has a latency of
# several cycles). (A lane of acc_3 changes by at most 4 * 128 * 128 per pair of blocks: int32 holds that for
# in_features up to about 8 million, where the sum itself, up to 2 * 128 * in_features, would overflow anyway.)

def _vnni512_rows_intrinsic(R: int):
    """The AVX-512 VNNI row kernel for R rows: per pair of blocks (b, b + 1), row r and field k = 0..3,
    e_k = codes[r, 32b:32b+64] & (3 << 2k) (= 4^k c_k) and
    acc_rk = vpdpbusd(acc_rk, e_k, [xp[128b+32k:][:32], xp[128(b+1)+32k:][:32]]) (16 int32 lanes);
    at the end acc_r = sum_k acc_rk >> 2k (exact: acc_rk is a multiple of 4^k).
    """
    i8, i32 = ir.IntType(8), ir.IntType(32)
    v32i8, v64i8, v16i32 = ir.VectorType(i8, 32), ir.VectorType(i8, 64), ir.VectorType(i32, 16)
    both_halves = ir.Constant(ir.VectorType(i32, 64), list(range(64)))  # [low 32 bytes, high 32 bytes]
    field_masks = [ir.Constant(v64i8, [3 << (2 * k)] * 64) for k in range(4)]
    zero32 = ir.Constant(v32i8, None)

    def emit_loops(code: _RowsCode) -> None:
        builder, const = code.b, code.const
        # 512-bit vectors are legal in this function even where LLVM is tuned to prefer 256-bit ones (the
        # string attribute clang sets for 512-bit intrinsics; llvmlite's attribute set lists no string ones)
        set.add(builder.function.attributes, '"min-legal-vector-width"="512"')
        dpbusd = code.function("llvm.x86.avx512.vpdpbusd.512", v16i32, [v16i32, v64i8, v64i8])
        fields = [[cgutils.alloca_once_value(builder, ir.Constant(v16i32, None)) for _ in range(4)]
                  for _ in range(R)]

        def side_by_side(lo, hi):
            return builder.shuffle_vector(lo, hi, both_halves)

        def step(b, width):
            """acc_rk += the products of blocks b .. b + width - 1 (width 2, or 1 with zeroed upper halves)."""
            x0 = builder.mul(b, const(128))
            xs = [side_by_side(code.load(code.x, builder.add(x0, const(32 * k)), v32i8),
                               code.load(code.x, builder.add(x0, const(128 + 32 * k)), v32i8) if width == 2
                               else zero32) for k in range(4)]
            w0 = builder.mul(b, const(32))
            code.prefetch_ahead(b, R * 32 * width)
            for r in range(R):
                w = (code.load(code.rows[r], w0, v64i8) if width == 2
                     else side_by_side(code.load(code.rows[r], w0, v32i8), zero32))
                for k in range(4):
                    acc = builder.call(dpbusd, [builder.load(fields[r][k]), builder.and_(w, field_masks[k]), xs[k]])
                    builder.store(acc, fields[r][k])

        two = const(2)
        npairs = builder.sdiv(code.nb, two)
        with cgutils.for_range(builder, npairs) as loop:
            step(builder.mul(loop.index, two), 2)
        with builder.if_then(builder.icmp_signed("<", builder.mul(npairs, two), code.nb)):
            step(builder.mul(npairs, two), 1)                     # the odd last block
        for r in range(R):                                        # acc_r = sum_k acc_rk / 4^k
            acc = builder.load(fields[r][0])
            for k in range(1, 4):
                acc = builder.add(acc, builder.ashr(builder.load(fields[r][k]), ir.Constant(v16i32, [2 * k] * 16)))
            builder.store(acc, code.accs[r])

    return _rows_intrinsic(R, v16i32, emit_loops)


def _rows_driver(rows_r, rows_1):
    """_offset_rows from an R-row and a one-row kernel: OFFSET_ROWS rows per pass, then one at a time."""
    @njit(inline="always")
    def offset_rows(codes, r0, r1, xp, nblocks, raw):
        """raw[o] = sum_i c[o, i] xp[i] for r0 <= o < r1: 4 rows per pass, then one at a time."""
        o = r0
        while o + OFFSET_ROWS <= r1:
            rows_r(codes, o, xp, nblocks, raw)
            o += OFFSET_ROWS
        while o < r1:
            rows_1(codes, o, xp, nblocks, raw)
            o += 1
    return offset_rows


if HAVE_VNNI512:
    _offset_rows = _rows_driver(_vnni512_rows_intrinsic(OFFSET_ROWS), _vnni512_rows_intrinsic(1))
elif HAVE_AVX2:
    _offset_rows = _rows_driver(_avx2_rows_intrinsic(OFFSET_ROWS), _avx2_rows_intrinsic(1))
else:
    _offset_rows = _offset_rows_portable


# ---------------------------------------------------------------- building blocks for fused decode kernels
#
# A decode kernel that has just written a token's int8 codes into a zero-padded row xp (128 nblocks,) calls, for
# any range of output rows (e.g. its share of a prange over several matrices):
#     sum_x = offset_sum(xp)                                         once per input row
#     offset_rows_int(codes, r0, r1, xp, sum_x, nblocks, y_int)      y_int[o] = sum_i w[o, i] x[i]   (int32)
#     offset_rows_scaled(codes, r0, r1, xp, sum_x, nblocks, den, y)  y[o] = float(y_int[o]) / den
# (y_int doubles as scratch in the scaled form, so y may be float32 or float64).

@njit(inline="always")
def offset_sum(xp):
    """sum_i xp[i] in int32: the offset removed from every row's sum_i (w_i + 1) x_i."""
    s = np.int32(0)
    for i in range(xp.shape[0]):
        s += np.int32(xp[i])
    return s


@njit(inline="always")
def offset_rows_int(codes, r0, r1, xp, sum_x, nblocks, y_int):
    """y_int[o] = sum_i w[o, i] xp[i] (exact int32) for r0 <= o < r1."""
    _offset_rows(codes, r0, r1, xp, nblocks, y_int)
    for o in range(r0, r1):
        y_int[o] -= sum_x


@njit(inline="always")
def offset_rows_scaled(codes, r0, r1, xp, sum_x, nblocks, den, y_int, y):
    """y[o] = float(sum_i w[o, i] xp[i]) / den for r0 <= o < r1 (the int32 sum, converted, then one division)."""
    offset_rows_int(codes, r0, r1, xp, sum_x, nblocks, y_int)
    for o in range(r0, r1):
        y[o] = y_int[o]
        y[o] = y[o] / den


@njit(parallel=True, cache=True)
def _offset_matmul_parallel(codes, xp, nblocks, y_int):
    """Work items (token n, tile of OFFSET_TILE output rows), split over threads; each token's sum_x first."""
    O = codes.shape[0]
    sums = np.empty(xp.shape[0], np.int32)
    for n in range(xp.shape[0]):
        sums[n] = offset_sum(xp[n])
    ntiles = (O + OFFSET_TILE - 1) // OFFSET_TILE
    for item in prange(xp.shape[0] * ntiles):
        n, t = item // ntiles, item % ntiles
        offset_rows_int(codes, t * OFFSET_TILE, min(O, (t + 1) * OFFSET_TILE), xp[n], sums[n], nblocks, y_int[n])


@njit(cache=True)
def _offset_matmul_serial(codes, xp, nblocks, y_int):
    """The same on the calling thread (no prange launch): small products, or one thread chosen."""
    for n in range(xp.shape[0]):
        offset_rows_int(codes, 0, codes.shape[0], xp[n], offset_sum(xp[n]), nblocks, y_int[n])


def offset_matmul(q_x, packed: OffsetPacked, parallel: bool | None = None) -> np.ndarray:
    """y_int = q_x @ q_w.T on offset codes by u8 x i8 multiply-adds (equals ternary_matmul_ref exactly).

    ``parallel``: None chooses by size (SERIAL_BELOW), True/False forces the prange or the serial kernel.
    Shapes: q_x (N, I) or (I,) int8, packed (O, I) -> y_int (N, O) or (O,) int32
    """
    _check_offset(packed)
    q_x = np.asarray(q_x)
    vector = q_x.ndim == 1
    q_x = _check_activations(q_x[None] if vector else q_x, packed.in_features)
    N, I = q_x.shape
    nb = packed.codes.shape[1] // BLOCK_BYTES
    if I == nb * BLOCK and q_x.flags.c_contiguous:
        xp = q_x
    else:
        xp = np.zeros((N, nb * BLOCK), np.int8)  # (N, 128 nb): zero padding meets the padding's code 01 (w = 0)
        xp[:, :I] = q_x
    out = np.empty((N, packed.out_features), np.int32)
    if parallel is None:
        parallel = N * packed.out_features * nb >= SERIAL_BELOW
    (_offset_matmul_parallel if parallel else _offset_matmul_serial)(packed.codes, xp, nb, out)
    return out[0] if vector else out


# ---------------------------------------------------------------- float backward: dy @ q_w, on offset codes

def float_ternary_matmul_ref(dy, q_w) -> np.ndarray:
    """Specification: dx = dy @ q_w, the input gradient of a BitLinear (before the 1/s_w rescale).

    Shapes: dy (N, O) float32|float64, q_w (O, I) int8 in {-1, 0, 1} -> dx (N, I), dtype of dy
    """
    dy = np.asarray(dy)
    return dy @ np.asarray(q_w).astype(dy.dtype)


@njit(inline="always")
def _float_block(dy, codes, dx, item, nblocks):
    """dx[n, block b] = sum_o (+dy[n, o] | -dy[n, o] | 0) by the offset codes c = w + 1 of column block b."""
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
            for k in range(4):
                f = (c >> (2 * k)) & 3  # 2: w = +1 (add), 0: w = -1 (subtract), 1: w = 0
                acc[j + 32 * k] += (v if f == 2 else zero) - (v if f == 0 else zero)
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


def float_ternary_matmul(dy, packed) -> np.ndarray:
    """dx = dy @ q_w by adding and subtracting entries of dy (equals float_ternary_matmul_ref up to rounding).

    ``packed``: an OffsetPacked, or a PackedTernary (converted first, ``as_offset``).
    Shapes: dy (N, O) float32|float64, packed (O, I) -> dx (N, I), dtype of dy
    """
    packed = as_offset(packed)
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


# ---------------------------------------------------------------- serial or parallel: decided by measurement

class ParallelGuard:
    """Chooses, call by call, between the parallel and the serial form of a kernel from the times it measures.

    On a quiet 2-core machine two threads are ~2x faster than one; while another process keeps a core busy a
    ``prange`` region waits for its descheduled thread and can take many times longer than one thread alone.
    ``guard.call(fn, *args, key=...)`` runs ``fn(*args, parallel=p)`` and times it with ``clock`` (injectable, so
    that tests can script the times). Per key (e.g. a shape) it keeps the last ``window`` times of each form; the
    median of the serial ones is the one-thread estimate. After both forms have run twice (alternating), it runs
    the parallel form while the latest parallel call took less than that estimate: a parallel call that overran it
    moves the choice to serial at once. Every ``probe`` calls it runs the form not in use once, so that it notices
    when the machine becomes quiet again (a parallel probe under the estimate moves the choice back) and keeps
    the estimate fresh.
    """

    def __init__(self, window: int = 5, probe: int = 16, clock=time.perf_counter):
        self.window, self.probe, self.clock = window, probe, clock
        self._state = {}  # key -> [serial times, parallel times, calls, parallel is faster]
        self.n_parallel = self.n_calls = 0

    def choose(self, key) -> bool:
        """True to run the parallel form next for this key."""
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = [[], [], 0, True]
        serial, parallel, calls, parallel_faster = st
        if len(serial) < 2 or len(parallel) < 2:  # measure both forms first, alternating
            return len(parallel) <= len(serial)
        return parallel_faster != (calls % self.probe == self.probe - 1)  # now and then, the other form

    def record(self, key, parallel: bool, seconds: float) -> None:
        st = self._state[key]
        times = st[1] if parallel else st[0]
        times.append(seconds)
        if len(times) > self.window:
            del times[0]
        st[2] += 1
        if st[0] and st[1]:  # the latest parallel time against the one-thread estimate
            st[3] = st[1][-1] < sorted(st[0])[len(st[0]) // 2]
        self.n_calls += 1
        self.n_parallel += parallel

    def call(self, fn, *args, key=None):
        """fn(*args, parallel=choice), timed; key defaults to the shapes of the array arguments."""
        if key is None:
            key = tuple(getattr(a, "shape", None) or getattr(getattr(a, "codes", None), "shape", None) for a in args)
        parallel = self.choose(key)
        t0 = self.clock()
        out = fn(*args, parallel=parallel)
        self.record(key, parallel, self.clock() - t0)
        return out

    def parallel_share(self) -> float:
        """Fraction of the calls so far that ran the parallel form."""
        return self.n_parallel / max(1, self.n_calls)
