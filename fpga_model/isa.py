"""The instruction set: the 2024 core's ten instructions, the extensions the MLGRU + GLU block needs,
one 64-bit word per instruction, and a text assembler / disassembler.

Word layout, most significant bit first (the 2024 RTL's ``instruction_t``, address widened to fill 64 bits):

    fu[3] | op[3] | v_a[3] | v_b[3] | v_y[3] | ls[2] | ddr_address[47]

``fu`` picks the functional unit (2024 codes: 1 load/store, 2 row-wise, 3 tmatmul, 4 rms; 0 is a no-op),
``op`` the row-wise / rms operation, ``ls`` the load/store operation (``ldv`` 00, ``sv`` 01).

2024 instructions (assembly form; D = the core's vector length):

    ldv  vY, ADDR            vY <- D words from DDR
    sv   vA, ADDR            DDR <- vA
    add|sub|mul|div vY, vA, vB   element-wise, in the number format (see formats.py)
    exp|sig vY, vA           element-wise lookup
    norm vX                  vX <- RMS-normalised vX, in place, no gain
    tmatmul vY, vA, ADDR     vY <- W vA, W a D x D ternary tile streamed from DDR (2 bits per weight)

Extensions (not in the 2024 RTL; ``EXTENSIONS`` lists them): 8 scalar registers s0..s7 (s0 reads 1.0),

    lds  sY, ADDR            sY <- float32 from DDR                      (fu 1, ls 10)
    sts  sA, ADDR            DDR <- sA                                   (fu 1, ls 11)
    silu vY, vA              y = a sigma(a)                              (fu 2, op 6)
    mulsv vY, vA, sB         y = a * sB (vector times scalar)            (fu 2, op 7)
    tmatmul vY, vA, ADDR, sB[, acc][, hold]                              (fu 3; v_b = sB, ls = hold acc)
                             acc: add to the unit's accumulators instead of clearing them (tiled inputs);
                             hold: keep the accumulators, write nothing (more input tiles follow);
                             sB: the copy-out divides the accumulators by sB (s0 = 1.0: the 2024 behaviour)
    sqacc vA[, N]            append the squares of vA[:N] to the RMS unit's buffer  (fu 4, op 1; N in ADDR)
    rstd sY, sA              sY = 1 / sqrt(mean(buffer) + sA); clear the buffer     (fu 4, op 2)
    amax sY, vA[, acc]       sY = max|vA| (acc: max(sY, max|vA|))                   (fu 4, op 3; ls = acc)
    quant vY, vA, sB         per-token absmax int8 codes of vA with scale sB        (fu 5, op 0)
    smul sY, sA, sB          scalar multiply                                        (fu 6, op 0)
    qscale sY, sA            sY = 127 / max(sA, 1e-5), the absmax scale             (fu 6, op 1)

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

ADDR_BITS = 47
ADDR_MASK = (1 << ADDR_BITS) - 1
NUM_VREGS = 8
NUM_SREGS = 8

# functional units: code -> name (0-4 are the 2024 RTL's fu_t; 5 and 6 are extensions)
FU_NOP, FU_LOADSTORE, FU_ROWWISE, FU_TMATMUL, FU_RMS, FU_QUANT, FU_SCALAR = range(7)
UNIT_NAMES = {FU_LOADSTORE: "loadstore", FU_ROWWISE: "rowwise", FU_TMATMUL: "tmatmul", FU_RMS: "rms",
              FU_QUANT: "quant", FU_SCALAR: "scalar"}
UNITS = tuple(UNIT_NAMES.values())


@dataclass(frozen=True)
class OpSpec:
    """One mnemonic: its unit, op / ls codes and operand syntax.

    ``syntax`` letters, in assembly order: Y = vector destination (v_y), A = vector source (v_a),
    B = vector source (v_b), y / a / b = the same fields as scalar registers, M = address, N = length
    (in the address field), X = the in-place vector of ``norm`` (v_a = v_y).
    """
    fu: int
    op: int = 0
    ls: int = 0
    syntax: str = ""
    extension: bool = False


OPS = {
    "nop": OpSpec(FU_NOP),
    "ldv": OpSpec(FU_LOADSTORE, ls=0, syntax="YM"),
    "sv": OpSpec(FU_LOADSTORE, ls=1, syntax="AM"),
    "lds": OpSpec(FU_LOADSTORE, ls=2, syntax="yM", extension=True),
    "sts": OpSpec(FU_LOADSTORE, ls=3, syntax="aM", extension=True),
    "add": OpSpec(FU_ROWWISE, 0, syntax="YAB"),
    "sub": OpSpec(FU_ROWWISE, 1, syntax="YAB"),
    "mul": OpSpec(FU_ROWWISE, 2, syntax="YAB"),
    "div": OpSpec(FU_ROWWISE, 3, syntax="YAB"),
    "exp": OpSpec(FU_ROWWISE, 4, syntax="YA"),
    "sig": OpSpec(FU_ROWWISE, 5, syntax="YA"),
    "silu": OpSpec(FU_ROWWISE, 6, syntax="YA", extension=True),
    "mulsv": OpSpec(FU_ROWWISE, 7, syntax="YAb", extension=True),
    "tmatmul": OpSpec(FU_TMATMUL, syntax="YAM"),          # + optional sB, acc, hold (extension)
    "norm": OpSpec(FU_RMS, 0, syntax="X"),
    "sqacc": OpSpec(FU_RMS, 1, syntax="AN", extension=True),
    "rstd": OpSpec(FU_RMS, 2, syntax="ya", extension=True),
    "amax": OpSpec(FU_RMS, 3, syntax="yA", extension=True),  # + optional acc
    "quant": OpSpec(FU_QUANT, 0, syntax="YAb", extension=True),
    "smul": OpSpec(FU_SCALAR, 0, syntax="yab", extension=True),
    "qscale": OpSpec(FU_SCALAR, 1, syntax="ya", extension=True),
}
EXTENSIONS = tuple(n for n, s in OPS.items() if s.extension) + ("tmatmul with sB / acc / hold",)
_BY_CODE = {(s.fu, s.op if s.fu != FU_LOADSTORE else 0, s.ls if s.fu == FU_LOADSTORE else 0): n
            for n, s in OPS.items() if n != "tmatmul"}

TM_ACC = 1    # ls bit 0 of tmatmul: accumulate onto the unit's accumulators
TM_HOLD = 2   # ls bit 1 of tmatmul: keep the accumulators, write no result
AMAX_ACC = 1  # ls bit 0 of amax


class ISAError(ValueError):
    """A bad instruction: unknown mnemonic or opcode, register out of range, malformed field."""


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction. ``tag`` (e.g. "L0.attn.f_proj") is for reports; it is not encoded."""
    name: str
    vy: int = 0
    va: int = 0
    vb: int = 0
    ls: int = 0
    addr: int = 0
    tag: str = field(default="", compare=False)

    @property
    def spec(self) -> OpSpec:
        return OPS[self.name]

    @property
    def unit(self) -> str | None:
        return UNIT_NAMES.get(self.spec.fu)

    @property
    def is_extension(self) -> bool:
        return self.spec.extension or (self.name == "tmatmul" and (self.vb != 0 or self.ls != 0))

    def reads(self) -> set:
        """Registers read: ('v', i) or ('s', i). s0 is a constant and never listed."""
        return _regs(self)[0]

    def writes(self) -> set:
        return _regs(self)[1]

    def text(self) -> str:
        return disassemble_one(self)


