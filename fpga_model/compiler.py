"""Compile a minimmf model into one program per token and a DDR image.

The program runs every block of the model for one token (the host writes the embedding to ``x_in`` and
reads ``x_out``; with ``head_on_core`` the final RMSNorm and the ternary LM head run on the core too and the
host reads ``logits``). Per block, in minimmf's order of float operations (SPEC §3-§5):

    n1 = RMSNorm(x; attn_norm)
    f  = σ(BitLinear_f(n1));  f = lb + (1 - lb) f            (layers > 0)
    i  = silu(BitLinear_i(n1)) (1 - f)
    h  = f h_prev + i                                         h_prev loaded from, h stored to DDR
    o  = RMSNorm(BitLinear_g(n1); g_norm) silu(h)
    r  = x + BitLinear_o(o)
    gate_t, up_t = BitLinear_gate(RMSNorm(r; mlp_norm)), tile by tile
    out = r + BitLinear_down(silu(gate) up)                   I = several D-tiles (the last one padded)

Every BitLinear is the same instruction sequence (RMSNorm in split commands, absmax, one quantization of
all its input tiles, then one ``tmatmul`` per D x D tile with ``acc`` / ``hold`` across input tiles and the
scale s_x s_w applied in the copy-out of the last):

    sqacc x_t, N   (each input tile)      rstd r, eps
    mulsv n_t, x_t, r;  mul n_t, n_t, g_t (each tile)
    amax m, n_0;  amax m, n_t, acc        qscale s_x, m;  quant q_t, n_t, s_x;  smul s, s_x, s_w
    tmatmul y_r, q_0, W[r,0], s0, hold;  ...;  tmatmul y_r, q_last, W[r,last], s, acc

The hidden size must be a multiple of D; I and V are padded to whole tiles.

Taught in chapter 12 (``chapters/12-fpga-compiling-and-stepping.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minimmf.bitlinear import BITLINEAR_EPS, PackedBitLinear
from minimmf.config import MMfreeConfig
from minimmf.kernels.ternary import as_offset, unpack_offset
from minimmf.mlgru import lower_bounds_forward
from minimmf.quant import weight_quant

from .config import CoreConfig, ceil_div, get_config
from .formats import get_format
from .isa import AMAX_ACC, TM_ACC, TM_HOLD
from .memory import DDR, Region, SimError
from .packing import tile_matrix
from .regalloc import ONE, Op, Val, allocate, relocate_spills

ALIGN = 64
PROJECTIONS = ("f_proj", "i_proj", "g_proj", "o_proj")


class Layout:
    """DDR regions, allocated one after the other (64-byte aligned)."""

    def __init__(self):
        self.regions: list[Region] = []
        self.top = 0

    def alloc(self, name: str, nbytes: int, cls: str) -> int:
        addr = self.top
        self.regions.append(Region(addr, addr + nbytes, cls, name))
        self.top = addr + -(-nbytes // ALIGN) * ALIGN
        return addr


@dataclass
class Matrix:
    """Where one BitLinear lives in DDR."""
    name: str
    O: int
    I: int
    n_out: int             # output tiles
    n_in: int              # input tiles
    weights: int           # address of tile (0, 0); tile (r, c) at + (r n_in + c) D^2/4
    gain: int              # address of the gain tiles (n_in vectors)
    s_w: int               # address of the float32 scale
    rows: tuple = ()       # output rows of the matrix in tile order (gate / up halves padded separately)

    def tile(self, r: int, c: int, D: int) -> int:
        return self.weights + (r * self.n_in + c) * D * D // 4


@dataclass
class Compiled:
    """A program for one token, its DDR layout and the addresses the host needs."""
    config: CoreConfig
    number_format: str
    model_config: MMfreeConfig
    program: list
    layout: Layout
    matrices: dict                      # name -> Matrix
    vectors: dict                       # name -> address (gains, lb, state, x_in, x_out, logits, ...)
    scalars: dict                       # name -> address
    head_on_core: bool
    spill_bytes: int = 0
    notes: list = field(default_factory=list)

    @property
    def D(self) -> int:
        return self.config.D

    @property
    def ddr_size(self) -> int:
        return self.layout.top


# ----------------------------------------------------------------------------- layout

def _tiles(n: int, D: int) -> int:
    return ceil_div(n, D)


def build_layout(mc: MMfreeConfig, config: CoreConfig, number_format: str, head_on_core: bool):
    D, wb = config.D, get_format(number_format).word_bytes
    H, I, V, L = mc.hidden_size, mc.I, mc.vocab_size, mc.num_hidden_layers
    if H % D:
        raise SimError(f"unsupported shape: hidden size {H} must be a multiple of the core's D = {D} "
                       f"(choose D among the divisors of {H})")
    vec = D * wb
    lay, mats, vecs, scal = Layout(), {}, {}, {}

    def matrix(name, O, I_, halves=False):
        if halves:                                       # [gate; up]: pad each half to whole tiles
            half = O // 2
            nh = _tiles(half, D)
            rows = tuple(list(range(half)) + [-1] * (nh * D - half) + list(range(half, O)) + [-1] * (nh * D - half))
            n_out = 2 * nh
        else:
            n_out, rows = _tiles(O, D), ()
        n_in = _tiles(I_, D)
        w = lay.alloc(name + ".W", n_out * n_in * D * D // 4, "weights")
        mats[name] = Matrix(name, O, I_, n_out, n_in, w, 0, 0, rows)

    for l in range(L):
        for p in PROJECTIONS:
            matrix(f"L{l}.attn.{p}", H, H)
        matrix(f"L{l}.mlp.gate_proj", 2 * I, H, halves=True)
        matrix(f"L{l}.mlp.down_proj", H, I)
    if head_on_core:
        matrix("lm_head", V, H)
    for m in mats.values():                              # gains and scales
        m.gain = lay.alloc(m.name + ".g", m.n_in * vec, "params")
        m.s_w = lay.alloc(m.name + ".s_w", 4, "params")
    for l in range(L):
        for n in ("attn_norm", "attn.g_norm", "mlp_norm"):
            vecs[f"L{l}.{n}"] = lay.alloc(f"L{l}.{n}", H // D * vec, "params")
        if l > 0 and mc.use_lower_bound:
            vecs[f"L{l}.lb"] = lay.alloc(f"L{l}.lb", H // D * vec, "params")
            vecs[f"L{l}.one_minus_lb"] = lay.alloc(f"L{l}.one_minus_lb", H // D * vec, "params")
    vecs["one"] = lay.alloc("one", vec, "params")
    scal["eps"] = lay.alloc("eps", 4, "params")
    scal["bitlinear_eps"] = lay.alloc("bitlinear_eps", 4, "params")
    if head_on_core:
        vecs["norm"] = lay.alloc("norm", H // D * vec, "params")
    for l in range(L):
        vecs[f"L{l}.state"] = lay.alloc(f"L{l}.state", H // D * vec, "state")
    vecs["x_in"] = lay.alloc("x_in", H // D * vec, "activations")
    if head_on_core:
        vecs["logits"] = lay.alloc("logits", _tiles(V, D) * vec, "activations")
    else:
        vecs["x_out"] = lay.alloc("x_out", H // D * vec, "activations")
    return lay, mats, vecs, scal


# ----------------------------------------------------------------------------- the program as values

class Builder:
    """Emits Ops on Vals (regalloc.py); ``tag`` names the part of the model they belong to."""

    def __init__(self, D: int, vec_bytes: int):
        self.D, self.vec, self.ops, self.n, self.tag = D, vec_bytes, [], 0, ""

    def val(self, kind: str, home: int | None = None, name: str = "") -> Val:
        self.n += 1
        return Val(kind, self.n, home, name)

    def tiles(self, addr: int, n: int, name: str = "") -> list[Val]:
        return [self.val("v", addr + t * self.vec, f"{name}[{t}]") for t in range(n)]

    def op(self, name: str, kind: str | None, srcs, **kw) -> Val | None:
        dst = self.val(kind) if kind else None
        self.ops.append(Op(name, dst, tuple(srcs), tag=self.tag, **kw))
        return dst

    # -- the model's pieces

    def rmsnorm(self, x: list, gain: list, eps: Val, n_valid: int) -> list:
        """(x * rstd) * g with rstd = 1/sqrt(mean(x^2) + eps) over the first n_valid elements."""
        D = self.D
        for t, xt in enumerate(x):
            k = min(D, n_valid - t * D)
            self.op("sqacc", None, (xt,), addr=0 if k == D else k)
        r = self.op("rstd", "s", (eps,))
        out = []
        for xt, gt in zip(x, gain):
            y = self.op("mulsv", "v", (xt, r))
            out.append(self.op("mul", "v", (y, gt)))
        return out

    def bitlinear_inputs(self, x: list, m: Matrix, eps: Val, n_valid: int):
        """RMSNorm with the matrix's gain, absmax over all tiles, int8 codes. Returns (codes, scale)."""
        n = self.rmsnorm(x, self.tiles(m.gain, m.n_in, m.name + ".g"), eps, n_valid)
        mx = None
        for nt in n:
            mx = (self.op("amax", "s", (nt,)) if mx is None
                  else self.op("amax", "s", (nt, mx), ls=AMAX_ACC, tie=1))
        s_x = self.op("qscale", "s", (mx,))
        q = [self.op("quant", "v", (nt, s_x)) for nt in n]
        s = self.op("smul", "s", (s_x, self.val("s", m.s_w, m.name + ".s_w")))
        return q, s

    def bitlinear_row(self, q: list, s: Val, m: Matrix, r: int) -> Val:
        """Output tile r: one tmatmul per input tile, accumulating; the last divides by s."""
        y = None
        for c, qc in enumerate(q):
            last = c == len(q) - 1
            ls = (TM_ACC if c else 0) | (0 if last else TM_HOLD)
            y = self.op("tmatmul", "v" if last else None, (qc, s if last else ONE), addr=m.tile(r, c, self.D),
                        ls=ls)
        return y

    def bitlinear(self, x: list, m: Matrix, eps: Val, n_valid: int) -> list:
        q, s = self.bitlinear_inputs(x, m, eps, n_valid)
        return [self.bitlinear_row(q, s, m, r) for r in range(m.n_out)]

    def each(self, name: str, *tile_lists) -> list:
        kind = "v"
        return [self.op(name, kind, srcs) for srcs in zip(*tile_lists)]


