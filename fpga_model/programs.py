"""The programs the paper's 43 ms was measured on, and a timing-only run of a model's token program.

The 2024 core was profiled on a 29-instruction program, an RWKV-4-style time-mix with three D x D ternary
projections: 7 ldv, 3 sv, 3 tmatmul, 3 norm, 6 mul, 4 add, 1 div, 1 exp, 1 sig (FPGA.md). Two versions live here:

- ``PAPER_2024``: the program itself, as the 2024 repository held it in ``tmi/process.tmi`` at commit
  65891b1 (``Mattiwos/ternary_matmul_afu``), written out in this project's assembly. Which program the paper
  profiled is not stated anywhere; this one is the most likely (an inference: it has the stated mix and 29
  instructions, and the design's instruction memory holds exactly 29). At the repository's HEAD (b0345e7) the
  file has 26 instructions: commit 71dd7f2 removed the three ``tmatmul``. The 2024 file gives every address
  as 0; here each operand has its own region (timing does not depend on the addresses).
- ``RWKV_2024``: an earlier reconstruction with the same instruction mix and dependency shape, kept for
  comparison (on the corrected core it is within 0.1 % of ``PAPER_2024`` at D = 512, L = 12).

Taught in chapter 13 (``chapters/13-fpga-where-the-cycles-go.md``).
"""
from __future__ import annotations

import re
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

# tmi/process.tmi at 65891b1, one instruction per line, in order; the comments are this project's reading.
PAPER_2024 = """
ldv v0, X            ; x
norm v0              ; x / rms(x)
tmatmul v6, v0, WK   ; k
ldv v2, EM           ; e^(-w) style decay factor
exp v6, v6           ; e^k
tmatmul v5, v0, WV   ; v
mul v2, v2, v6       ; decay * e^k
mul v1, v2, v5       ; decay * e^k * v
ldv v0, B            ; denominator state
add v2, v2, v0       ; denominator
ldv v4, A            ; numerator state
add v1, v1, v4       ; numerator
ldv v0, X            ; x again
norm v0
div v1, v1, v2       ; wkv = numerator / denominator
tmatmul v2, v0, WQ   ; receptance
sig v2, v2           ; sigma(r)
mul v2, v2, v1       ; sigma(r) * wkv
norm v2
ldv v1, ENW          ; state decay
sv v2, O             ; output
mul v5, v6, v5       ; e^k * v
mul v4, v1, v4       ; decay * A
ldv v0, B
add v4, v4, v0       ; A for the next token
sv v4, A
mul v0, v1, v0       ; decay * B
add v0, v0, v6       ; B for the next token
sv v0, B
"""
PAPER_VECTORS = ("X", "EM", "B", "A", "ENW", "O")
PAPER_MATRICES = ("WK", "WV", "WQ")


def _place(text: str, D: int, word_bytes: int, matrices, vectors, address_bits: int | None):
    """Give every named operand its region; substitute the addresses. Returns (text, addr, regions, top)."""
    vec, tile = D * word_bytes, D * D // 4
    addr, regions, top = {}, [], 0
    for name in matrices:
        addr[name], top = top, top + tile
        regions.append(Region(addr[name], top, "weights", name))
    for name in vectors:
        addr[name], top = top, top + vec
        regions.append(Region(addr[name], top, "state" if name in ("A", "B") else "activations", name))
    mask = (1 << address_bits) - 1 if address_bits else -1
    for name, a in sorted(addr.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf",\s*{name}\b", f", {a & mask:#x}", text)
    return text, addr, regions, top


def paper_2024_program(D: int, address_bits: int | None = None):
    """The paper's 29-instruction program at vector length D (a list of Instruction, timing only).

    ``address_bits=16`` wraps the addresses into the 2024 design's 16-bit address field (as ``cosim`` needs).
    """
    text, *_ = _place(PAPER_2024, D, 1, PAPER_MATRICES, PAPER_VECTORS, address_bits)
    return assemble(text)


def time_paper_2024(config: CoreConfig | str = "rtl2024", **overrides) -> Stats:
    """Timing-only run of the paper's 29-instruction program (``PAPER_2024``)."""
    cfg = get_config(config, **overrides)
    text, _, regions, top = _place(PAPER_2024, cfg.D, 1, PAPER_MATRICES, PAPER_VECTORS, None)
    return Core(cfg, assemble(text), ddr_size=top, regions=regions).run()
RWKV_MATRICES = ("WK", "WV", "WR")


def rwkv_2024(D: int, seed: int | None = None, number_format: str = "q4.3"):
    """The reconstructed 29-instruction program at vector length D, with its DDR. Returns (program, MachineState).

    With ``seed`` the DDR holds random weights and inputs (for stepping through it); otherwise only the
    layout exists and the core can run timing only (``Core(config, program, ddr_size=..., regions=...)``).
    """
    fmt = get_format(number_format)
    text, addr, regions, top = _place(RWKV_2024, D, fmt.word_bytes, RWKV_MATRICES, RWKV_VECTORS, None)
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
    """Timing-only run of the reconstruction ``RWKV_2024``."""
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