def _regs(ins: Instruction):
    n, r, w = ins.name, set(), set()
    v = lambda i: ("v", i)                              # noqa: E731
    s = lambda i: ("s", i) if i else None               # noqa: E731
    if n == "ldv":
        w.add(v(ins.vy))
    elif n == "sv":
        r.add(v(ins.va))
    elif n == "lds":
        w.add(s(ins.vy))
    elif n == "sts":
        r.add(s(ins.va))
    elif n in ("add", "sub", "mul", "div"):
        r |= {v(ins.va), v(ins.vb)}
        w.add(v(ins.vy))
    elif n in ("exp", "sig", "silu"):
        r.add(v(ins.va))
        w.add(v(ins.vy))
    elif n in ("mulsv", "quant"):
        r |= {v(ins.va), s(ins.vb)}
        w.add(v(ins.vy))
    elif n == "tmatmul":
        r |= {v(ins.va), s(ins.vb)}
        if not ins.ls & TM_HOLD:
            w.add(v(ins.vy))
    elif n == "norm":
        r.add(v(ins.va))
        w.add(v(ins.va))
    elif n == "sqacc":
        r.add(v(ins.va))
    elif n == "rstd":
        r.add(s(ins.va))
        w.add(s(ins.vy))
    elif n == "amax":
        r.add(v(ins.va))
        if ins.ls & AMAX_ACC:
            r.add(s(ins.vy))
        w.add(s(ins.vy))
    elif n == "smul":
        r |= {s(ins.va), s(ins.vb)}
        w.add(s(ins.vy))
    elif n == "qscale":
        r.add(s(ins.va))
        w.add(s(ins.vy))
    r.discard(None)
    w.discard(None)
    return r, w


