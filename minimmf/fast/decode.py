"""Fast twin of ``minimmf/packed.py``'s one-token step: a packed model's step for one sequence in four Numba calls
per layer (``kernels/decode.py``) instead of ~40 NumPy calls, with the same bits.

``DecodePlan`` lays a packed parameter tree out once for the kernels (per layer a (9, H) stack of gains and the
lower bound, the six weight scales, and every scratch buffer a step writes); the code matrices it reads are the
model's own offset codes (w + 1), which ``packed.adopt_packed`` has laid out in one buffer in the order a step
reads them: the plan takes views of them, f, i, g as one (3H, .) view, and copies no code. ``packed_step`` runs
one token through it. Batches of more than one sequence, and dtypes other than
float32/float64, run the plain step (``packed.packed_step``).

Two threads must never be slower than one: on a machine where another process keeps a core busy, every parallel
region waits for a descheduled thread. So a step with more than one Numba thread available asks the plan's
``StepGuard`` (a ``ParallelGuard``, ``kernels/ternary.py``) whether to run on all of them or on the calling thread
alone: it times steps of both forms, falls back to one thread as soon as a step on all of them overran the
one-thread estimate, and tries the form not in use now and then (as often as costs about PROBE_COST of the time).
``model.guard_threads = False`` turns the guard off (every step on all threads: what benchmarks compare against).
"""
from __future__ import annotations

import time

import numba
import numpy as np

from .. import bitlinear, packed, quant, validate
from ..bitlinear import PackedBitLinear
from ..kernels import fused
from ..kernels.decode import (ATTN_NORM, G_F, G_G, G_GATE, G_I, G_NORM, G_O, LB, MLP_NORM, N_VECS, DecodeScalars,
                              k1_projections, k2_scan, k3_output_and_gate, k4_down_and_head, k4_down_and_projections)
from ..kernels.ternary import BLOCK, ParallelGuard, _n_blocks, as_offset
from ..mlgru import lower_bounds_forward


PROBE_COST = 0.02  # at most this fraction of the time goes to trying the form (1 thread or all) not in use


