"""fpga_model.waves: the VCD file, read back with pyvcd's reader, shows exactly what the core's records say."""
from collections import defaultdict

import pytest
from vcd.reader import TokenKind, tokenize

from fpga_model.config import get_config
from fpga_model.core import Core
from fpga_model.isa import assemble
from fpga_model.waves import write_vcd

PROGRAM = """
ldv v1, 0x100
tmatmul v2, v1, 0x0
add v3, v4, v5
exp v6, v3
sv v2, 0x200
norm v7
"""


def read_vcd(path):
    """{signal name: [(time, value), ...]} and the clock period, from the file's value changes."""
    names, changes, t = {}, defaultdict(list), 0
    with open(path, "rb") as f:
        for tok in tokenize(f):
            if tok.kind is TokenKind.VAR:
                names[tok.data.id_code] = tok.data.reference
            elif tok.kind is TokenKind.CHANGE_TIME:
                t = tok.data
            elif tok.kind in (TokenKind.CHANGE_SCALAR, TokenKind.CHANGE_VECTOR, TokenKind.CHANGE_STRING):
                changes[names[tok.data.id_code]].append((t, tok.data.value))
    return changes


def number(v) -> int:
    """A vector value as the reader gives it (an int, or a string of bits) -> int."""
    return v if isinstance(v, int) else int(v, 2)


def per_cycle(changes, name, period, cycles):
    """The signal's value in each cycle 0 .. cycles (sampled at the rising edge)."""
    out, i, value, ch = [], 0, None, changes[name]
    for c in range(cycles + 1):
        while i < len(ch) and ch[i][0] <= c * period:
            value = ch[i][1]
            i += 1
        out.append(value)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = get_config("rtl2024", D=8, read_latency=3, write_latency=2)
    core = Core(cfg, assemble(PROGRAM), ddr_size=1 << 12)
    core.run()
    path = tmp_path_factory.mktemp("vcd") / "run.vcd"
    write_vcd(core, path)
    return core, read_vcd(path), round(1e12 / cfg.clock_hz)


def test_clock_and_cycle_count_every_cycle(run):
    """clk rises at each cycle's start and falls half a period later; 'cycle' counts 0, 1, 2, ..."""
    core, ch, period = run
    n = core.stats.cycles
    rises = [t for t, v in ch["clk"] if v == "1"]
    assert rises[:n + 1] == [c * period for c in range(n + 1)]
    assert per_cycle(ch, "cycle", period, n) == list(range(n + 1))


def test_issue_and_units_busy_match_the_records(run):
    """issue is 1 exactly in the records' issue cycles; <unit>_busy exactly over start..end of its records."""
    core, ch, period = run
    n, recs = core.stats.cycles, core.stats.records
    issue = per_cycle(ch, "issue", period, n)
    assert [c for c in range(n + 1) if issue[c] == "1"] == [r.issue for r in recs]
    for unit in ("loadstore", "tmatmul", "rowwise", "rms"):
        busy = per_cycle(ch, f"{unit}_busy", period, n)
        expect = {c for r in recs if r.unit == unit for c in range(r.start, r.end + 1)}
        assert {c for c in range(n + 1) if busy[c] == "1"} == expect, unit
        instr = per_cycle(ch, f"{unit}_instr", period, n)
        for r in recs:
            if r.unit == unit:
                assert instr[r.end].replace("\\x20", " ") == r.text


def test_stall_cause_and_ready_match_the_statistics(run):
    """stall is 1 in every stall span with its cause; ready rises in cycle Stats.cycles."""
    core, ch, period = run
    n = core.stats.cycles
    stall, cause = per_cycle(ch, "stall", period, n), per_cycle(ch, "stall_cause", period, n)
    spans = core.stats.stall_spans
    assert sum(stall[c] == "1" for c in range(n + 1)) == sum(core.stats.stalls.values())
    for a, b, why in spans:
        assert all(stall[c] == "1" and cause[c].replace("\\x20", " ") == why for c in range(a, b + 1))
    ready = per_cycle(ch, "ready", period, n)
    assert ready.index("1") == n


def test_memory_port_shows_one_request_per_byte_and_its_answer_l_cycles_later(run):
    """The 2024 port: ldv's 8 reads answered 3 cycles after each request; sv's 8 writes acknowledged after 2."""
    core, ch, period = run
    n = core.stats.cycles
    req, ans, we = (per_cycle(ch, s, period, n) for s in ("mem_req", "mem_ans", "mem_we"))
    addr = per_cycle(ch, "mem_addr", period, n)
    reqs = [c for c in range(n + 1) if req[c] == "1"]
    answers = [c for c in range(n + 1) if ans[c] == "1"]
    ldv, tm, sv = (next(r for r in core.stats.records if r.name == k) for k in ("ldv", "tmatmul", "sv"))
    assert len(reqs) == 8 + 16 + 8 == len(answers)
    assert reqs[:8] == [ldv.start + 3 * k for k in range(8)] and answers[:8] == [ldv.start + 3 * (k + 1) for k in range(8)]
    assert [number(addr[c]) for c in reqs[:8]] == list(range(0x100, 0x108))
    assert reqs[8] == tm.issue + 3                         # the weight reader's first request
    writes = [c for c in reqs if we[c] == "1"]
    assert writes == [sv.start + 2 * k for k in range(8)]


def test_scoreboard_bits_follow_each_instructions_registers(run):
    """busy_v bit i is 1 exactly while an issued, unfinished instruction holds v_i (issue + 1 .. end)."""
    core, ch, period = run
    n = core.stats.cycles
    busy = per_cycle(ch, "busy_v", period, n)
    for c in range(n + 1):
        expect = 0
        for r in core.stats.records:
            if r.issue < c <= r.end:
                for kind, i in r.regs:
                    expect |= 1 << i
        assert number(busy[c]) == expect, c
