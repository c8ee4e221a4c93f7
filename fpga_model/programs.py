"""The program shape the paper's 43 ms was measured on, and a timing-only run of a model's token program.

The 2024 core was profiled on a 29-instruction program, an RWKV-4-style time-mix with three D x D ternary
projections: 7 ldv, 3 sv, 3 tmatmul, 3 norm, 6 mul, 4 add, 1 div, 1 exp, 1 sig (FPGA.md). ``RWKV_2024``
below has exactly that instruction mix and that dependency shape (token shift, three projections, the
WKV numerator / denominator, state update); it is a reconstruction with the same counts, not the original
file, and only its timing matters here.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .compiler import compile_model
from .config import CoreConfig, get_config
from .core import Core, Stats
from .formats import get_format
from .functional import MachineState
from .isa import assemble
from .memory import DDR, Region
from .packing import pack_tile

RWKV_2024 = """
ldv v0, X            ; x
norm v0              ; x / rms(x)
ldv v1, MU           ; mu
mul v0, v0, v1       ; mu x
ldv v2, XP           ; (1 - mu) x_prev, from the host
add v0, v0, v2       ; token shift
tmatmul v1, v0, WK   ; k
tmatmul v2, v0, WV   ; v
tmatmul v3, v0, WR   ; r
norm v1
ldv v4, U
add v4, v4, v1       ; u + k
exp v4, v4           ; e^(u + k)
ldv v5, A            ; numerator state
ldv v6, B            ; denominator state
mul v7, v4, v2       ; e^(u + k) v
add v5, v5, v7
add v6, v6, v4
div v7, v5, v6       ; wkv
sig v3, v3           ; sigma(r)
mul v7, v7, v3
mul v7, v7, v0
norm v7
sv v7, O
ldv v4, W            ; decay
mul v5, v5, v4
mul v6, v6, v4
sv v5, A
sv v6, B
"""
RWKV_VECTORS = ("X", "MU", "XP", "U", "A", "B", "W", "O")
RWKV_MATRICES = ("WK", "WV", "WR")


def rwkv_2024(D: int, seed: int | None = None, number_format: str = "q4.3"):
    """The 29-instruction program at vector length D, with its DDR. Returns (program, MachineState).

    With ``seed`` the DDR holds random weights and inputs (for stepping through it); otherwise only the
    layout exists and the core can run timing only (``Core(config, program, ddr_size=..., regions=...)``).
    """
    fmt = get_format(number_format)
    vec, tile = D * fmt.word_bytes, D * D // 4
    addr, regions, top = {}, [], 0
    for name in RWKV_MATRICES:
        addr[name], top = top, top + tile
        regions.append(Region(addr[name], top, "weights", name))
    for name in RWKV_VECTORS:
        addr[name], top = top, top + vec
        regions.append(Region(addr[name], top, "state" if name in "AB" else "activations", name))
    text = RWKV_2024
    for name, a in sorted(addr.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(f", {name} ", f", {a:#x} ").replace(f", {name}\n", f", {a:#x}\n")
    program = assemble(text)
    ddr = DDR(top, regions)
    if seed is not None:
        rng = np.random.default_rng(seed)
        for name in RWKV_MATRICES:
            ddr.write(addr[name], pack_tile(rng.integers(-1, 2, (D, D)).astype(np.int8)))
        for name in RWKV_VECTORS[:-1]:
            ddr.write(addr[name], fmt.encode_vector(rng.standard_normal(D).astype(np.float32)))
    return program, MachineState(D, fmt, ddr)


def instruction_mix(program) -> dict:
    return dict(Counter(i.name for i in program))


def time_rwkv_2024(config: CoreConfig | str = "rtl2024", **overrides) -> Stats:
    """Timing-only run of the 29-instruction program."""
    cfg = get_config(config, **overrides)
    program, st = rwkv_2024(cfg.D)
    return Core(cfg, program, ddr_size=st.ddr.size, regions=st.ddr.regions).run()


def time_token(model_config, config: CoreConfig | str = "rtl2024", number_format: str | None = None,
               head_on_core: bool = True, **overrides):
    """Timing-only run of one token of a model given by its MMfreeConfig. Returns (stats, compiled)."""
    compiled, _ = compile_model(model_config, config, number_format, head_on_core, **overrides)
    core = Core(compiled.config, compiled.program, ddr_size=compiled.ddr_size, regions=compiled.layout.regions,
                number_format=compiled.number_format)
    return core.run(), compiled
