"""Decode kernels: one packed-model step for one token in three Numba calls per layer instead of ~40 NumPy calls.

Why this file exists: at batch 1 the packed step of the 370M model spent about half its time outside the ternary
kernel, in Python/NumPy dispatch on (1, 1, H) arrays (≈ 145 BitLinear calls at the 370M shape and their RMSNorms, gates, scan step
and residuals, a few µs each; ``benchmarks/README.md``). The readable specification is the packed model's plain
step — ``model_forward`` with ``bitlinear_packed_forward`` — and these kernels do the SAME arithmetic in the SAME
order, so they give the same bits (``tests/test_kernels_decode.py``). The step that calls them, with its plan of
the packed weights, is ``minimmf/fast/decode.py``:

    per layer l (x (H,) the residual stream, h0 (H,) the layer's state):
      K1  n1 = RMSNorm(x; attn_norm);  for p in f, i, g: q_p, s_p = quant_act(RMSNorm(n1; g_p))
          z_p = ternary(q_p, W_p) / (s_p s_w,p)       (one prange over the 3H output rows)
          e = -|z_f|, -|z_i|                          -> NumPy: e = exp(e)
      K2  f = σ(z_f) (lower-bounded), i = silu(z_i)(1 - f), h = f h0 + i;  gn = RMSNorm(z_g; g_norm);  e = -|h|
                                                       -> NumPy: e = exp(e)
      K3  o = gn silu(h);  r = x + BitLinear_o(o);  y = BitLinear_gate(RMSNorm(r; mlp_norm));  e = -|y[:I]|
                                                       -> NumPy: e = exp(e)
      K4  x' = r + BitLinear_down(silu(gate) up)       then, in the same call, the next layer's K1 on x'
    head: logits = BitLinear_head(RMSNorm(x; norm))     (in the last layer's K4 call)

e^x is left to NumPy (as in ``fused.py``: LLVM's expf differs from NumPy's SIMD exp in the last bit), so the kernels
stop where an exponential is needed and the caller runs ``np.exp`` in place on one small buffer. Each BitLinear's
input side is ``fused.bitlinear_front_row`` (the same building block the training kernels use); its codes go straight
into the zero-padded int8 row the ternary kernel reads, and the rescale happens as each output row is summed.

The weights are read as offset codes (``OffsetPacked``, codes w + 1; ``kernels/ternary.py``): every output row is
``offset_rows_scaled``'s exact int32 sum sum_i (w_i + 1) x_i - sum_i x_i, converted and divided by s_x s_w, the
plain path's numbers. Each matrix is read once per token in one pass, split over the threads in tiles of OFFSET_TILE
rows (or, with ``parallel`` False, on the calling thread alone, with no parallel region to launch: the caller passes
False when it runs on one thread); the projections that read the same layer input (f, i, g, stored as one (3H, .)
matrix; gate and up, one (2I, .) matrix) are one ``prange`` over their concatenated rows, so a layer is four passes
over its weights, the head a fifth, and nothing else is read twice. Every buffer a kernel writes is allocated once,
by the caller (``fast/decode.py``'s ``DecodePlan``); the packed model itself keeps all its codes in one buffer in
the order a step reads them (``packed.adopt_packed``), so that the kernel's prefetch runs on from one matrix into
the next.
"""

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .fused import _sigmoid_from_e, bitlinear_front_row, rmsnorm_row
from .ternary import BLOCK, OFFSET_TILE, offset_rows_scaled, offset_sum

# rows of a layer's stacked (9, H) float vectors: gains and the lower bound
ATTN_NORM, G_F, G_I, G_G, G_NORM, G_O, MLP_NORM, G_GATE, LB = range(9)
N_VECS = 9


class DecodeScalars(NamedTuple):
    """The scalars every decode kernel needs, each in the model's dtype (a bare Python float would promote).

    The kernels take them as one array ``cs`` (``np.array(scalars, dtype)``: passing an array costs a fraction of
    a microsecond, a tuple of NumPy scalars several) and rebuild the tuple inside (``_scalars``)."""
    norm_eps: np.floating       # the block and final RMSNorms' eps (config.rms_norm_eps)
    bitlinear_eps: np.floating  # BitLinear's own RMSNorm eps (bitlinear.BITLINEAR_EPS)
    nH: np.floating             # H, the width the RMSNorm means divide by
    nI: np.floating             # I, the GLU width (the down projection's input)
    qmax: np.floating           # 127: int8 activation codes
    act_eps: np.floating        # floor on a token's max|x| (quant.ACT_EPS)
    half: np.floating           # 1/2, for rounding half away from zero
    one: np.floating


@njit(inline="always")
def _scalars(cs):
    """DecodeScalars from its array form (cs[k] = the k-th field)."""
    return DecodeScalars(cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6], cs[7])


@njit(cache=True, error_model="numpy")
def _front_row(x, g, nC, c, n, a, a_bits, q):
    """BitLinear's input side on one row (fused.bitlinear_front_row), codes as int8 into q[:C] (q's padding stays
    zero). Returns s_x. Shapes: x, g (C,); n, a (C,) scratch; q (128 nb,) int8."""
    _, s = bitlinear_front_row(x, g, c.bitlinear_eps, nC, c.qmax, c.act_eps, c.half, c.one, n, a, a_bits)
    for j in range(x.shape[0]):
        q[j] = np.int8(n[j])
    return s


