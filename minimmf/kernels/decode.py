"""Decode fast path: one packed-model step for one token in four Numba calls per layer instead of ~40 NumPy calls.

Why this file exists: at batch 1 the packed step of the 370M model spent about half its time outside the ternary
kernel, in Python/NumPy dispatch on (1, 1, H) arrays (≈ 170 BitLinear calls and their RMSNorms, gates, scan step
and residuals, a few µs each; ``benchmarks/README.md``). The readable specification stays where it is —
``model_forward`` with ``bitlinear_packed_forward`` — and this module does the SAME arithmetic in the SAME order,
so it gives the same bits (``tests/test_kernels_decode.py``):

    per layer l (x (H,) the residual stream, h0 (H,) the layer's state):
      K1  n1 = RMSNorm(x; attn_norm);  for p in f, i, g: q_p, s_p = quant_act(RMSNorm(n1; g_p))
          z_p = ternary(q_p, W_p) / (s_p s_w,p)       (one prange over the 3H output rows)
          e = -|z_f|, -|z_i|                          -> NumPy: e = exp(e)
      K2  f = σ(z_f) (lower-bounded), i = silu(z_i)(1 - f), h = f h0 + i;  gn = RMSNorm(z_g; g_norm);  e = -|h|
                                                       -> NumPy: e = exp(e)
      K3  o = gn silu(h);  r = x + BitLinear_o(o);  y = BitLinear_gate(RMSNorm(r; mlp_norm));  e = -|y[:I]|
                                                       -> NumPy: e = exp(e)
      K4  x' = r + BitLinear_down(silu(gate) up)
    head: logits = BitLinear_head(RMSNorm(x; norm))

e^x is left to NumPy (as in ``fused.py``: LLVM's expf differs from NumPy's SIMD exp in the last bit), so the kernels
stop where an exponential is needed and the wrapper calls ``np.exp`` in place on one small buffer. Each BitLinear's
int8 front (RMSNorm + absmax quantization) writes its codes straight into the zero-padded int8 row the ternary
kernel reads (no float code array, no ``astype``), and the rescale happens as each output row is summed.

Used by ``PackedMMfreeLM.step`` for one sequence (B = 1) when the JIT is on and the fused kernels are not switched
off (``fused.use_fused``); with ``NUMBA_DISABLE_JIT=1`` the step runs the plain path.
"""

from . import _numba  # noqa: F401  (configure Numba before anything below compiles)

import numpy as np
from numba import njit, prange

from . import fused
from .fused import _pairwise_sum, _round_half_away, _sigmoid_from_e
from .ternary import BLOCK, ROWS_PER_TILE, _dot_packed_row, _n_blocks

BITLINEAR_EPS = 1e-6      # bitlinear.BITLINEAR_EPS (kernels may not import the layers; a test pins them equal)
ACT_QMAX = 127            # quant.ACT_QMAX
ACT_EPS = 1e-5            # quant.ACT_EPS

# rows of a layer's stacked (9, H) float vectors: gains and the lower bound
ATTN_NORM, G_F, G_I, G_G, G_NORM, G_O, MLP_NORM, G_GATE, LB = range(9)
N_VECS = 9


# ----------------------------------------------------------------------------- one-row building blocks

@njit(cache=True, error_model="numpy")
def _rmsnorm_row(x, w, eps, nC, one, sq, y):
    """fused.rmsnorm_forward on one row: y = (x rstd) w, rstd = 1 / sqrt(mean(x^2) + eps); sq is scratch."""
    C = x.shape[0]
    for j in range(C):
        sq[j] = x[j] * x[j]
    rs = one / np.sqrt(_pairwise_sum(sq, 0, C, one - one) / nC + eps)
    for j in range(C):
        y[j] = (x[j] * rs) * w[j]


@njit(cache=True, error_model="numpy")
def _front_row(x, g, eps, nC, qmax, act_eps, half, one, n, a, a_bits, q):
    """fused.bitlinear_front on one row, codes written as int8 into q[:C] (q's padding stays zero). Returns s_x.

    n = (x rstd) g,  s_x = qmax / max(max|n|, act_eps),  q = clip(round_half_away(n s_x), -qmax - 1, qmax).
    """
    C = x.shape[0]
    zero = one - one
    for j in range(C):
        n[j] = x[j] * x[j]
    rs = one / np.sqrt(_pairwise_sum(n, 0, C, zero) / nC + eps)
    for j in range(C):
        v = (x[j] * rs) * g[j]
        n[j] = v
        a[j] = abs(v)
    m = a_bits[0]                                     # max of floats >= 0 as a max of their bit patterns
    for j in range(1, C):
        m = max(m, a_bits[j])
    a_bits[0] = m
    s = qmax / max(a[0], act_eps)
    lo, hi = -qmax - one, qmax
    for j in range(C):
        c = min(max(_round_half_away(n[j] * s, half, one, zero), lo), hi)
        q[j] = np.int8(c)
    return s


