"""The functional reference: what a program computes, one instruction after the other, no timing.

Architectural state (``MachineState``): 8 vector registers of D words, 8 float32 scalar registers (s0 reads
1.0), the tmatmul unit's D accumulators (they carry over between ``acc`` / ``hold`` tiles), the RMS unit's
buffer of squares (between ``sqacc`` and ``rstd``), and DDR. The cycle-level core (core.py) must leave
exactly this state behind for any program: ``tests/test_fpga_core.py`` checks it with hypothesis.

The tmatmul here unpacks the whole tile and multiplies at once; the core instead accumulates in the order
the weights stream out of its FIFO. Both call the format's ``tm_accumulate`` (formats.py), whose result does
not depend on how the input rows are chunked.

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .formats import get_format
from .isa import AMAX_ACC, TM_ACC, TM_HOLD, Instruction
from .memory import DDR, SimError
from .packing import unpack_tile


@dataclass
class MachineState:
    D: int
    fmt: object
    ddr: DDR
    v: np.ndarray = None                 # (8, D) words of the format
    s: np.ndarray = None                 # (8,) float32, s[0] = 1.0
    acc: np.ndarray = None               # (D,) int64 tmatmul accumulators
    rmsbuf: list = field(default_factory=list)

    def __post_init__(self):
        self.fmt = get_format(self.fmt)
        if self.v is None:
            self.v = np.zeros((8, self.D), self.fmt.word_dtype)
        if self.s is None:
            self.s = np.zeros(8, np.float32)
            self.s[0] = 1.0
        if self.acc is None:
            self.acc = np.zeros(self.D, np.int64)

    def copy(self) -> "MachineState":
        return MachineState(self.D, self.fmt, self.ddr.copy(), self.v.copy(), self.s.copy(), self.acc.copy(),
                            [b.copy() for b in self.rmsbuf])

    def diff(self, other: "MachineState") -> list[str]:
        """Names of the state components that differ bit for bit (empty: identical)."""
        out = []
        if not np.array_equal(self.v, other.v):
            out.append("vector registers")
        if not np.array_equal(self.s.view(np.int32), other.s.view(np.int32)):
            out.append("scalar registers")
        if not np.array_equal(self.acc, other.acc):
            out.append("tmatmul accumulators")
        a = np.concatenate(self.rmsbuf) if self.rmsbuf else np.zeros(0)
        b = np.concatenate(other.rmsbuf) if other.rmsbuf else np.zeros(0)
        if a.shape != b.shape or not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
            out.append("rms buffer")
        if not self.ddr.same_contents(other.ddr):
            out.append("DDR")
        return out

    # -- memory helpers (shared with the core)

    def vector_bytes(self) -> int:
        return self.D * self.fmt.word_bytes

    def load_vector(self, addr: int) -> np.ndarray:
        return self.ddr.read(addr, self.vector_bytes()).view(self.fmt.word_dtype).copy()

    def store_vector(self, addr: int, words: np.ndarray) -> None:
        self.ddr.write(addr, np.ascontiguousarray(words, self.fmt.word_dtype))

    def load_scalar(self, addr: int) -> np.float32:
        return self.ddr.read(addr, 4).view(np.float32)[0]

    def store_scalar(self, addr: int, x) -> None:
        self.ddr.write(addr, np.array([x], np.float32))

    def set_s(self, i: int, x) -> None:
        if i:                                             # s0 is the constant 1.0
            self.s[i] = np.float32(x)


def execute_simple(ins: Instruction, st: MachineState) -> None:
    """Every instruction except the memory ones and tmatmul (those need the port): update ``st``."""
    f, n, v, s = st.fmt, ins.name, st.v, st.s
    if n in ("add", "sub", "mul", "div"):
        v[ins.vy] = getattr(f, n)(v[ins.va], v[ins.vb])
    elif n in ("exp", "sig", "silu"):
        v[ins.vy] = getattr(f, n)(v[ins.va])
    elif n == "mulsv":
        v[ins.vy] = f.mulsv(v[ins.va], s[ins.vb])
    elif n == "norm":
        v[ins.va] = f.norm(v[ins.va])
    elif n == "sqacc":
        k = ins.addr or st.D
        if k > st.D:
            raise SimError(f"sqacc length {k} exceeds D = {st.D}")
        st.rmsbuf.append(f.squares(v[ins.va], k))
    elif n == "rstd":
        if not st.rmsbuf:
            raise SimError("rstd with an empty RMS buffer (no sqacc before it)")
        st.set_s(ins.vy, f.rstd(np.concatenate(st.rmsbuf), s[ins.va]))
        st.rmsbuf = []
    elif n == "amax":
        m = f.amax(v[ins.va])
        st.set_s(ins.vy, np.maximum(m, s[ins.vy]) if ins.ls & AMAX_ACC else m)
    elif n == "quant":
        v[ins.vy] = f.quant(v[ins.va], s[ins.vb])
    elif n == "smul":
        st.set_s(ins.vy, np.float32(s[ins.va] * s[ins.vb]))
    elif n == "qscale":
        st.set_s(ins.vy, f.qscale(s[ins.va]))
    elif n == "nop":
        pass
    else:
        raise AssertionError(n)


def execute_memory(ins: Instruction, st: MachineState) -> None:
    """ldv / sv / lds / sts."""
    if ins.name == "ldv":
        st.v[ins.vy] = st.load_vector(ins.addr)
    elif ins.name == "sv":
        st.store_vector(ins.addr, st.v[ins.va])
    elif ins.name == "lds":
        st.set_s(ins.vy, st.load_scalar(ins.addr))
    elif ins.name == "sts":
        st.store_scalar(ins.addr, st.s[ins.va])


def tile_bytes(D: int) -> int:
    return D * D // 4


def finish_tmatmul(ins: Instruction, st: MachineState) -> None:
    """The copy-out phase: write acc / s_B to vY unless ``hold``."""
    if not ins.ls & TM_HOLD:
        st.v[ins.vy] = st.fmt.tm_output(st.acc, st.s[ins.vb])


def execute(ins: Instruction, st: MachineState) -> None:
    """One instruction of the functional model."""
    if ins.name in ("ldv", "sv", "lds", "sts"):
        execute_memory(ins, st)
    elif ins.name == "tmatmul":
        w_rows = unpack_tile(st.ddr.read(ins.addr, tile_bytes(st.D)), st.D)      # (D_in, D_out)
        acc = st.acc if ins.ls & TM_ACC else np.zeros(st.D, np.int64)
        st.acc = st.fmt.tm_accumulate(acc, w_rows, st.fmt.tm_codes(st.v[ins.va]))
        finish_tmatmul(ins, st)
    else:
        execute_simple(ins, st)


def run_functional(program, st: MachineState) -> MachineState:
    """Run ``program`` (a list of Instruction) on ``st`` in place, in program order. Returns ``st``."""
    for ins in program:
        execute(ins, st)
    return st
