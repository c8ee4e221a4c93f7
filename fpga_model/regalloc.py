"""Register allocation for straight-line programs: 8 vector and 7 scalar registers, spills into DDR.

The compiler (compiler.py) writes the block as operations on *values* (``Val``), each defined once and
never changed. This pass maps values to physical registers, in program order:

- before an operation, every value it reads must sit in a register: if not, load it (``ldv`` / ``lds``)
  from its home in DDR (constants, inputs and the recurrent state have a home from the start; a computed
  value gets one when it is spilled);
- a value whose last use is this operation frees its register, so the result may reuse it (in place);
- when no register is free, evict the resident value used furthest in the future (Belady's rule: optimal
  for straight-line code). If that value has no home yet, store it to a spill slot first (``sv`` / ``sts``);
  constants are simply dropped and reloaded later;
- among free registers, take the one idle longest: a register freed a moment ago may still be read by an
  instruction in flight, and the 2024 scoreboard would stall a new writer ("register in use").

Taught in chapter 12 (``chapters/12-fpga-compiling-and-stepping.md``).
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

from .isa import Instruction

ONE = "s0"      # the scalar constant 1.0 (register s0), usable as an operand without allocation


@dataclass(eq=False)
class Val:
    kind: str                  # "v" (vector) or "s" (scalar)
    id: int
    home: int | None = None    # DDR address that holds the value
    name: str = ""

    def __repr__(self):
        return f"{self.kind}%{self.id}{'(' + self.name + ')' if self.name else ''}"


@dataclass(eq=False)
class Op:
    """One operation on values. Field use follows the mnemonic (see isa.py):
    srcs = (a,) / (a, b) vectors; mulsv / quant: (a, scalar); tmatmul: (x, scale); sqacc: (a,);
    rstd: (eps,); amax: (a,) or (a, previous max) with ``tie``; smul: (a, b); qscale: (a,); sv/sts: (a,)."""
    name: str
    dst: Val | None
    srcs: tuple
    addr: int = 0
    ls: int = 0
    tag: str = ""
    tie: int | None = None     # the result must use the register of srcs[tie] (amax ... acc)


@dataclass
class SpillArea:
    """Spill slots, recycled when a spilled value dies. ``alloc`` returns an offset inside the area."""
    vector_bytes: int
    size: int = 0
    free: dict = field(default_factory=lambda: defaultdict(list))

    def alloc(self, kind: str) -> int:
        n = self.vector_bytes if kind == "v" else 4
        if self.free[n]:
            return self.free[n].pop()
        off = self.size
        self.size += -(-n // 64) * 64
        return off

    def release(self, kind: str, off: int) -> None:
        self.free[self.vector_bytes if kind == "v" else 4].append(off)


SPILL_BASE = 1 << 46           # placeholder base of the spill area; relocated by ``relocate_spills``


def allocate(ops: list[Op], vector_bytes: int, n_vregs: int = 8, n_sregs: int = 8):
    """Ops on values -> Instructions on registers. Returns (instructions, spill area bytes).

    Spill addresses are emitted as SPILL_BASE + offset; ``relocate_spills`` moves them to the real area.
    """
    uses = defaultdict(deque)
    for i, op in enumerate(ops):
        for v in op.srcs:
            if isinstance(v, Val):
                uses[v.id].append(i)
    regs = {"v": list(range(n_vregs)), "s": list(range(1, n_sregs))}
    holder = {"v": [None] * n_vregs, "s": [None] * n_sregs}
    idle_since = {"v": [-1] * n_vregs, "s": [-1] * n_sregs}
    where, home, spilled = {}, {}, {}
    spill = SpillArea(vector_bytes)
    out = []

    def emit(name, tag, **f):
        out.append(Instruction(name, tag=tag, **f))

    def free_reg(v: Val, i: int) -> None:
        r = where.pop(v.id)
        holder[v.kind][r] = None
        idle_since[v.kind][r] = i

    def get_reg(kind: str, protect: set, i: int, tag: str) -> int:
        free = [r for r in regs[kind] if holder[kind][r] is None]
        if free:
            return min(free, key=lambda r: idle_since[kind][r])
        cands = [holder[kind][r] for r in regs[kind] if holder[kind][r].id not in protect]
        if not cands:
            raise ValueError(f"register allocation failed at {ops[i].name} ({tag}): every {kind}-register "
                             f"holds an operand of the same instruction")
        victim = max(cands, key=lambda v: uses[v.id][0] if uses[v.id] else 1 << 60)
        r = where[victim.id]
        if victim.id not in home:                              # computed value: spill it
            off = spill.alloc(kind)
            home[victim.id] = SPILL_BASE + off
            spilled[victim.id] = off
            emit("sv" if kind == "v" else "sts", tag + ".spill", va=r, addr=SPILL_BASE + off)
        free_reg(victim, i)
        return r

    for i, op in enumerate(ops):
        srcs = [v for v in op.srcs if isinstance(v, Val)]
        protect = {v.id for v in srcs}
        for v in srcs:                                         # 1. operands into registers
            if v.id not in where:
                if v.id not in home:
                    if v.home is None:
                        raise ValueError(f"{op.name} ({op.tag}) reads {v} before it is defined")
                    home[v.id] = v.home
                r = get_reg(v.kind, protect, i, op.tag)
                emit("ldv" if v.kind == "v" else "lds", op.tag + ".load", vy=r, addr=home[v.id])
                where[v.id] = r
                holder[v.kind][r] = v
        phys = {v.id: where[v.id] for v in srcs}
        for v in srcs:                                         # 2. last uses free their registers
            uses[v.id].popleft()
        for v in srcs:
            if not uses[v.id] and v.id in where:
                free_reg(v, i)
                if v.id in spilled:
                    spill.release(v.kind, spilled.pop(v.id))
        dst_r = 0
        if op.dst is not None:                                 # 3. the result
            d = op.dst
            if op.tie is not None:
                dst_r = phys[op.srcs[op.tie].id]
                if holder[d.kind][dst_r] is not None:
                    raise ValueError(f"{op.name} ({op.tag}): tied operand is still live")
            else:
                dst_r = get_reg(d.kind, {v.id for v in srcs if v.id in where}, i, op.tag)
            if d.home is not None:
                home[d.id] = d.home
            where[d.id] = dst_r
            holder[d.kind][dst_r] = d
        out.append(_instruction(op, phys, dst_r))
        if op.name in ("sv", "sts"):                           # 4. a store makes old copies stale
            for vid, a in list(home.items()):
                if a == op.addr and vid not in phys:
                    del home[vid]
        if op.dst is not None and not uses[op.dst.id]:
            free_reg(op.dst, i)
    return out, spill.size


def _instruction(op: Op, phys: dict, dst_r: int) -> Instruction:
    s = op.srcs
    r = lambda k: phys[s[k].id] if isinstance(s[k], Val) else 0     # noqa: E731  (s0 for ONE)
    n = op.name
    if n in ("add", "sub", "mul", "div", "mulsv", "quant", "smul"):
        return Instruction(n, vy=dst_r, va=r(0), vb=r(1), tag=op.tag)
    if n in ("exp", "sig", "silu", "qscale", "rstd"):
        return Instruction(n, vy=dst_r, va=r(0), tag=op.tag)
    if n == "tmatmul":
        return Instruction(n, vy=dst_r, va=r(0), vb=r(1), ls=op.ls, addr=op.addr, tag=op.tag)
    if n == "sqacc":
        return Instruction(n, va=r(0), addr=op.addr, tag=op.tag)
    if n == "amax":
        return Instruction(n, vy=dst_r, va=r(0), ls=op.ls, tag=op.tag)
    if n == "norm":
        return Instruction(n, vy=dst_r, va=dst_r, tag=op.tag)
    if n in ("sv", "sts"):
        return Instruction(n, va=r(0), addr=op.addr, tag=op.tag)
    raise AssertionError(n)


def relocate_spills(program: list[Instruction], base: int) -> list[Instruction]:
    """Replace the SPILL_BASE placeholder by the spill area's real address."""
    import dataclasses
    return [dataclasses.replace(i, addr=i.addr - SPILL_BASE + base) if i.addr >= SPILL_BASE else i
            for i in program]
