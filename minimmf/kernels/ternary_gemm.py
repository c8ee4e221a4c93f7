"""The training forward's ternary product, many tokens at once: y = (q_x @ q_w.T) / (s_x s_w), exactly.

In training, a BitLinear multiplies N = B T activation codes (thousands of tokens) by a weight matrix whose
ternary codes change every step. The readable layer (``bitlinear.bitlinear_forward``) computes the product in
float32 with BLAS; its every term is an integer (codes in [-128, 127] times codes in {-1, 0, 1}) and every partial
sum too (|sum| <= 128 I < 2^24 for I below 131,072), so float32 holds each one exactly and the summation order
does not matter: ANY exact integer product gives the same bits. This kernel computes it with byte multiply-adds,
four times as many products per instruction as float32 FMA:

    reference (the specification)   ternary_matmul_ref(q_x, q_w)          (kernels/ternary.py)
    this kernel                     ternary_gemm(q_x, q_w, den) = float(q_x @ q_w.T) / den   (rows n: / den[n])

How (AVX2 ``vpmaddubsw``: 32 unsigned bytes times 32 signed bytes, adjacent pairs added into 16 int16 lanes):

    weights, every step: offset codes c = w + 1 in {0, 1, 2}, one per byte, laid out in tiles of TILE_ROWS
        output rows; in tile t, pair p (inputs 2p, 2p + 1) is 64 bytes: for each row r of the tile, c[r, 2p] and
        c[r, 2p + 1] side by side. So one 32-byte load holds 16 rows' codes for one pair of inputs;
    activations: int8, the pair (x[n, 2p], x[n, 2p + 1]) broadcast to all 16 lanes (one ``vpbroadcastw``);
    vpmaddubsw(codes, pair) = c[r, 2p] x[n, 2p] + c[r, 2p + 1] x[n, 2p + 1] for 16 rows r at once: the lanes are
        output rows, so nothing is ever added across lanes. A tile is TILE_ROWS rows x TILE_TOKENS tokens:
        TILE_TOKENS x TILE_ROWS / 16 = 12 int16 accumulators in registers, each code load used for 6 tokens;
    int16 bound: a pair adds at most 2 * 2 * 128 = 512 in magnitude, so SEGMENT = 64 pairs stay within
        [-32768, 32512]; then each accumulator is widened (sign-extended) into int32 sums;
    offset: sum_i c x = sum_i w x + sum_i x, so y_int[n, o] = acc[n, o] - sum_i x[n, i] (exact int32);
    y[n, o] = float(y_int[n, o]) / den[n]: ``fused.divide_rows``'s correctly rounded division, fused in.

The plain fallback (no AVX2, the JIT off, fewer than MIN_TOKENS tokens, or activation codes wider than int8) is
the layer's own formula: ``(q_x @ q_w.T) / den`` with BLAS.
Proven equal to the reference, extremes included, by ``tests/test_kernels_ternary_gemm.py``; taught in chapter 6
("Many tokens at once"). The training step uses it through ``fast/bitlinear.py``.
"""

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .ternary import HAVE_AVX2

ROW_VECTORS = 2                 # 16-row vectors per tile
TILE_ROWS = 16 * ROW_VECTORS    # output rows per tile
TILE_TOKENS = 6                 # tokens per tile: 6 x 2 int16 accumulators + 2 code vectors + 1 broadcast <= 16 ymm
SEGMENT = 64                    # input pairs summed in int16 lanes before widening (the bound above)
MAX_INPUTS = 131_072            # 128 * MAX_INPUTS = 2^24: the float32 reference is exact below this
MIN_TOKENS = 512                # fewer tokens: BLAS. Re-laying the codes costs ~1-1.6 ns per weight, which the faster
                                # product repays only over many tokens (measured on znver3, one thread: 2816 x 1024
                                # codes at 128 / 256 / 512 tokens took 1.60 / 1.21 / 0.86 of BLAS's time; a one-token
                                # step 20x)