# ----------------------------------------------------------------------------- 64-bit words

def encode(ins: Instruction) -> int:
    """Instruction -> 64-bit word (see the module docstring for the layout)."""
    check(ins)
    s = ins.spec
    op = s.op if s.fu != FU_LOADSTORE else 0
    ls = s.ls if s.fu == FU_LOADSTORE else ins.ls
    return ((s.fu << 61) | (op << 58) | (ins.va << 55) | (ins.vb << 52) | (ins.vy << 49) | (ls << 47)
            | ins.addr)


def decode(word: int) -> Instruction:
    """64-bit word -> Instruction; unknown opcodes and non-zero unused fields raise ISAError."""
    if not 0 <= word < 1 << 64:
        raise ISAError(f"instruction word {word:#x} does not fit in 64 bits")
    fu, op = word >> 61, (word >> 58) & 7
    va, vb, vy = (word >> 55) & 7, (word >> 52) & 7, (word >> 49) & 7
    ls, addr = (word >> 47) & 3, word & ADDR_MASK
    if fu == FU_TMATMUL:
        name = "tmatmul" if op == 0 else None
    else:
        name = _BY_CODE.get((fu, op if fu != FU_LOADSTORE else 0, ls if fu == FU_LOADSTORE else 0))
        if fu == FU_LOADSTORE and op != 0:
            name = None
    if name is None:
        raise ISAError(f"unknown opcode in word {word:#018x}: fu={fu} op={op} ls={ls}")
    ins = Instruction(name, vy=vy, va=va, vb=vb, ls=0 if fu == FU_LOADSTORE else ls, addr=addr)
    check(ins)
    return ins


_USED = {"Y": "vy", "y": "vy", "A": "va", "a": "va", "B": "vb", "b": "vb", "M": "addr", "N": "addr",
         "X": "va"}


def check(ins: Instruction) -> None:
    """Register indices in range, fields the mnemonic does not use equal to zero."""
    if ins.name not in OPS:
        raise ISAError(f"unknown instruction {ins.name!r}; known: {', '.join(OPS)}")
    for f in ("vy", "va", "vb"):
        val = getattr(ins, f)
        if not isinstance(val, int) or not 0 <= val < NUM_VREGS:
            raise ISAError(f"{ins.name}: register field {f}={val!r} out of range 0..{NUM_VREGS - 1}")
    if not isinstance(ins.addr, int) or not 0 <= ins.addr <= ADDR_MASK:
        raise ISAError(f"{ins.name}: address {ins.addr!r} does not fit in {ADDR_BITS} bits")
    if not 0 <= ins.ls <= 3:
        raise ISAError(f"{ins.name}: ls field {ins.ls} out of range 0..3")
    used = {_USED[c] for c in ins.spec.syntax}
    if ins.name == "norm":
        used.add("vy")
        if ins.vy != ins.va:
            raise ISAError(f"norm works in place: v_y ({ins.vy}) must equal v_a ({ins.va})")
    if ins.name == "tmatmul":
        used |= {"vb", "ls"}
    if ins.name == "amax":
        used.add("ls")
        if ins.ls > AMAX_ACC:
            raise ISAError(f"amax: ls field must be 0 or 1, got {ins.ls}")
    for f in ("vy", "va", "vb", "addr", "ls"):
        if f not in used and getattr(ins, f) != 0:
            raise ISAError(f"{ins.name}: field {f} is unused and must be 0, got {getattr(ins, f)}")


# ----------------------------------------------------------------------------- text