def _block(b: Builder, l: int, x: list, c: Compiled, eps: Val, bl_eps: Val) -> list:
    mc, mats, vecs, D = c.model_config, c.matrices, c.vectors, c.D
    H, I = mc.hidden_size, mc.I
    nh = H // D
    one = b.tiles(vecs["one"], 1, "one")[0]
    P = lambda name: mats[f"L{l}.{name}"]                                     # noqa: E731
    b.tag = f"L{l}.attn_norm"
    n1 = b.rmsnorm(x, b.tiles(vecs[f"L{l}.attn_norm"], nh, "attn_norm"), eps, H)
    b.tag = f"L{l}.attn.f_proj"
    sf = b.each("sig", b.bitlinear(n1, P("attn.f_proj"), bl_eps, H))
    if f"L{l}.lb" in vecs:                                                    # f = lb + (1 - lb) sf
        lb, omlb = b.tiles(vecs[f"L{l}.lb"], nh, "lb"), b.tiles(vecs[f"L{l}.one_minus_lb"], nh, "1-lb")
        f = b.each("add", lb, b.each("mul", omlb, sf))
    else:
        f = sf
    b.tag = f"L{l}.attn.i_proj"
    zi = b.bitlinear(n1, P("attn.i_proj"), bl_eps, H)
    i = b.each("mul", b.each("silu", zi), b.each("sub", [one] * nh, f))       # silu(zi) (1 - f)
    b.tag = f"L{l}.attn.scan"
    h_prev = b.tiles(vecs[f"L{l}.state"], nh, "h_prev")
    h = b.each("add", b.each("mul", f, h_prev), i)                            # h = f h_prev + i
    for t, ht in enumerate(h):
        b.op("sv", None, (ht,), addr=vecs[f"L{l}.state"] + t * b.vec)
    b.tag = f"L{l}.attn.g_proj"
    zg = b.bitlinear(n1, P("attn.g_proj"), bl_eps, H)
    gn = b.rmsnorm(zg, b.tiles(vecs[f"L{l}.attn.g_norm"], nh, "g_norm"), eps, H)
    o = b.each("mul", gn, b.each("silu", h))                                  # RMSNorm(g) silu(h)
    b.tag = f"L{l}.attn.o_proj"
    a = b.bitlinear(o, P("attn.o_proj"), bl_eps, H)
    r = b.each("add", x, a)                                                   # residual 1
    b.tag = f"L{l}.mlp_norm"
    n2 = b.rmsnorm(r, b.tiles(vecs[f"L{l}.mlp_norm"], nh, "mlp_norm"), eps, H)
    b.tag = f"L{l}.mlp.gate_proj"
    gate = P("mlp.gate_proj")
    q, s = b.bitlinear_inputs(n2, gate, bl_eps, H)
    ni = gate.n_out // 2
    m = []
    for t in range(ni):                                                       # gate and up tile by tile
        g_t = b.bitlinear_row(q, s, gate, t)
        u_t = b.bitlinear_row(q, s, gate, ni + t)
        m.append(b.op("mul", "v", (b.op("silu", "v", (g_t,)), u_t)))          # silu(gate) up
    b.tag = f"L{l}.mlp.down_proj"
    out = b.bitlinear(m, P("mlp.down_proj"), bl_eps, I)
    return b.each("add", r, out)                                              # residual 2


