"""Fast twin of ``minimmf/packed.py``'s one-token step: a packed model's step for one sequence in four Numba calls
per layer (``kernels/decode.py``) instead of ~40 NumPy calls, with the same bits.

``DecodePlan`` lays a packed parameter tree out once for the kernels (per layer a (9, H) stack of gains and the
lower bound, the six weight scales, the six code matrices); ``packed_step`` runs one token through it. Batches of
more than one sequence, and dtypes other than float32/float64, run the plain step (``packed.packed_step``).
"""
from __future__ import annotations

import numpy as np

from .. import bitlinear, packed, quant, validate
from ..bitlinear import PackedBitLinear
from ..kernels import fused
from ..kernels.decode import (ATTN_NORM, G_F, G_G, G_GATE, G_I, G_NORM, G_O, LB, MLP_NORM, N_VECS, DecodeScalars,
                              k1_projections, k2_scan, k3_output_and_gate, k4_down, k_head)
from ..kernels.ternary import BLOCK, _n_blocks
from ..mlgru import lower_bounds_forward


class DecodePlan:
    """What a step needs from a packed parameter tree, laid out once: per layer a (9, H) stack of gains and the
    lower bound, the six weight scales in the model's dtype, and the six code matrices (views, not copies)."""

    def __init__(self, params: dict, config):
        E = params["embeddings"]
        self.dtype = dt = np.dtype(E.dtype)
        ft = dt.type
        H = config.hidden_size
        lb = lower_bounds_forward(params["lower_bounds"])[0] if config.use_lower_bound else None
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
        self.scalars = DecodeScalars(norm_eps=ft(config.rms_norm_eps), bitlinear_eps=ft(bitlinear.BITLINEAR_EPS),
                                     nH=ft(H), nI=ft(self.I), qmax=ft(quant.ACT_QMAX), act_eps=ft(quant.ACT_EPS),
                                     half=ft(0.5), one=ft(1))


def plan_for(model) -> DecodePlan:
    """The model's DecodePlan, built on first use (a packed model's parameters are frozen)."""
    plan = model.__dict__.get("_decode_plan")
    if plan is None:
        plan = model._decode_plan = DecodePlan(model.params, model.config)
    return plan


def step_arrays(plan: DecodePlan, x: np.ndarray, hs) -> tuple[np.ndarray, list]:
    """One token through every layer and the head. Shapes: x (H,) embedding row, hs L x (H,) -> logits (V,), L x (H,).

    (The inputs are not changed; the new states are fresh arrays.)
    """
    dt, H, I = plan.dtype, plan.H, plan.I
    ws = np.zeros((4, H), dt)                                             # scratch rows
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
    c = plan.scalars
    new_h = np.empty((len(plan.layers), H), dt)
    for l, (V, sw, codes, has_lb, g_down) in enumerate(plan.layers):
        cf, ci, cg, co, cgate, cdown = codes
        k1_projections(x, V, sw, cf, ci, cg, c, ws, ws_bits, q3, s3, z, e)
        np.exp(e, out=e)
        h = new_h[l]
        k2_scan(z, e, V, has_lb, hs[l], c, ws, h, gn, e[:H])
        np.exp(e[:H], out=e[:H])
        k3_output_and_gate(x, h, e[:H], gn, V, sw, co, cgate, c, ws, ws_bits, q3[0], r, y, eg)
        np.exp(eg, out=eg)
        x = np.empty(H, dt)
        k4_down(r, y, eg, g_down, sw, cdown, c, wi, wi_bits, qi, x)
    logits = np.empty(plan.V, dt)
    k_head(x, plan.norm, plan.head_g, plan.head_sw, plan.head_codes, c, ws, ws_bits, q3[0], logits)
    return logits, list(new_h)


def packed_step(model, token_ids, state):
    """packed.packed_step for one sequence on the decode kernels: (logits (1, V), new state), the same numbers."""
    if np.shape(token_ids) != (1,) or not fused.fusable(np.empty(0, model.dtype)):
        return packed.packed_step(model, token_ids, state)
    ids = validate.token_ids(token_ids, model.config.vocab_size, "token_ids", ndim=1)
    model._check_state(state, ids.shape[0])
    plan = plan_for(model)
    x = np.ascontiguousarray(model.params["embeddings"][ids][0], plan.dtype)   # (H,)
    hs = [np.ascontiguousarray(h[0], plan.dtype) for h in state.h]
    logits, new_h = step_arrays(plan, x, hs)
    return logits[None, :], type(state)(tuple(h[None, :] for h in new_h))