@njit(inline="always")
def _tile(xq, sum_x, codes, s_x, s_w, y_int, y, t, nblocks):
    """y[o] = float(ternary(xq, codes[o])) / (s_x s_w) for the OFFSET_TILE rows of tile t (the plain path's int32
    sum, then one rescale). sum_x = offset_sum(xq); y_int (>= O,) int32 scratch."""
    o0 = t * OFFSET_TILE
    offset_rows_scaled(codes, o0, min(o0 + OFFSET_TILE, codes.shape[0]), xq, sum_x, nblocks, s_x * s_w, y_int, y)


@njit(inline="always")
def _ntiles(rows):
    return (rows + OFFSET_TILE - 1) // OFFSET_TILE


# ----------------------------------------------------------------------------- the steps of a layer, as building blocks
#
# Each pass over a weight matrix is a ``prange`` over its tiles (``_projections_pass``, ``_rows_pass``; a plain loop
# when the caller runs on one thread); what comes before and after it (norms, fronts, gates, residuals: one thread,
# O(H) work) is one of these inline blocks.

@njit(inline="always")
def _projections_front(x, V, c, ws, ws_bits, q, s, si):
    """n1 = RMSNorm(x; attn_norm); q[k], s[k] = the f, i, g BitLinears' int8 codes and scales; si[k] = sum q[k]."""
    rmsnorm_row(x, V[ATTN_NORM], c.norm_eps, c.nH, c.one, ws[0], ws[1])
    for k in range(3):
        s[k] = _front_row(ws[1], V[G_F + k], c.nH, c, ws[2], ws[3], ws_bits[3], q[k])
        si[k] = offset_sum(q[k])


@njit(inline="always")
def _projections_tile(t, H, q, s, si, sw, cfig, yi, z, nb):
    """Tile t of the f, i, g rows (cfig (3H, 32 nb): f's rows, then i's, then g's)."""
    nt = _ntiles(H)
    k = t // nt
    _tile(q[k], si[k], cfig[k * H:(k + 1) * H], s[k], sw[k], yi[k], z[k], t % nt, nb)


@njit(inline="always")
def _projections_back(z, e):
    """e = -|z_f|, -|z_i| (the caller takes exp of it)."""
    H = z.shape[1]
    for j in range(H):
        e[j] = -abs(z[0, j])
        e[H + j] = -abs(z[1, j])


@njit(inline="always")
def _projections_pass(parallel, H, q, s, si, sw, cfig, yi, z, nb):
    """Every tile of the f, i, g rows: split over the threads (``parallel``), or on this thread alone with no
    parallel region to launch (the caller runs on one thread)."""
    if parallel:
        for t in prange(3 * _ntiles(H)):
            _projections_tile(t, H, q, s, si, sw, cfig, yi, z, nb)
    else:
        for t in range(3 * _ntiles(H)):
            _projections_tile(t, H, q, s, si, sw, cfig, yi, z, nb)


@njit(inline="always")
def _rows_pass(parallel, xq, sum_x, codes, s_x, s_w, y_int, y, nb):
    """y = one BitLinear's rows (``_tile``), every tile of codes: split over the threads or on this one, as above."""
    if parallel:
        for t in prange(_ntiles(codes.shape[0])):
            _tile(xq, sum_x, codes, s_x, s_w, y_int, y, t, nb)
    else:
        for t in range(_ntiles(codes.shape[0])):
            _tile(xq, sum_x, codes, s_x, s_w, y_int, y, t, nb)


@njit(inline="always")
def _down_front(y, eg, g_down, c, wi, wi_bits, qi):
    """a = silu(gate) up, then the down BitLinear's front: codes into qi; returns s_x."""
    one = c.one
    I = g_down.shape[0]
    a = wi[0]
    for j in range(I):
        g = y[j]
        a[j] = (g * _sigmoid_from_e(g, eg[j], one)) * y[I + j]
    return _front_row(a, g_down, c.nI, c, wi[1], wi[2], wi_bits[2], qi)


# ----------------------------------------------------------------------------- the kernels: three calls per layer

@njit(cache=True, parallel=True, error_model="numpy")
def k1_projections(x, V, sw, cfig, cs, ws, ws_bits, q, s, si, yi, z, e, parallel):
    """The first layer's input: n1 = RMSNorm(x); z[k] = BitLinear_k(n1) for k = f, i, g (one pass over the 3H rows
    of cfig); e = -|z_f|, -|z_i|. cs: DecodeScalars as an array; ws (4, H) scratch; q (3, 128 nb) int8 (zero
    padding); s (3,) float and si (3,) int32 scratch; yi (3, H) int32 scratch."""
    c = _scalars(cs)
    H = x.shape[0]
    _projections_front(x, V, c, ws, ws_bits, q, s, si)
    nb = q.shape[1] // BLOCK
    _projections_pass(parallel, H, q, s, si, sw, cfig, yi, z, nb)
    _projections_back(z, e)