def compile_model(model_or_config, config="rtl2024", number_format: str | None = None,
                  head_on_core: bool = False, **config_overrides) -> tuple[Compiled, DDR | None]:
    """A minimmf model (or just its MMfreeConfig, for timing only) -> (Compiled, DDR image or None).

    ``config`` is a name from config.CONFIGS or a CoreConfig; ``config_overrides`` replace fields (e.g. D).
    """
    cfg = get_config(config, **config_overrides)
    fmt = get_format(number_format or cfg.number_format)
    model = None if isinstance(model_or_config, MMfreeConfig) else model_or_config
    mc = model_or_config if model is None else model.config
    lay, mats, vecs, scal = build_layout(mc, cfg, fmt.name, head_on_core)
    c = Compiled(cfg, fmt.name, mc, [], lay, mats, vecs, scal, head_on_core)
    D, nh = cfg.D, mc.hidden_size // cfg.D
    b = Builder(D, D * fmt.word_bytes)
    eps = b.val("s", scal["eps"], "eps")
    bl_eps = b.val("s", scal["bitlinear_eps"], "bitlinear_eps")
    x = b.tiles(vecs["x_in"], nh, "x_in")
    for l in range(mc.num_hidden_layers):
        x = _block(b, l, x, c, eps, bl_eps)
    if head_on_core:
        b.tag = "head"
        hn = b.rmsnorm(x, b.tiles(vecs["norm"], nh, "norm"), eps, mc.hidden_size)
        for t, y in enumerate(b.bitlinear(hn, mats["lm_head"], bl_eps, mc.hidden_size)):
            b.op("sv", None, (y,), addr=vecs["logits"] + t * b.vec)
    else:
        b.tag = "output"
        for t, xt in enumerate(x):
            b.op("sv", None, (xt,), addr=vecs["x_out"] + t * b.vec)
    program, spill_bytes = allocate(b.ops, b.vec)
    spill = lay.alloc("spill", max(spill_bytes, 4), "activations")
    c.program, c.spill_bytes = relocate_spills(program, spill), spill_bytes
    return c, (None if model is None else build_image(model, c))