def pack_tiles_ref(q_w) -> np.ndarray:
    """Specification of the weight layout: (O, I) ternary codes -> (ceil(O / TILE_ROWS), ceil(I / 2), TILE_ROWS, 2)
    uint8 offset codes w + 1, rows and inputs past the matrix padded with code 0 (they multiply nothing: padded
    inputs meet zero activations, padded rows are never stored)."""
    q_w = np.asarray(q_w)
    O, I = q_w.shape
    c = np.zeros((-(-O // TILE_ROWS) * TILE_ROWS, -(-I // 2) * 2), np.uint8)
    c[:O, :I] = q_w.astype(np.int8) + 1
    return np.ascontiguousarray(c.reshape(-1, TILE_ROWS, c.shape[1] // 2, 2).transpose(0, 2, 1, 3))


@njit(parallel=True, cache=True)
def pack_tiles(q_w):
    """pack_tiles_ref, on every thread (the codes change every step, so this runs once per forward), written
    in the order of its output bytes; q_w C-contiguous."""
    O, I = q_w.shape
    nt, npairs = (O + TILE_ROWS - 1) // TILE_ROWS, (I + 1) // 2
    tiles = np.empty((nt, npairs, TILE_ROWS, 2), np.uint8)
    flat, w = tiles.reshape(-1), q_w.reshape(-1)
    for t in prange(nt):
        for p in range(npairs):
            at = (t * npairs + p) * 2 * TILE_ROWS
            for r in range(TILE_ROWS):
                o = t * TILE_ROWS + r
                for j in range(2):
                    i = 2 * p + j
                    flat[at + 2 * r + j] = np.uint8(np.int8(w[o * I + i]) + 1) if o < O and i < I else 0
    return tiles


@njit(parallel=True, cache=True)
def pack_activations(q_x):
    """q_x (N, I) integer-valued codes -> (int8 (N rounded up to TILE_TOKENS, I rounded up to even), zero padded;
    the row sums sum_i q_x[n, i] as int32 (N,))."""
    N, I = q_x.shape
    x = np.zeros(((N + TILE_TOKENS - 1) // TILE_TOKENS * TILE_TOKENS, I + (I & 1)), np.int8)
    sums = np.empty(N, np.int32)
    for n in prange(N):
        s = np.int32(0)
        for i in range(I):
            v = np.int8(q_x[n, i])
            x[n, i] = v
            s += np.int32(v)
        sums[n] = s
    return x, sums


@intrinsic
def _tile_sums(typingctx, tiles, t, x, n0, acc):
    """acc[k, r] = sum_i c[t TILE_ROWS + r, i] x[n0 + k, i] (int32) for the TILE_TOKENS tokens from n0 and the
    TILE_ROWS rows of tile t: per input pair, 2 code loads, 6 broadcasts, 12 ``vpmaddubsw`` into int16 lanes,
    widened into acc every SEGMENT pairs."""
    sig = types.void(tiles, t, x, n0, acc)

    def codegen(context, builder, sig, args):
        i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
        v32i8, v16i16, v8i32 = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
        tiles_a = context.make_array(sig.args[0])(context, builder, args[0])
        x_a = context.make_array(sig.args[2])(context, builder, args[2])
        acc_a = context.make_array(sig.args[4])(context, builder, args[4])
        t, n0 = args[1], args[3]

        def const(v):
            return ir.Constant(t.type, v)

        def load(ptr, offset, ty):
            return builder.load(builder.bitcast(builder.gep(ptr, [offset]), ty.as_pointer()), align=1)

        maddubs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16i16, [v32i8, v32i8]),
                                                 "llvm.x86.avx2.pmadd.ub.sw")
        npairs = cgutils.unpack_tuple(builder, tiles_a.shape, 4)[1]
        tile = builder.gep(tiles_a.data, [builder.mul(t, builder.mul(npairs, const(2 * TILE_ROWS)))])
        x_stride = cgutils.unpack_tuple(builder, x_a.strides, 2)[0]
        x_rows = [builder.gep(x_a.data, [builder.mul(builder.add(n0, const(k)), x_stride)])
                  for k in range(TILE_TOKENS)]
        acc_bytes = builder.bitcast(acc_a.data, i8.as_pointer())
        acc_stride = cgutils.unpack_tuple(builder, acc_a.strides, 2)[0]
        acc_rows = [builder.gep(acc_bytes, [builder.mul(const(k), acc_stride)]) for k in range(TILE_TOKENS)]
        for row in acc_rows:                                           # acc = 0
            for q in range(TILE_ROWS // 8):
                builder.store(ir.Constant(v8i32, None),
                              builder.bitcast(builder.gep(row, [const(32 * q)]), v8i32.as_pointer()), align=1)
        sums = [[cgutils.alloca_once(builder, v16i16) for _ in range(ROW_VECTORS)] for _ in range(TILE_TOKENS)]
        splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
        halves = [ir.Constant(ir.VectorType(i32, 8), list(range(8 * h, 8 * h + 8))) for h in range(2)]
        nseg = builder.sdiv(builder.add(npairs, const(SEGMENT - 1)), const(SEGMENT))
        with cgutils.for_range(builder, nseg) as seg:
            p0 = builder.mul(seg.index, const(SEGMENT))
            p1 = builder.add(p0, const(SEGMENT))
            p1 = builder.select(builder.icmp_signed("<", p1, npairs), p1, npairs)
            for row_sums in sums:
                for s in row_sums:
                    builder.store(ir.Constant(v16i16, None), s)
            with cgutils.for_range_slice(builder, p0, p1, const(1)) as (p, _):
                at = builder.mul(p, const(2 * TILE_ROWS))
                codes = [load(tile, builder.add(at, const(32 * v)), v32i8) for v in range(ROW_VECTORS)]
                for k in range(TILE_TOKENS):
                    pair = load(x_rows[k], builder.mul(p, const(2)), i16)     # (x[2p], x[2p + 1]) ...
                    pair = builder.insert_element(ir.Constant(v16i16, None), pair, ir.Constant(i32, 0))
                    pair = builder.bitcast(builder.shuffle_vector(pair, pair, splat), v32i8)   # ... in every lane
                    for v in range(ROW_VECTORS):
                        s = sums[k][v]
                        builder.store(builder.add(builder.load(s), builder.call(maddubs, [codes[v], pair])), s)
            for k in range(TILE_TOKENS):                               # widen the segment into acc
                for v in range(ROW_VECTORS):
                    s = builder.load(sums[k][v])
                    for h in range(2):
                        ptr = builder.bitcast(builder.gep(acc_rows[k], [const(64 * v + 32 * h)]), v8i32.as_pointer())
                        part = builder.sext(builder.shuffle_vector(s, s, halves[h]), v8i32)
                        builder.store(builder.add(builder.load(ptr, align=1), part), ptr, align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_tile(typingctx, acc, sums, den, y, n0, o0, tokens):
    """y[n0 + k, o0 + r] = float(acc[k, r] - sums[n0 + k]) / den[n0 + k] for k < tokens and all TILE_ROWS rows r,
    eight rows per vector: the conversion and the correctly rounded division as NumPy does them, lane by lane."""
    sig = types.void(acc, sums, den, y, n0, o0, tokens)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        v8i32 = ir.VectorType(i32, 8)
        fty = context.get_data_type(sig.args[3].dtype)
        v8f = ir.VectorType(fty, 8)
        acc_a, sums_a, den_a, y_a = (context.make_array(sig.args[j])(context, builder, args[j]) for j in range(4))
        n0, o0, tokens = args[4], args[5], args[6]

        def const(v):
            return ir.Constant(n0.type, v)

        def splat(value, vty):
            v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, 8), [0] * 8))

        y_stride = cgutils.unpack_tuple(builder, y_a.strides, 2)[0]
        acc_stride = cgutils.unpack_tuple(builder, acc_a.strides, 2)[0]
        y_bytes = builder.bitcast(y_a.data, ir.IntType(8).as_pointer())
        acc_bytes = builder.bitcast(acc_a.data, ir.IntType(8).as_pointer())
        with cgutils.for_range(builder, tokens) as loop:
            k = loop.index
            n = builder.add(n0, k)
            d = splat(builder.load(builder.gep(den_a.data, [n])), v8f)
            s = splat(builder.load(builder.gep(sums_a.data, [n])), v8i32)
            y_row = builder.gep(y_bytes, [builder.mul(n, y_stride)])
            acc_row = builder.gep(acc_bytes, [builder.mul(k, acc_stride)])
            for q in range(TILE_ROWS // 8):
                a = builder.load(builder.bitcast(builder.gep(acc_row, [const(32 * q)]), v8i32.as_pointer()), align=1)
                v = builder.fdiv(builder.sitofp(builder.sub(a, s), v8f), d)
                at = builder.gep(builder.bitcast(y_row, fty.as_pointer()), [builder.add(o0, const(8 * q))])
                builder.store(v, builder.bitcast(at, v8f.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(parallel=True, cache=True)
def _ternary_gemm(x, sums, tiles, den, y):
    """y[n, o] = float(acc[n, o] - sums[n]) / den[n]: work items (token tile, row tile), split over the threads;
    consecutive items share their tokens, so a thread's activations stay in L1 while it walks the row tiles."""
    N, O = y.shape
    nt = tiles.shape[0]
    for item in prange((x.shape[0] // TILE_TOKENS) * nt):
        n0, t = item // nt * TILE_TOKENS, item % nt
        acc = np.empty((TILE_TOKENS, TILE_ROWS), np.int32)
        _tile_sums(tiles, t, x, n0, acc)
        o0 = t * TILE_ROWS
        tokens = min(TILE_TOKENS, N - n0)
        if o0 + TILE_ROWS <= O:
            _store_tile(acc, sums, den, y, n0, o0, tokens)
        else:                                                      # the last, partial row tile
            for k in range(tokens):
                n = n0 + k
                for r in range(O - o0):
                    y[n, o0 + r] = acc[k, r] - sums[n]             # the exact integer, in y's dtype
                    y[n, o0 + r] = y[n, o0 + r] / den[n]


def ternary_gemm(q_x: np.ndarray, q_w: np.ndarray, den: np.ndarray, act_qmax: float = 127) -> np.ndarray:
    """y = (q_x @ q_w.T) / den, row n divided by den[n], computed exactly in integers (the same bits as the float
    product and NumPy's division). q_x (N, I) integer-valued codes in [-act_qmax - 1, act_qmax] (float32/float64),
    q_w (O, I) codes in {-1, 0, 1} of the same dtype, den (N, 1) -> y (N, O) of that dtype. Codes wider than int8
    (act_qmax > 127: a quantizer changed by hand), and products of fewer than MIN_TOKENS tokens, take the float
    product."""
    if not (q_x.ndim == q_w.ndim == den.ndim == 2 and q_w.shape[1] == q_x.shape[1]
            and den.shape == (q_x.shape[0], 1) and q_x.dtype == q_w.dtype == den.dtype):
        raise ValueError(f"ternary_gemm: expected q_x (N, I), q_w (O, I) and den (N, 1) of one dtype, got "
                         f"{q_x.shape} {q_x.dtype}, {q_w.shape} {q_w.dtype}, {den.shape} {den.dtype}")
    (N, I), O = q_x.shape, q_w.shape[0]
    if not HAVE_AVX2 or N < MIN_TOKENS or I > MAX_INPUTS or act_qmax > 127:
        y = q_x @ q_w.T
        y /= den
        return y
    x, sums = pack_activations(q_x)
    y = np.empty((N, O), q_x.dtype)
    _ternary_gemm(x, sums, pack_tiles(np.ascontiguousarray(q_w)), np.ascontiguousarray(den[:, 0]), y)
    return y