@njit(inline="always")
def _tile(xq, codes, s_x, s_w, y, o0, nblocks):
    """y[o] = ternary(xq, codes[o]) / (s_x s_w) for the 16 rows from o0 (the plain path's int32 sum, then rescale)."""
    acc = np.zeros(32, np.int16)
    den = s_x * s_w
    for o in range(o0, min(o0 + ROWS_PER_TILE, codes.shape[0])):
        y[o] = _dot_packed_row(xq, codes[o], nblocks, acc)    # int32 -> float: exact below 2**24, as astype
        y[o] = y[o] / den


# ----------------------------------------------------------------------------- the four per-layer kernels

@njit(cache=True, parallel=True, error_model="numpy")
def _k1_projections(x, V, sw, cf, ci, cg, eps, c, ws, ws_bits, q, s, z, e):
    """n1 = RMSNorm(x); z[k] = BitLinear_k(n1) for k = f, i, g (one prange over 3H rows); e = -|z_f|, -|z_i|.

    c = (bitlinear eps, H, qmax, act_eps, 1/2, 1) in the model's dtype; ws (4, H) scratch; q (3, 128 nb) int8.
    """
    H = x.shape[0]
    one = c[5]
    _rmsnorm_row(x, V[ATTN_NORM], eps, c[1], one, ws[0], ws[1])
    for k in range(3):
        s[k] = _front_row(ws[1], V[G_F + k], c[0], c[1], c[2], c[3], c[4], one, ws[2], ws[3], ws_bits[3], q[k])
    ntiles = (H + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    nb = q.shape[1] // BLOCK
    for t in prange(3 * ntiles):
        k = t // ntiles
        codes = cf if k == 0 else (ci if k == 1 else cg)
        _tile(q[k], codes, s[k], sw[k], z[k], (t % ntiles) * ROWS_PER_TILE, nb)
    for j in range(H):
        e[j] = -abs(z[0, j])
        e[H + j] = -abs(z[1, j])


@njit(cache=True, error_model="numpy")
def _k2_scan(z, e, V, has_lb, h0, eps, nC, one, ws, h, gn, eh):
    """f = σ(z_f) (lb + (1 - lb) σ if has_lb), i = silu(z_i)(1 - f), h = f h0 + i; gn = RMSNorm(z_g); eh = -|h|."""
    H = h.shape[0]
    lb = V[LB]
    for j in range(H):
        sf = _sigmoid_from_e(z[0, j], e[j], one)
        f = lb[j] + (one - lb[j]) * sf if has_lb else sf
        zi = z[1, j]
        i = (zi * _sigmoid_from_e(zi, e[H + j], one)) * (one - f)
        hj = f * h0[j] + i
        h[j] = hj
        eh[j] = -abs(hj)
    _rmsnorm_row(z[2], V[G_NORM], eps, nC, one, ws[0], gn)


@njit(cache=True, parallel=True, error_model="numpy")
def _k3_output_and_gate(x, h, eh, gn, V, sw, co, cgate, eps, c, ws, ws_bits, qh, qi, r, y, eg):
    """o = gn silu(h); r = x + BitLinear_o(o); y = BitLinear_gate(RMSNorm(r; mlp_norm)) (2I,); eg = -|y[:I]|."""
    H = x.shape[0]
    one = c[5]
    o = ws[0]
    for j in range(H):
        o[j] = gn[j] * (h[j] * _sigmoid_from_e(h[j], eh[j], one))
    s_o = _front_row(o, V[G_O], c[0], c[1], c[2], c[3], c[4], one, ws[2], ws[3], ws_bits[3], qh)
    ntiles = (H + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    nb = qh.shape[0] // BLOCK
    for t in prange(ntiles):
        _tile(qh, co, s_o, sw[3], r, t * ROWS_PER_TILE, nb)
    for j in range(H):
        r[j] = x[j] + r[j]                                                 # residual 1
    _rmsnorm_row(r, V[MLP_NORM], eps, c[1], one, ws[0], ws[1])
    s_g = _front_row(ws[1], V[G_GATE], c[0], c[1], c[2], c[3], c[4], one, ws[2], ws[3], ws_bits[3], qh)
    ntiles = (cgate.shape[0] + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    for t in prange(ntiles):
        _tile(qh, cgate, s_g, sw[4], y, t * ROWS_PER_TILE, nb)
    I = y.shape[0] // 2
    for j in range(I):
        eg[j] = -abs(y[j])


@njit(cache=True, parallel=True, error_model="numpy")
def _k4_down(r, y, eg, g_down, sw, cdown, c, nI, wi, wi_bits, qi, out):
    """a = silu(gate) up; out = r + BitLinear_down(a). wi (3, I) scratch, qi (128 nb_I,) int8."""
    one = c[5]
    I = g_down.shape[0]
    a = wi[0]
    for j in range(I):
        g = y[j]
        a[j] = (g * _sigmoid_from_e(g, eg[j], one)) * y[I + j]
    s_d = _front_row(a, g_down, c[0], nI, c[2], c[3], c[4], one, wi[1], wi[2], wi_bits[2], qi)
    H = out.shape[0]
    ntiles = (H + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    nb = qi.shape[0] // BLOCK
    for t in prange(ntiles):
        _tile(qi, cdown, s_d, sw[5], out, t * ROWS_PER_TILE, nb)
    for j in range(H):
        out[j] = r[j] + out[j]                                             # residual 2


@njit(cache=True, parallel=True, error_model="numpy")
def _k_head(x, w_norm, g_head, s_w, codes, eps, c, ws, ws_bits, qh, logits):
    """logits = BitLinear_head(RMSNorm(x; norm))."""
    one = c[5]
    _rmsnorm_row(x, w_norm, eps, c[1], one, ws[0], ws[1])
    s = _front_row(ws[1], g_head, c[0], c[1], c[2], c[3], c[4], one, ws[2], ws[3], ws_bits[3], qh)
    ntiles = (codes.shape[0] + ROWS_PER_TILE - 1) // ROWS_PER_TILE
    nb = qh.shape[0] // BLOCK
    for t in prange(ntiles):
        _tile(qh, codes, s, s_w, logits, t * ROWS_PER_TILE, nb)


# ----------------------------------------------------------------------------- the plan and the step

class DecodePlan:
    """What a step needs from a packed parameter tree, laid out once: per layer a (9, H) stack of gains and the
    lower bound, the six weight scales in the model's dtype, and the six code matrices (views, not copies)."""

    def __init__(self, params: dict, config):
        from ..bitlinear import PackedBitLinear                          # lazily: layers import kernels
        from ..mlgru import lower_bounds_forward
        E = params["embeddings"]
        self.dtype = dt = np.dtype(E.dtype)
        ft = dt.type
        H, L = config.hidden_size, config.num_hidden_layers
        lb = lower_bounds_forward(params["lower_bounds"])[0] if config.use_lower_bound else None
        self.eps = ft(config.rms_norm_eps)
        self.layers = []
        for l, p in enumerate(params["layers"]):
            a, m = p["attn"], p["mlp"]
            projs = [a["f_proj"], a["i_proj"], a["g_proj"], a["o_proj"], m["gate_proj"], m["down_proj"]]
            assert all(isinstance(pb, PackedBitLinear) for pb in projs)
            has_lb = lb is not None and l > 0
            V = np.zeros((N_VECS, H), dt)
            for row, v in ((ATTN_NORM, p["attn_norm"]), (G_F, a["f_proj"].g), (G_I, a["i_proj"].g),
                           (G_G, a["g_proj"].g), (G_NORM, a["g_norm"]), (G_O, a["o_proj"].g),
                           (MLP_NORM, p["mlp_norm"]), (G_GATE, m["gate_proj"].g)):
                V[row] = v
            if has_lb:
                V[LB] = lb[l]
            sw = np.array([pb.s_w for pb in projs], dt)                  # float(s_w) -> dtype, as the plain path
            codes = tuple(pb.codes.codes for pb in projs)
            self.layers.append((V, sw, codes, has_lb, np.ascontiguousarray(m["down_proj"].g, dt)))
        head = params["lm_head"]
        self.norm = np.ascontiguousarray(params["norm"], dt)
        self.head_g = np.ascontiguousarray(head.g, dt)
        self.head_sw = ft(head.s_w)
        self.head_codes = head.codes.codes
        self.I = params["layers"][0]["mlp"]["down_proj"].g.shape[0]
        self.H, self.V = H, config.vocab_size
        self.c = np.array([BITLINEAR_EPS, H, ACT_QMAX, ACT_EPS, 0.5, 1.0], dt)
        self.cI = ft(self.I)


def plan_for(model) -> DecodePlan:
    """The model's DecodePlan, built on first use (a packed model's parameters are frozen)."""
    plan = model.__dict__.get("_decode_plan")
    if plan is None:
        plan = model._decode_plan = DecodePlan(model.params, model.config)
    return plan


def applies(model, token_ids) -> bool:
    """True when ``step`` below can run this step: the JIT and fused kernels on, one sequence, float32/float64."""
    return (np.shape(token_ids) == (1,) and fused.use_fused(np.empty(0, model.dtype))
            and _library_quantizers())


def _library_quantizers() -> bool:
    """False if someone swapped BitLinear's quantizers or its add/sub kernel (tests that instrument them do):
    the fused step has both built in, so a substitute must run on the plain path."""
    from .. import bitlinear
    from . import ternary
    return bitlinear._library_quantizers() and bitlinear.ternary_matmul is ternary.ternary_matmul


def step_arrays(plan: DecodePlan, x: np.ndarray, hs) -> tuple[np.ndarray, list]:
    """One token through every layer and the head. Shapes: x (H,) embedding row, hs L x (H,) -> logits (V,), L x (H,).

    (The inputs are not changed; the new states are fresh arrays.)
    """
    dt, H, I = plan.dtype, plan.H, plan.I
    ws = np.zeros((4, H), dt)
    ws_bits = ws.view(np.int32 if dt == np.float32 else np.int64)
    wi = np.zeros((3, I), dt)
    wi_bits = wi.view(np.int32 if dt == np.float32 else np.int64)
    q3 = np.zeros((3, BLOCK * _n_blocks(H)), np.int8)                    # zero padding meets zero codes
    qi = np.zeros(BLOCK * _n_blocks(I), np.int8)
    s3 = np.empty(3, dt)
    z = np.empty((3, H), dt)
    e = np.empty(2 * H, dt)
    gn, r = np.empty(H, dt), np.empty(H, dt)
    y = np.empty(2 * I, dt)
    eg = np.empty(I, dt)
    c, eps = plan.c, plan.eps
    new_h = np.empty((len(plan.layers), H), dt)
    for l, (V, sw, codes, has_lb, g_down) in enumerate(plan.layers):
        cf, ci, cg, co, cgate, cdown = codes
        _k1_projections(x, V, sw, cf, ci, cg, eps, c, ws, ws_bits, q3, s3, z, e)
        np.exp(e, out=e)
        h = new_h[l]
        _k2_scan(z, e, V, has_lb, hs[l], eps, c[1], c[5], ws, h, gn, e[:H])
        np.exp(e[:H], out=e[:H])
        _k3_output_and_gate(x, h, e[:H], gn, V, sw, co, cgate, eps, c, ws, ws_bits, q3[0], qi, r, y, eg)
        np.exp(eg, out=eg)
        x = np.empty(H, dt)
        _k4_down(r, y, eg, g_down, sw, cdown, c, plan.cI, wi, wi_bits, qi, x)
    logits = np.empty(plan.V, dt)
    _k_head(x, plan.norm, plan.head_g, plan.head_sw, plan.head_codes, eps, c, ws, ws_bits, q3[0], logits)
    return logits, list(new_h)


def step(model, token_ids, state):
    """``MMfreeLM.step`` for one sequence on the fused decode kernels: (logits (1, V), new state), same numbers."""
    from .. import validate                                              # lazily: the model layers import kernels
    ids = validate.token_ids(token_ids, model.config.vocab_size, "token_ids", ndim=1)
    model._check_state(state, ids.shape[0])
    plan = plan_for(model)
    x = np.ascontiguousarray(model.params["embeddings"][ids][0], plan.dtype)   # (H,)
    hs = [np.ascontiguousarray(h[0], plan.dtype) for h in state.h]
    logits, new_h = step_arrays(plan, x, hs)
    return logits[None, :], type(state)(tuple(h[None, :] for h in new_h))