@njit(cache=True, error_model="numpy")
def k2_scan(z, e, V, has_lb, h0, cs, ws, h, gn, eh):
    """f = σ(z_f) (lb + (1 - lb) σ if has_lb), i = silu(z_i)(1 - f), h = f h0 + i; gn = RMSNorm(z_g); eh = -|h|."""
    c = _scalars(cs)
    H = h.shape[0]
    one = c.one
    lb = V[LB]
    for j in range(H):
        sf = _sigmoid_from_e(z[0, j], e[j], one)
        f = lb[j] + (one - lb[j]) * sf if has_lb else sf
        zi = z[1, j]
        i = (zi * _sigmoid_from_e(zi, e[H + j], one)) * (one - f)
        hj = f * h0[j] + i
        h[j] = hj
        eh[j] = -abs(hj)
    rmsnorm_row(z[2], V[G_NORM], c.norm_eps, c.nH, one, ws[0], gn)


@njit(cache=True, parallel=True, error_model="numpy")
def k3_output_and_gate(x, h, eh, gn, V, sw, co, cgate, cs, ws, ws_bits, qh, si, yi, r, y, eg, parallel):
    """o = gn silu(h); r = x + BitLinear_o(o); y = BitLinear_gate(RMSNorm(r; mlp_norm)) (2I: gate and up, one
    pass); eg = -|y[:I]|. yi (>= 2I,) int32 scratch."""
    c = _scalars(cs)
    H = x.shape[0]
    one = c.one
    o = ws[0]
    for j in range(H):
        o[j] = gn[j] * (h[j] * _sigmoid_from_e(h[j], eh[j], one))
    s_o = _front_row(o, V[G_O], c.nH, c, ws[2], ws[3], ws_bits[3], qh)
    si[0] = offset_sum(qh)
    nb = qh.shape[0] // BLOCK
    _rows_pass(parallel, qh, si[0], co, s_o, sw[3], yi, r, nb)
    for j in range(H):
        r[j] = x[j] + r[j]                                                 # residual 1
    rmsnorm_row(r, V[MLP_NORM], c.norm_eps, c.nH, one, ws[0], ws[1])
    s_g = _front_row(ws[1], V[G_GATE], c.nH, c, ws[2], ws[3], ws_bits[3], qh)
    si[1] = offset_sum(qh)
    _rows_pass(parallel, qh, si[1], cgate, s_g, sw[4], yi, y, nb)
    I = y.shape[0] // 2
    for j in range(I):
        eg[j] = -abs(y[j])


@njit(cache=True, parallel=True, error_model="numpy")
def k4_down_and_projections(r, y, eg, g_down, sw, cdown, cs, wi, wi_bits, qi, si, yi, out,
                            V2, sw2, cfig2, ws, ws_bits, q, s, yi3, z, e, parallel):
    """out = r + BitLinear_down(silu(gate) up), then the next layer's k1_projections on out (V2, sw2, cfig2):
    nothing between the two needs an exponential, so they are one call. wi (3, I) scratch, qi (128 nb_I,) int8."""
    c = _scalars(cs)
    s_d = _down_front(y, eg, g_down, c, wi, wi_bits, qi)
    si[0] = offset_sum(qi)
    H = out.shape[0]
    nbi = qi.shape[0] // BLOCK
    _rows_pass(parallel, qi, si[0], cdown, s_d, sw[5], yi, out, nbi)
    for j in range(H):
        out[j] = r[j] + out[j]                                             # residual 2
    _projections_front(out, V2, c, ws, ws_bits, q, s, si)
    nb = q.shape[1] // BLOCK
    _projections_pass(parallel, H, q, s, si, sw2, cfig2, yi3, z, nb)
    _projections_back(z, e)


@njit(cache=True, parallel=True, error_model="numpy")
def k4_down_and_head(r, y, eg, g_down, sw, cdown, cs, wi, wi_bits, qi, si, yi, out,
                     w_norm, g_head, s_w_head, chead, ws, ws_bits, qh, logits, parallel):
    """The last layer's out = r + BitLinear_down(silu(gate) up), then logits = BitLinear_head(RMSNorm(out; norm))."""
    c = _scalars(cs)
    s_d = _down_front(y, eg, g_down, c, wi, wi_bits, qi)
    si[0] = offset_sum(qi)
    H = out.shape[0]
    nbi = qi.shape[0] // BLOCK
    _rows_pass(parallel, qi, si[0], cdown, s_d, sw[5], yi, out, nbi)
    for j in range(H):
        out[j] = r[j] + out[j]                                             # residual 2
    rmsnorm_row(out, w_norm, c.norm_eps, c.nH, c.one, ws[0], ws[1])
    s = _front_row(ws[1], g_head, c.nH, c, ws[2], ws[3], ws_bits[3], qh)
    si[1] = offset_sum(qh)
    nb = qh.shape[0] // BLOCK
    _rows_pass(parallel, qh, si[1], chead, s, s_w_head, yi, logits, nb)