class StepGuard(ParallelGuard):
    """``ParallelGuard`` with the try of the other form spaced by what it costs: when the other form is r times
    slower, it is tried every (r - 1) / PROBE_COST steps (at least every 16, at most every 1024), so trying it costs
    about PROBE_COST of the time. (Under a busy core a 2-thread step can be 15x slower than a 1-thread one: tried
    every 16 steps it would cost a fifth of the time.)"""

    def __init__(self, clock=time.perf_counter):
        super().__init__(window=5, probe=16, clock=clock)

    def choose(self, key) -> bool:
        st = self._state.get(key)
        if st is not None and len(st[0]) >= 2 and len(st[1]) >= 2:
            serial, parallel = (sorted(t)[len(t) // 2] for t in st[:2])
            ratio = max(serial, parallel) / max(min(serial, parallel), 1e-9)
            self.probe = int(min(1024, max(16, (ratio - 1) / PROBE_COST)))
        return super().choose(key)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def stacked(mats: list) -> np.ndarray:
    """The code matrices (O_k, C) stacked into one (sum O_k, C): a view when they lie one after the other in one
    buffer (as ``packed.adopt_packed`` lays a model's codes out), else a copy (a tree assembled by hand)."""
    base = mats[0]
    while isinstance(base.base, np.ndarray):
        base = base.base
    at = _address(mats[0])
    for m in mats:
        if not (m.flags.c_contiguous and _address(m) == at and m.shape[1] == mats[0].shape[1]):
            return np.concatenate(mats)
        at += m.nbytes
    if base.ndim != 1 or base.dtype != np.uint8:
        return np.concatenate(mats)
    start = _address(mats[0]) - _address(base)
    return base[start:start + sum(m.nbytes for m in mats)].reshape(-1, mats[0].shape[1])


class DecodePlan:
    """What a step needs from a packed parameter tree, laid out once: per layer a (9, H) stack of gains and the
    lower bound, the six weight scales in the model's dtype, views of the code matrices (offset codes); the
    scratch buffers every step reuses; the guard choosing one thread or all."""

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
            codes = [as_offset(pb.codes).codes for pb in projs]          # the model's own (an older tree: converted)
            codes = (stacked(codes[:3]),) + tuple(codes[3:])           # f, i, g: one (3H, .) matrix
            self.layers.append((V, sw, codes, has_lb, np.ascontiguousarray(m["down_proj"].g, dt)))
        head = params["lm_head"]
        self.norm = np.ascontiguousarray(params["norm"], dt)
        self.head_g = np.ascontiguousarray(head.g, dt)
        self.head_sw = ft(head.s_w)
        self.head_codes = as_offset(head.codes).codes
        self.I = I = params["layers"][0]["mlp"]["down_proj"].g.shape[0]
        self.H, self.V = H, config.vocab_size
        bits = np.int32 if dt == np.float32 else np.int64
        self.ws = np.zeros((4, H), dt)                                   # scratch rows (and their bits)
        self.ws_bits = self.ws.view(bits)
        self.wi = np.zeros((3, I), dt)
        self.wi_bits = self.wi.view(bits)
        self.q3 = np.zeros((3, BLOCK * _n_blocks(H)), np.int8)           # int8 codes; the padding stays zero
        self.qi = np.zeros(BLOCK * _n_blocks(I), np.int8)
        self.yi = np.zeros(max(3 * H, 2 * I, self.V), np.int32)          # int32 sums
        self.yi3 = self.yi[:3 * H].reshape(3, H)
        self.s3 = np.empty(3, dt)
        self.si = np.zeros(3, np.int32)                                  # sum_i q_i of the rows being multiplied
        self.z = np.empty((3, H), dt)
        self.e = np.empty(2 * H, dt)
        self.gn, self.r = np.empty(H, dt), np.empty(H, dt)
        self.x = np.empty((2, H), dt)                                    # the residual stream, layer to layer
        self.y = np.empty(2 * I, dt)
        self.eg = np.empty(I, dt)
        self.guard = StepGuard()
        self.scalars = c = DecodeScalars(norm_eps=ft(config.rms_norm_eps), bitlinear_eps=ft(bitlinear.BITLINEAR_EPS),
                                     nH=ft(H), nI=ft(self.I), qmax=ft(quant.ACT_QMAX), act_eps=ft(quant.ACT_EPS),
                                     half=ft(0.5), one=ft(1))
        self.cs = np.array(c, dt)                                        # the scalars as the kernels take them

    def arrays(self) -> list:
        """Every array the plan holds (``packed.resident_bytes`` counts them; the codes are views of the model's)."""
        out = []

        def walk(v):
            if isinstance(v, np.ndarray):
                out.append(v)
            elif isinstance(v, (tuple, list)):
                for x in v:
                    walk(x)
        walk(list(self.__dict__.values()))
        return out


def plan_for(model) -> DecodePlan:
    """The model's DecodePlan, built on first use (a packed model's parameters are frozen)."""
    plan = model.__dict__.get("_decode_plan")
    if plan is None:
        plan = model._decode_plan = DecodePlan(model.params, model.config)
    return plan


def step_arrays(plan: DecodePlan, x: np.ndarray, hs) -> tuple[np.ndarray, np.ndarray]:
    """One token through every layer and the head. Shapes: x (H,) embedding row, hs L x (H,) -> logits (V,), (L, H).

    (The inputs are not changed; the logits and the new states are fresh arrays, everything else is the plan's.)
    """
    p = plan
    cs, ws, ws_bits, q3, si, yi, yi3, z, e, r, y, eg = (p.cs, p.ws, p.ws_bits, p.q3, p.si, p.yi, p.yi3, p.z, p.e,
                                                        p.r, p.y, p.eg)
    H, L = p.H, len(p.layers)
    eH, qh = e[:H], q3[0]
    new_h = np.empty((L, H), p.dtype)
    logits = np.empty(p.V, p.dtype)
    par = numba.get_num_threads() > 1                  # one thread: the kernels launch no parallel region
    V, sw, (cfig, co, cgate, cdown), has_lb, g_down = p.layers[0]
    k1_projections(x, V, sw, cfig, cs, ws, ws_bits, q3, p.s3, si, yi3, z, e, par)
    for l in range(L):
        np.exp(e, out=e)
        h = new_h[l]
        k2_scan(z, e, V, has_lb, hs[l], cs, ws, h, p.gn, eH)
        np.exp(eH, out=eH)
        k3_output_and_gate(x, h, eH, p.gn, V, sw, co, cgate, cs, ws, ws_bits, qh, si, yi, r, y, eg, par)
        np.exp(eg, out=eg)
        x = p.x[l % 2]
        if l + 1 < L:                                  # this layer's down projection, then the next layer's f, i, g
            V2, sw2, (cfig2, co2, cgate2, cdown2), has_lb2, g_down2 = p.layers[l + 1]
            k4_down_and_projections(r, y, eg, g_down, sw, cdown, cs, p.wi, p.wi_bits, p.qi, si, yi, x,
                                    V2, sw2, cfig2, ws, ws_bits, q3, p.s3, yi3, z, e, par)
            V, sw, co, cgate, cdown, has_lb, g_down = V2, sw2, co2, cgate2, cdown2, has_lb2, g_down2
        else:                                          # the last layer's down projection, then the head
            k4_down_and_head(r, y, eg, g_down, sw, cdown, cs, p.wi, p.wi_bits, p.qi, si, yi, x,
                             p.norm, p.head_g, p.head_sw, p.head_codes, ws, ws_bits, qh, logits, par)
    return logits, new_h


def packed_step(model, token_ids, state):
    """packed.packed_step for one sequence on the decode kernels: (logits (1, V), new state), the same numbers."""
    if np.shape(token_ids) != (1,) or not fused.fusable(np.empty(0, model.dtype)):
        return packed.packed_step(model, token_ids, state)
    ids = validate.token_ids(token_ids, model.config.vocab_size, "token_ids", ndim=1)
    model._check_state(state, ids.shape[0])
    plan = plan_for(model)
    x = np.ascontiguousarray(model.params["embeddings"][ids][0], plan.dtype)   # (H,)
    hs = [np.ascontiguousarray(h[0], plan.dtype) for h in state.h]
    n = numba.get_num_threads()
    if n == 1 or not getattr(model, "guard_threads", True):
        logits, new_h = step_arrays(plan, x, hs)
    else:                                                                 # all threads, or one: measured
        guard = plan.guard
        parallel = guard.choose(n)
        if not parallel:
            numba.set_num_threads(1)
        t0 = guard.clock()
        try:
            logits, new_h = step_arrays(plan, x, hs)
        finally:
            numba.set_num_threads(n)
        guard.record(n, parallel, guard.clock() - t0)
    return logits[None, :], type(state)(tuple(h[None, :] for h in new_h))
