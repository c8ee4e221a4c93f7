"""Waveforms: a finished ``Core`` run as a VCD file (open it in GTKWave or Surfer).

    python -m fpga_model trace --vcd token.vcd

One clock period per core cycle (the configured clock: 60 MHz on ``rtl2024``, so a cycle is 16,666 ps);
every signal changes on the rising edge that starts its cycle. Signals, in scope ``core``:

    clk                     the clock
    cycle, pc               the cycle number; the program counter (instructions issued so far)
    issue, issue_pc         1 in a cycle that issues an instruction; which one
    stall, stall_cause      1 in a cycle that issues nothing; why (unit busy, memory port, register in use,
                            drain: all issued and units still busy; ready (all idle): the last cycle)
    ready                   1 from the cycle the host sees the core ready again (``Stats.cycles``)
    <unit>_busy, <unit>_pc, <unit>_instr    per functional unit: busy, and the instruction it runs
    mem_req, mem_we, mem_addr, mem_bytes    a request on the memory port (mem_we: a write) and its address
    mem_ans                 the answer to a read, or the acknowledgement of a write, arrives
    busy_v, busy_s          the scoreboard: one bit per vector / scalar register held by an in-flight unit

Everything is computed from the core's own records (``Stats.records``, ``Stats.stall_spans``) and the
memory-stream rules of ``memory.py``; ``tests/test_fpga_waves.py`` reads the file back and checks it
against them.

Taught in chapter 12 (``chapters/12-fpga-compiling-and-stepping.md``).
"""
from __future__ import annotations

from collections import defaultdict

from vcd import VCDWriter

from .isa import UNITS
from .memory import stream_requests


def memory_events(core) -> list[tuple[int, int, int, bool, int]]:
    """Every memory request of the run: (request cycle, answer cycle, address, write?, bytes)."""
    out = []
    for r in core.stats.records:
        if r.unit == "loadstore":
            write = r.name in ("sv", "sts")
            reqs = stream_requests(r.nbytes, r.start, core._write if write else core._read)
            lag = 0                    # the answer is used in the cycle it arrives
        elif r.unit == "tmatmul":
            write = False
            reqs = stream_requests(r.nbytes, r.start + 2, core._weights)
            lag = 1                    # weights are usable one cycle after the answer (the registered FIFO)
        else:
            continue
        addr = _address(r)
        for t, usable, n in reqs:
            out.append((t, usable - lag, addr, write, n))
            addr += n
    return out


def _address(r) -> int:
    text = r.text.split(",")
    return int(text[-1], 0) if r.name in ("ldv", "sv", "lds", "sts") else int(text[2], 0)


def write_vcd(core, path) -> None:
    """Write the finished run of ``core`` (after ``run()``) to ``path`` as a VCD file."""
    st = core.stats
    if not core.done:
        raise ValueError("write_vcd needs a finished run (call core.run() first)")
    period = max(2, round(1e12 / core.config.clock_hz))
    half = period // 2
    changes: dict[int, dict] = defaultdict(dict)

    def interval(var, a: int, b: int, value, idle) -> None:
        """var = value in cycles a..b, ``idle`` after (unless something else starts in b + 1)."""
        changes[b + 1].setdefault(var, idle)
        changes[a][var] = value

    with open(path, "w") as f, VCDWriter(f, timescale="1 ps", date="(none)",
                                         comment=f"fpga_model, config {core.config.name}, D = {core.D}") as w:
        v = lambda name, kind, size=None, init=None: w.register_var("core", name, kind, size=size,   # noqa: E731
                                                                    init=init)
        clk = v("clk", "wire", 1, 0)
        cycle = v("cycle", "integer", 32, 0)
        pc = v("pc", "integer", 32, 0)
        issue, issue_pc = v("issue", "wire", 1, 0), v("issue_pc", "integer", 32, 0)
        stall, cause = v("stall", "wire", 1, 0), v("stall_cause", "string", init="")
        ready = v("ready", "wire", 1, 0)
        units = {u: (v(f"{u}_busy", "wire", 1, 0), v(f"{u}_pc", "integer", 32, 0), v(f"{u}_instr", "string",
                                                                                     init="")) for u in UNITS}
        mreq, mwe = v("mem_req", "wire", 1, 0), v("mem_we", "wire", 1, 0)
        maddr, mbytes = v("mem_addr", "integer", 64, 0), v("mem_bytes", "integer", 32, 0)
        mans = v("mem_ans", "wire", 1, 0)
        busy_v, busy_s = v("busy_v", "wire", 8, 0), v("busy_s", "wire", 8, 0)

        for r in st.records:
            interval(issue, r.issue, r.issue, 1, 0)
            changes[r.issue][issue_pc] = r.pc
            changes[r.issue + 1][pc] = r.pc + 1
            if r.unit:
                b, p_, txt = units[r.unit]
                interval(b, r.start, r.end, 1, 0)
                changes[r.start][p_] = r.pc
                interval(txt, r.start, r.end, r.text, "")
        for a, b, why in st.stall_spans:
            interval(stall, a, b, 1, 0)
            interval(cause, a, b, why, "")
        for t, ans, addr, write, n in memory_events(core):
            interval(mreq, t, t, 1, 0)
            interval(mwe, t, t, int(write), 0)
            changes[t][maddr] = addr
            changes[t][mbytes] = n
            interval(mans, ans, ans, 1, 0)
        # the scoreboard: register bits over issue + 1 .. end of their instruction
        bits = {"v": defaultdict(int), "s": defaultdict(int)}
        for r in st.records:
            for kind, i in r.regs:
                bits[kind][r.issue + 1] += 1 << i
                bits[kind][r.end + 1] -= 1 << i
        for kind, var in (("v", busy_v), ("s", busy_s)):
            level = 0
            for c in sorted(bits[kind]):
                level += bits[kind][c]
                changes[c][var] = level
        changes[st.cycles][ready] = 1

        last = st.cycles + 1
        for c in range(0, last + 1):
            t = c * period
            w.change(clk, t, 1)
            w.change(cycle, t, c)
            for var, value in changes.get(c, {}).items():
                w.change(var, t, value)
            w.change(clk, t + half, 0)
