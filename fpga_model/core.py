"""The cycle-level core: in-order issue, the 2024 scoreboard, concurrent units, a memory port.

Cycle-exact against the 2024 RTL (``Mattiwos/ternary_matmul_afu``, ``rtl/`` at b0345e7), checked instruction by
instruction under Verilator (``python -m fpga_model cosim``; recorded runs in ``data/rtl_traces.json`` pin it
in the test suite). File and line references below are to that ``rtl/`` folder.

Per cycle c (``matrix_unit.sv``):

1. Units whose last busy cycle was c - 1 are idle again: their results are written, their registers freed.
2. The instruction at the program counter issues if nothing blocks it (``matrix_unit.sv`` 275-310: one
   ``stall`` signal ORs all three checks; the first that applies is recorded as the stall reason):
   - ``unit busy``: its functional unit still runs an earlier instruction (one instruction per unit);
   - ``memory port``: ldv / sv / lds / sts and tmatmul share the single memory port, so each waits while
     the other kind runs (lines 279-282);
   - ``register in use``: a register it reads or writes is read or written by an in-flight instruction
     (one conservative scoreboard for RAW, WAR and WAW, lines 255-273 and 286-309).
   The issued instruction's ``in_valid`` register is set at the clock edge (lines 411-423), so its unit is
   busy from cycle c + 1. At most one instruction issues per cycle; ``nop`` (fu = 0) takes its cycle.
3. When every instruction has issued and every unit is idle (cycle e + 1, e the last busy cycle), the
   control goes back to waiting and ``ready`` is high in cycle e + 2 (lines 45-51, 384-392).
   ``Stats.cycles`` is that count, start -> ready as the RTL's host sees it: cycles 0 .. e + 1.

A memory request issued in cycle t is answered in cycle t + L (L = ``read_latency`` / ``write_latency``).
When an instruction issues in cycle c, its unit's last busy cycle ("end") is, with D the vector length,
N = D^2/4 weight bytes and r = ``rowwise_lanes`` (1 in the 2024 RTL):

    ldv sv (lds sts)    c + 1 + D L          the first request goes out in c + 1; each later one in the cycle
                                             the previous answer arrives (fus/vector_load_store.sv 54-94)
    add sub mul div     c + 1 + ceil(D/r)    one in_valid cycle, then D working cycles
    exp sig (silu mulsv)                     (fus/rowwise_operation.sv 145-159)
    norm                c + 3 ceil(D/r)      square, averaging tree, divide (fus/rms.sv 123-182)
    tmatmul             c + max(D^2 + L + 3, N (L + 1) + 6) + ceil(D/r)
                                             the weight reader starts only once the compute side is WORKING
                                             (first request in c + 3), takes L + 1 cycles per byte (request,
                                             answer, back to START), the popped weights come out of a registered
                                             FIFO one cycle after the answer, one per cycle; then D copy-out
                                             cycles (fus/ternary_matmul/ternary_matmul.sv 63-93, 154-204;
                                             matrix_fifo.sv 25-66). ``hold`` (extension): no copy-out.

The extensions' units (sqacc, rstd, amax, quant, smul, qscale) take ``ceil(N/r)``, ``ceil(len/r) + 1``, 1
cycles from c + 1 (no RTL exists for them). With wider ports (``scaled``) the same rules hold per request:
``memory.simulate_stream`` times the bursts, outstanding requests and FIFO back-pressure.

Results are written when a unit retires (the RTL writes element by element, but the scoreboard keeps
everyone else off those registers until then, so nobody can tell the difference). ``tmatmul`` accumulates
its weights in the order they leave the FIFO; ``Core.unit_status`` shows the partial accumulators.

``run()`` jumps from event to event (an issue or a retirement) and is fast; ``step_cycle()`` goes one
cycle at a time and returns that cycle's trace line. Both give identical results and statistics.

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .config import CoreConfig, ceil_div
from .formats import get_format
from .functional import MachineState, execute_memory, execute_simple, finish_tmatmul, tile_bytes
from .isa import ADDR_MASK, TM_ACC, UNITS, Instruction, decode
from .memory import DDR, SimError, StreamParams, WEIGHTS_PER_BYTE, find_region, stream
from .packing import unpack_codes

DRAIN = "drain"                     # every instruction issued, units still busy
READY = "ready (all idle)"          # the stall-reason key of the one cycle between the last busy cycle and ready
DEFAULT_CYCLE_LIMIT = 1 << 40       # no program of a realistic model comes near; a run past it is an error
UNIT_SHORT = {"loadstore": "ls", "rowwise": "rw", "tmatmul": "tm", "rms": "rms", "quant": "q", "scalar": "sc"}


@dataclass
class Flight:
    """An instruction in a unit."""
    pc: int
    ins: Instruction
    issue: int
    start: int
    end: int                       # last busy cycle
    stream: object = None          # memory.Stream for memory instructions and tmatmul
    nbytes: int = 0
    copy_start: int = 0            # tmatmul: first copy-out cycle
    acc: np.ndarray = None         # tmatmul: accumulators so far
    acc_weights: int = 0           # tmatmul: weights accumulated so far


@dataclass
class Record:
    """One issued instruction: issue cycle, first and last busy cycle of its unit (nop: all three equal)."""
    pc: int
    name: str
    unit: str | None
    issue: int
    start: int
    end: int
    tag: str
    text: str = ""                 # its assembly
    regs: tuple = ()               # the registers the scoreboard holds for it, cycles issue + 1 .. end
    nbytes: int = 0                # bytes it moves over the memory port


@dataclass
class Stats:
    cycles: int = 0
    unit_busy: Counter = field(default_factory=Counter)
    stalls: Counter = field(default_factory=Counter)
    traffic: Counter = field(default_factory=Counter)          # bytes by class
    requests: Counter = field(default_factory=Counter)         # memory requests by class
    records: list = field(default_factory=list)
    stall_spans: list = field(default_factory=list)          # [first cycle, last cycle, reason]
    max_rms_buffer: int = 0

    def stall(self, why: str, c: int, n: int) -> None:
        """Cycles c .. c + n - 1 issued nothing, because of ``why``."""
        self.stalls[why] += n
        last = self.stall_spans[-1] if self.stall_spans else None
        if last and last[2] == why and last[1] == c - 1:
            last[1] = c + n - 1
        else:
            self.stall_spans.append([c, c + n - 1, why])


class Core:
    """One core running one program.

    ``state`` (a functional.MachineState) holds the data; without it the core runs timing only (then give
    ``ddr_size`` and ``regions`` so addresses can still be checked and traffic classified; without them any
    47-bit address is accepted).

    ``run().cycles`` is start -> ready as the RTL counts it. The 2024 instruction memory always holds 29
    entries (no-ops after a shorter program), so to compare a shorter program's ``cycles`` with the RTL, run
    ``cosim.pad(program)``; the issue and end cycles of its instructions are the same either way.
    """

    def __init__(self, config: CoreConfig, program, state: MachineState | None = None,
                 ddr_size: int | None = None, regions=(), number_format=None, cycle_limit: int | None = None):
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a CoreConfig (get_config(...)), got {type(config).__name__}")
        self.config = config
        self.D = config.D
        self.program = [p if isinstance(p, Instruction) else decode(int(p)) for p in program]
        if not self.program:
            raise SimError("the program is empty (the core needs at least one instruction)")
        if len(self.program) > config.instruction_memory:
            raise SimError(f"the program has {len(self.program)} instructions; the instruction memory of "
                           f"{config.name} holds {config.instruction_memory}")
        self.cycle_limit = DEFAULT_CYCLE_LIMIT if cycle_limit is None else int(cycle_limit)
        if self.cycle_limit < 1:
            raise ValueError(f"cycle_limit must be a positive integer, got {cycle_limit!r}")
        self.state = state
        self.fmt = get_format(number_format or (state.fmt if state is not None else config.number_format))
        if state is not None:
            if state.D != self.D:
                raise SimError(f"machine state has D = {state.D}, the core D = {self.D}")
            if get_format(state.fmt).name != self.fmt.name:
                raise SimError(f"machine state is in {state.fmt.name}, core asked for {self.fmt.name}")
            ddr_size, regions = state.ddr.size, state.ddr.regions
        if ddr_size is None:
            ddr_size = ADDR_MASK + 1        # timing only, no regions: any address the word can hold
        self.ddr_size = ddr_size
        self.regions = sorted(regions, key=lambda r: r.start)
        self._starts = [r.start for r in self.regions]
        c = config
        # StreamParams' beat arrives latency + 1 cycles after its request and is usable in that cycle. The
        # load/store unit uses an answer in the cycle it arrives (latency L - 1); the tmatmul weights pass
        # through the registered FIFO first, one cycle later (latency L).
        self._read = StreamParams(c.beat_bytes, c.burst_beats, c.outstanding, c.read_latency - 1, c.beat_cycles)
        self._write = StreamParams(c.beat_bytes, c.burst_beats, c.outstanding, c.write_latency - 1, c.beat_cycles)
        self._weights = StreamParams(c.beat_bytes, c.burst_beats, c.outstanding, c.read_latency,
                                     c.beat_cycles, c.fifo_bytes, c.tmatmul_parallelism)
        self.cycle = 0
        self.pc = 0
        self.flights: dict[str, Flight] = {}
        self.busy_regs: dict = {}
        self.rms_len = 0
        self.stats = Stats()
        self.finished = False           # the cycle with everything idle has been simulated

    # ------------------------------------------------------------------ public API

    @property
    def done(self) -> bool:
        return self.finished

    def _check_limit(self, c: int) -> None:
        if c > self.cycle_limit:
            raise SimError(f"the program did not finish within the cycle limit ({self.cycle_limit:,} cycles; "
                           f"pc {self.pc} of {len(self.program)})")

    def run(self) -> Stats:
        """Run to the end, jumping between events. Returns the statistics."""
        while not self.finished:
            self.step_event()
        return self.stats

    def step_event(self, until: int | None = None) -> tuple[str, int, int, str]:
        """Simulate up to the next event (an issue, the end of a stall or drain, the finish), in one jump.

        Returns (kind, first cycle, cycles, detail): ("issue", c, 1, text), ("stall", c, n, reason),
        ("drain", c, n, ""), ("finish", c, 1, ""). ``until`` caps a stall or drain at that cycle (exclusive),
        so that a caller can stop inside one; the statistics are the same as without the cap.
        """
        c = self.cycle
        self._check_limit(c)
        self._retire(c)
        if self.pc < len(self.program):
            ins = self.program[self.pc]
            why = self._blocker(ins)
            if why is None:
                self._issue(ins, c)
                self.cycle = c + 1
                return "issue", c, 1, f"{self.pc - 1}: {ins.text()}"
            nxt = min(f.end for f in self.flights.values()) + 1
            nxt = nxt if until is None else max(c + 1, min(nxt, until))
            self.stats.stall(why, c, nxt - c)
            self.cycle = nxt
            return "stall", c, nxt - c, why
        if self.flights:
            nxt = max(f.end for f in self.flights.values()) + 1
            nxt = nxt if until is None else max(c + 1, min(nxt, until))
            self.stats.stall(DRAIN, c, nxt - c)
            self.cycle = nxt
            return "drain", c, nxt - c, ""
        self._finish(c)
        return "finish", c, 1, ""

    def blocker(self) -> str | None:
        """Why the instruction at the program counter cannot issue in this cycle (None: it can, or none left)."""
        if self.pc >= len(self.program):
            return None
        saved = dict(self.flights), dict(self.busy_regs)
        self._retire_timing(self.cycle)
        why = self._blocker(self.program[self.pc])
        self.flights, self.busy_regs = saved
        return why

    def _finish(self, c: int) -> None:
        """Cycle c sees every unit idle: the control returns to waiting; ``ready`` rises in cycle c + 1."""
        self.stats.stall(READY, c, 1)
        self.cycle = c + 1
        self.stats.cycles = c + 1
        self.finished = True

    def step_cycle(self) -> str | None:
        """Simulate one cycle; return its trace line (None once the program has finished)."""
        if self.finished:
            return None
        c = self.cycle
        self._check_limit(c)
        self._retire(c)
        if self.pc >= len(self.program) and not self.flights:
            self._finish(c)
            return f"{c:>9} pc={self.pc:<5} {'all units idle: ready next cycle':<44} |"
        if self.pc < len(self.program):
            ins = self.program[self.pc]
            why = self._blocker(ins)
            if why is None:
                pc = self.pc
                self._issue(ins, c)
                event = f"issue {pc}: {ins.text()}"
            else:
                self.stats.stall(why, c, 1)
                event = f"stall: {why}"
        else:
            self.stats.stall(DRAIN, c, 1)
            event = "drain"
        line = f"{c:>9} pc={self.pc:<5} {event:<44} |" + " |".join(
            f" {UNIT_SHORT[u]} {self._unit_text(u, c)}" for u in UNITS)
        self.cycle = c + 1
        return line

    def step_instruction(self) -> list[str]:
        """Cycles up to and including the next issue (or to the end). Returns their trace lines."""
        lines, pc = [], self.pc
        while self.pc == pc:
            line = self.step_cycle()
            if line is None:
                break
            lines.append(line)
        return lines

    def trace(self, max_cycles: int | None = None):
        """Yield one trace line per cycle until the program ends (or ``max_cycles`` lines)."""
        n = 0
        while max_cycles is None or n < max_cycles:
            line = self.step_cycle()
            if line is None:
                return
            n += 1
            yield line

    def unit_status(self) -> dict:
        """What every unit is doing in the current cycle (tmatmul: weights consumed, FIFO, accumulators)."""
        out = {}
        for u in UNITS:
            f = self.flights.get(u)
            if f is None:
                out[u] = None
                continue
            d = {"pc": f.pc, "instruction": f.ins.text(), "tag": f.ins.tag, "start": f.start, "end": f.end}
            if f.stream is not None:
                c = min(self.cycle, f.stream.end)
                d["weights_consumed" if u == "tmatmul" else "bytes_done"] = (
                    f.stream.consumed_at(c) if u == "tmatmul" else f.stream.consumed_at(c) // WEIGHTS_PER_BYTE)
                d["of"] = f.stream.total if u == "tmatmul" else f.nbytes
                if u == "tmatmul":
                    d["fifo_weights"] = f.stream.fifo_at(c)
                    if self.state is not None:
                        self._accumulate(f, f.stream.consumed_at(c))
                        d["accumulators"] = f.acc.copy()
            out[u] = d
        return out

    # ------------------------------------------------------------------ issue

    def _blocker(self, ins: Instruction) -> str | None:
        u = ins.unit
        if u is None:
            return None
        if u in self.flights:
            return f"unit busy ({u})"
        if u in ("loadstore", "tmatmul") and ({"loadstore", "tmatmul"} - {u}) & self.flights.keys():
            return "memory port"
        for r in ins.reads() | ins.writes():
            if r in self.busy_regs:
                return "register in use"
        return None

    def _region(self, addr: int):
        return find_region(self.regions, self._starts, addr)

    def _check_addr(self, ins: Instruction, n: int) -> None:
        if ins.addr + n > self.ddr_size:
            raise SimError(f"pc {self.pc}: {ins.text()} accesses {n} bytes at {ins.addr:#x}, outside DDR "
                           f"(size {self.ddr_size:#x})")

    def _traffic(self, ins: Instruction, n: int) -> None:
        r = self._region(ins.addr)
        cls = r.cls if r else "unmapped"
        self.stats.traffic[cls] += n
        self.stats.requests[cls] += ceil_div(n, self._read.request_bytes)

    def _issue(self, ins: Instruction, c: int) -> None:
        cfg, D, start = self.config, self.D, c + 1
        u, n = ins.unit, ins.name
        f = Flight(self.pc, ins, c, start, start)
        if u is None:                                              # nop
            self.pc += 1
            self.stats.records.append(Record(f.pc, n, None, c, c, c, ins.tag, ins.text()))
            return
        if u == "loadstore":
            size = self.D * self.fmt.word_bytes if n in ("ldv", "sv") else 4
            self._check_addr(ins, size)
            r = self._region(ins.addr)
            lanes = 1 if (n == "lds" or (r is not None and r.cls == "params")) else cfg.lanes
            f.nbytes = size * lanes
            f.stream = stream(f.nbytes, start, self._read if n in ("ldv", "lds") else self._write)
            f.end = f.stream.end
            self._traffic(ins, f.nbytes)
        elif u == "tmatmul":
            nb = tile_bytes(D)
            self._check_addr(ins, nb)
            f.nbytes = nb
            # the unit enters WORKING in c + 2, its weight reader leaves IDLE then and requests in c + 3
            f.stream = stream(nb, start + 2, self._weights)
            f.copy_start = f.stream.end + 1
            f.end = f.stream.end + (0 if ins.ls & 2 else ceil_div(D, cfg.rowwise_lanes))
            self._traffic(ins, nb)
            if self.state is not None:
                f.acc = self.state.acc.copy() if ins.ls & TM_ACC else np.zeros(D, np.int64)
        else:
            f.end = start + self._fixed_latency(ins) - 1
        self.flights[u] = f
        for reg in ins.reads() | ins.writes():
            self.busy_regs[reg] = u
        self.stats.unit_busy[u] += f.end - f.start + 1
        regs = tuple(sorted(ins.reads() | ins.writes()))
        self.stats.records.append(Record(f.pc, n, u, c, f.start, f.end, ins.tag, ins.text(), regs, f.nbytes))
        self.pc += 1

    def _fixed_latency(self, ins: Instruction) -> int:
        D, r, n = self.D, self.config.rowwise_lanes, ins.name
        if n == "norm":
            if self.fmt.name == "q4.3" and D & (D - 1):
                raise SimError(f"pc {self.pc}: norm in Q4.3 needs D a power of two (averaging tree), D = {D}")
            return 3 * ceil_div(D, r)
        if n == "sqacc":
            k = ins.addr or D
            if k > D:
                raise SimError(f"pc {self.pc}: sqacc length {k} exceeds D = {D}")
            self.rms_len += k
            self.stats.max_rms_buffer = max(self.stats.max_rms_buffer, self.rms_len)
            return ceil_div(k, r)
        if n == "rstd":
            if self.rms_len == 0:
                raise SimError(f"pc {self.pc}: rstd with an empty RMS buffer (no sqacc before it)")
            k, self.rms_len = self.rms_len, 0
            return ceil_div(k, r) + 1
        if n in ("smul", "qscale"):
            return 1
        if ins.unit == "rowwise":
            return 1 + ceil_div(D, r)       # the in_valid cycle, then one element per lane per cycle
        return ceil_div(D, r)

    # ------------------------------------------------------------------ retire

    def _retire_timing(self, c: int) -> None:
        """Like _retire but without writing results (to look ahead)."""
        self.flights = {u: f for u, f in self.flights.items() if f.end >= c}
        self.busy_regs = {r: u for r, u in self.busy_regs.items() if u in self.flights}

    def _retire(self, c: int) -> None:
        for u in [u for u, f in self.flights.items() if f.end < c]:
            f = self.flights.pop(u)
            for reg in f.ins.reads() | f.ins.writes():
                if self.busy_regs.get(reg) == u:
                    del self.busy_regs[reg]
            if self.state is not None:
                self._apply(f)

    def _apply(self, f: Flight) -> None:
        st, ins = self.state, f.ins
        if ins.unit == "loadstore":
            execute_memory(ins, st)
        elif ins.unit == "tmatmul":
            self._accumulate(f, f.stream.total)
            st.acc = f.acc
            finish_tmatmul(ins, st)
        else:
            execute_simple(ins, st)

    def _accumulate(self, f: Flight, upto: int) -> None:
        """Add the weights f.acc_weights .. upto (stream order k = i D + o) into f.acc."""
        k0, k1, D = f.acc_weights, upto, self.D
        if k1 <= k0:
            return
        st = self.state
        x = st.fmt.tm_codes(st.v[f.ins.va])
        b0, b1 = k0 // WEIGHTS_PER_BYTE, ceil_div(k1, WEIGHTS_PER_BYTE)
        w = unpack_codes(st.ddr.read(f.ins.addr + b0, b1 - b0))[k0 - b0 * 4:k1 - b0 * 4]
        acc, k = f.acc, k0
        while k < k1:                                   # a partial row, whole rows, a partial row
            i, o = divmod(k, D)
            if o == 0 and k1 - k >= D:
                rows = (k1 - k) // D
                wr = w[k - k0:k - k0 + rows * D].reshape(rows, D)
                acc = st.fmt.tm_accumulate(acc, wr, x[i:i + rows])
                k += rows * D
            else:
                o1 = min(D, o + k1 - k)
                seg = w[k - k0:k - k0 + o1 - o]
                acc[o:o1] = st.fmt.tm_accumulate(acc[o:o1], seg[None, :], x[i:i + 1])
                k += o1 - o
        f.acc, f.acc_weights = acc, k1

    # ------------------------------------------------------------------ trace helpers

    def _unit_text(self, u: str, c: int) -> str:
        f = self.flights.get(u)
        if f is None or c < f.start:
            return "-" if f is None else f"{f.ins.name} (starts)"
        if f.stream is not None and u == "tmatmul":
            if c < f.copy_start:
                return f"mac {f.stream.consumed_at(c)}/{f.stream.total} fifo {f.stream.fifo_at(c)}"
            return f"copy {c - f.copy_start + 1}/{f.end - f.copy_start + 1}"
        if f.stream is not None:
            return f"{f.ins.name} {f.stream.consumed_at(c) // WEIGHTS_PER_BYTE}/{f.nbytes}B"
        return f"{f.ins.name} {c - f.start + 1}/{f.end - f.start + 1}"


def new_state(config: CoreConfig, ddr: DDR, number_format=None) -> MachineState:
    return MachineState(config.D, get_format(number_format or config.number_format), ddr)