def disassemble_one(ins: Instruction) -> str:
    """Canonical assembly text of one instruction (what ``assemble`` reads back)."""
    ops = []
    for c in ins.spec.syntax:
        f = _USED[c]
        if c in "YABX":
            ops.append(f"v{getattr(ins, f)}")
        elif c in "yab":
            ops.append(f"s{getattr(ins, f)}")
        elif c == "M":
            ops.append(f"{ins.addr:#x}")
        elif c == "N":
            if ins.addr:
                ops.append(str(ins.addr))
    if ins.name == "tmatmul" and (ins.vb or ins.ls):
        ops.append(f"s{ins.vb}")
        if ins.ls & TM_ACC:
            ops.append("acc")
        if ins.ls & TM_HOLD:
            ops.append("hold")
    if ins.name == "amax" and ins.ls & AMAX_ACC:
        ops.append("acc")
    return ins.name + (" " + ", ".join(ops) if ops else "")


def disassemble(program) -> str:
    """Program (list of Instruction or of 64-bit words) -> assembly text, one instruction per line."""
    return "\n".join(disassemble_one(decode(p) if isinstance(p, int) else p) for p in program)


def _reg(tok: str, kind: str, line: str) -> int:
    m = re.fullmatch(kind + r"(\d+)", tok)
    if not m:
        raise ISAError(f"expected a {'vector' if kind == 'v' else 'scalar'} register ({kind}0..{kind}7), "
                       f"got {tok!r} in {line!r}")
    i = int(m.group(1))
    if i >= (NUM_VREGS if kind == "v" else NUM_SREGS):
        raise ISAError(f"register {tok} out of range ({kind}0..{kind}7) in {line!r}")
    return i


def _int(tok: str, line: str) -> int:
    try:
        return int(tok, 0)
    except ValueError:
        raise ISAError(f"expected a number, got {tok!r} in {line!r}") from None


def assemble_one(line: str, tag: str = "") -> Instruction:
    """One line of assembly -> Instruction. Comments start with ';' or '#'."""
    src = line
    line = re.split(r"[;#]", line, maxsplit=1)[0].strip()
    if not line:
        raise ISAError("empty line")
    name, *rest = line.split(None, 1)              # any whitespace after the mnemonic (spaces or tabs)
    name, rest = name.lower(), rest[0] if rest else ""
    if name not in OPS:
        raise ISAError(f"unknown instruction {name!r} in {src!r}; known: {', '.join(OPS)}")
    toks = [t.strip() for t in rest.split(",")] if rest.strip() else []
    spec = OPS[name]
    f = {"vy": 0, "va": 0, "vb": 0, "ls": 0, "addr": 0}
    syntax = spec.syntax
    if name == "sqacc" and len(toks) == 1:
        syntax = "A"
    if len(toks) < len(syntax):
        raise ISAError(f"{name} takes operands {syntax!r}, got {len(toks)} in {src!r}")
    for c, tok in zip(syntax, toks):
        if c in "YABX":
            f[_USED[c]] = _reg(tok, "v", src)
        elif c in "yab":
            f[_USED[c]] = _reg(tok, "s", src)
        else:
            f["addr"] = _int(tok, src)
    if name == "norm":
        f["vy"] = f["va"]
    extra = toks[len(syntax):]
    if name == "tmatmul" and extra:
        f["vb"] = _reg(extra[0], "s", src)
        for flag in extra[1:]:
            if flag not in ("acc", "hold"):
                raise ISAError(f"tmatmul flags are 'acc' and 'hold', got {flag!r} in {src!r}")
            f["ls"] |= TM_ACC if flag == "acc" else TM_HOLD
    elif name == "amax" and extra == ["acc"]:
        f["ls"] = AMAX_ACC
    elif extra:
        raise ISAError(f"too many operands for {name} in {src!r}")
    ins = Instruction(name, tag=tag, **f)
    check(ins)
    return ins


def assemble(text: str) -> list[Instruction]:
    """Assembly text -> list of Instruction (blank lines and comments skipped)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if re.split(r"[;#]", line, maxsplit=1)[0].strip():
            try:
                out.append(assemble_one(line))
            except ISAError as e:
                raise ISAError(f"line {n}: {e}") from None
    return out


def to_words(program) -> list[int]:
    return [encode(i) for i in program]


def from_words(words) -> list[Instruction]:
    return [decode(int(w)) for w in words]