# ----------------------------------------------------------------------------- the DDR image

def _bitlinear_codes(p):
    """(q_w int8 (O, I), s_w float32, g) from a float BitLinear dict or a PackedBitLinear."""
    if isinstance(p, PackedBitLinear):
        return unpack_offset(as_offset(p.codes)), np.float32(p.s_w), p.g
    q, s_w = weight_quant(p["W"])
    return q, np.float32(s_w), p["g"]


def build_image(model, c: Compiled) -> DDR:
    """Write weights (2-bit tiles), gains, scales, lower bounds, constants and a zero state into DDR."""
    fmt, D, mc = get_format(c.number_format), c.D, c.model_config
    ddr = DDR(c.ddr_size, c.layout.regions)
    p = model.params

    def vector(addr, x, n_tiles):
        buf = np.zeros(n_tiles * D, np.float32)
        buf[:len(x)] = x
        ddr.write(addr, fmt.encode_vector(buf))

    def put_matrix(name, bl):
        m = c.matrices[name]
        q, s_w, g = _bitlinear_codes(bl)
        if m.rows:                                           # gate / up halves padded separately
            idx = np.array(m.rows)
            q = np.where((idx >= 0)[:, None], q[np.maximum(idx, 0)], 0).astype(np.int8)
        data, no, ni = tile_matrix(q, D)
        assert (no, ni) == (m.n_out, m.n_in), (name, no, ni, m)
        ddr.write(m.weights, data)
        vector(m.gain, g, m.n_in)
        ddr.write(m.s_w, np.array([s_w], np.float32))

    lb = lower_bounds_forward(p["lower_bounds"])[0] if mc.use_lower_bound else None
    nh = mc.hidden_size // D
    for l, layer in enumerate(p["layers"]):
        for name in PROJECTIONS:
            put_matrix(f"L{l}.attn.{name}", layer["attn"][name])
        put_matrix(f"L{l}.mlp.gate_proj", layer["mlp"]["gate_proj"])
        put_matrix(f"L{l}.mlp.down_proj", layer["mlp"]["down_proj"])
        vector(c.vectors[f"L{l}.attn_norm"], layer["attn_norm"], nh)
        vector(c.vectors[f"L{l}.attn.g_norm"], layer["attn"]["g_norm"], nh)
        vector(c.vectors[f"L{l}.mlp_norm"], layer["mlp_norm"], nh)
        if f"L{l}.lb" in c.vectors:
            vector(c.vectors[f"L{l}.lb"], lb[l], nh)
            vector(c.vectors[f"L{l}.one_minus_lb"], 1 - lb[l], nh)     # minimmf's (1 - lb), float32
        vector(c.vectors[f"L{l}.state"], np.zeros(mc.hidden_size, np.float32), nh)
    if c.head_on_core:
        put_matrix("lm_head", p["lm_head"])
        vector(c.vectors["norm"], p["norm"], nh)
    vector(c.vectors["one"], np.ones(D, np.float32), 1)
    ddr.write(c.scalars["eps"], np.array([mc.rms_norm_eps], np.float32))
    ddr.write(c.scalars["bitlinear_eps"], np.array([BITLINEAR_EPS], np.float32))
    return ddr
