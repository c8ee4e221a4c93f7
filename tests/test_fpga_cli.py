"""python -m fpga_model as a user meets it: one-line errors with exit status 2 for bad input, a stepper that
piped commands drive, a VCD from the command line; the API refuses bad configurations and programs."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpga_model.__main__ import main
from fpga_model.config import get_config
from fpga_model.core import Core
from fpga_model.isa import ISAError, assemble
from fpga_model.memory import SimError

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fpga_model", *args], capture_output=True, text=True, cwd=ROOT,
                          input=stdin, timeout=timeout)


BAD = [
    (["run", "--D", "6"], "argument --D: expected a positive multiple of 4"),
    (["run", "--D", "-4"], "argument --D: expected a positive multiple of 4"),
    (["run", "--D", "0"], "argument --D: expected a positive multiple of 4"),
    (["run", "--tokens", "-3"], "argument --tokens: expected a positive whole number"),
    (["run", "--config", "bogus"], "argument --config: invalid choice: 'bogus'"),
    (["step", "--batch", "--mem", "zz"], "argument --mem: expected ADDR:N"),
    (["run", "--gantt", "/no/such/folder/g.png"], "argument --gantt: the folder '/no/such/folder' does not exist"),
    (["trace", "--vcd", "/no/such/folder/t.vcd"], "argument --vcd: the folder"),
    (["run", "--latency", "nan"], "argument --latency: expected a positive whole number"),
    (["run", "--latency", "0"], "argument --latency: expected a positive whole number"),
    (["run", "--latency", "2.5"], "argument --latency: expected a positive whole number"),
    (["cosim", "--rtl", "/no/such/rtl"], "--rtl /no/such/rtl: no such folder"),
    (["cosim", "--rtl", ".", "--D", "12"], "argument --D: the 2024 design needs a power of two"),
    (["bogus"], "argument cmd: invalid choice: 'bogus'"),
    (["run", "--model", "golden", "--D", "24"], "argument --D: the model's hidden size"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_give_one_line_naming_the_flag_and_exit_status_2(args, message, capsys):
    """Every bad flag: exit 2, stderr one line 'fpga_model: error: ...' naming it, no traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fpga_model: error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_the_cli_contract_holds_in_a_real_process_and_debug_shows_the_traceback():
    """Through python -m: exit 2 and one line; with --debug the traceback is printed as well."""
    p = cli("run", "--D", "6")
    assert p.returncode == 2 and p.stderr == "fpga_model: error: argument --D: expected a positive multiple of 4 " \
                                             "(4 weights per byte), got 6\n"
    p = cli("--debug", "cosim", "--rtl", "/no/such/rtl")
    assert p.returncode == 2 and "Traceback" in p.stderr and "no such folder" in p.stderr


def test_an_internal_error_exits_1_with_a_hint_to_report_it(monkeypatch, capsys):
    """An unexpected exception inside a command: exit 1, 'internal error', a hint to report with --debug."""
    import fpga_model.__main__ as m
    monkeypatch.setattr(m, "cmd_configs", lambda args: 1 / 0)
    assert main(["configs"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "please report it" in err


def test_the_stepper_is_driven_by_piped_commands():
    """Breakpoints on a tag and a stall cause, stepping, registers, a watch, bad commands answered, quit."""
    script = "\n".join(["where", "break tag f_proj", "continue", "units", "stepi 2", "regs 2", "delete 1",
                        "break stall memory", "break stall register in use", "continue", "cycle 3", "mem 0 4",
                        "cycle x", "frobnicate", "delete", "watch v1", "continue", "unwatch", "continue", "quit"]) + "\n"
    p = cli("step", "--model", "golden", "--format", "q4.3", "--D", "16", "--latency", "1", stdin=script)
    out = p.stdout
    assert p.returncode == 0, p.stderr
    assert "(fpga) break tag f_proj\nbreakpoint 1: tag f_proj" in out
    assert "breakpoint: tag 'f_proj': pc " in out and "L0.attn.f_proj" in out
    assert "watch: v1 changed" in out
    assert "break stall: expected one of unit busy, memory port, register in use, drain, got 'memory'" in out
    assert "breakpoint: stall (register in use) starts in cycle" in out
    assert "error: cycle takes a positive whole number, got 'x'" in out
    assert "unknown command 'frobnicate'" in out
    assert "  DDR[0x0:0x4] = [" in out
    assert "the program has finished:" in out and out.rstrip().endswith("(fpga) quit")


def test_step_batch_keeps_the_fixed_window_output(capsys):
    """step --batch --instructions N prints the trace lines, then registers and units (no prompt)."""
    assert main(["step", "--batch", "--model", "golden", "--format", "q4.3", "--D", "16", "--instructions", "2"]) == 0
    out = capsys.readouterr().out
    assert "issue 0:" in out and "issue 1:" in out and "vector registers" in out and "(fpga)" not in out


def test_trace_vcd_writes_the_whole_token(tmp_path, capsys):
    """trace --vcd FILE writes a VCD with the core's signals and says how many cycles it holds."""
    path = tmp_path / "token.vcd"
    assert main(["trace", "--model", "golden", "--format", "q4.3", "--D", "16", "--latency", "1",
                 "--vcd", str(path)]) == 0
    assert "cycles" in capsys.readouterr().out
    head = path.read_text()[:4000]
    assert "$timescale 1 ps $end" in head and "tmatmul_busy" in head and "stall_cause" in head
    assert not list(tmp_path.glob("*.partial"))


# ----------------------------------------------------------------------------- the API

@pytest.mark.parametrize("field,value", [("read_latency", -1), ("read_latency", 0), ("read_latency", math.nan),
                                         ("read_latency", math.inf), ("read_latency", 2.5), ("write_latency", -3),
                                         ("write_latency", True), ("clock_hz", 0), ("clock_hz", -60e6),
                                         ("clock_hz", math.nan), ("clock_hz", math.inf), ("D", 6), ("D", 0),
                                         ("D", -4), ("board_power_w", math.nan)])
def test_bad_configuration_values_are_refused_by_name(field, value):
    """get_config refuses negative / NaN / infinite / fractional latencies, clock_hz <= 0, D not 4k."""
    with pytest.raises(ValueError, match=field):
        get_config("rtl2024", **{field: value})


def test_unknown_configuration_and_oversized_or_empty_programs_are_refused():
    """An unknown name lists the known ones; a program longer than the instruction memory, or empty, is refused."""
    with pytest.raises(ValueError, match="known: rtl2024, scaled"):
        get_config("bogus")
    cfg = get_config("rtl2024", D=8, instruction_memory=29)
    with pytest.raises(SimError, match="holds 29"):
        Core(cfg, assemble("add v1, v2, v3\n" * 30), ddr_size=64)
    with pytest.raises(SimError, match="empty"):
        Core(cfg, [], ddr_size=64)


def test_a_run_past_its_cycle_limit_stops_with_a_message():
    """cycle_limit bounds every run: a message with the limit and the program counter, never a hang."""
    cfg = get_config("rtl2024", D=64, read_latency=12)
    core = Core(cfg, assemble("tmatmul v1, v2, 0\ntmatmul v3, v4, 0"), ddr_size=1 << 16, cycle_limit=1000)
    with pytest.raises(SimError, match="cycle limit .1,000 cycles; pc 1 of 2"):
        core.run()


def test_malformed_assembly_names_the_line():
    """Unknown mnemonic, a bad register, an out-of-range register or address: ISAError with 'line N'."""
    cases = {"ldv v1, 0\nfrob v1": "line 2: unknown instruction 'frob'",
             "add v1, v2, x3": "line 1: expected a vector register",
             "\n\nadd v1, v2, v9": "line 3: register v9 out of range",
             "ldv v1, 0x1000000000000000": "line 1: ldv: address",
             "add v1, v2": "line 1: add takes operands"}
    for text, msg in cases.items():
        with pytest.raises(ISAError, match=msg):
            assemble(text)


ASM_WORDS = ["ldv", "sv", "add", "mul", "exp", "norm", "tmatmul", "silu", "sqacc", "amax", "nop", "v0", "v7",
             "v8", "s1", "s9", "0x10", "-1", "acc", "hold", "99999999999999999999", ",", ";", "#", " "]


@settings(max_examples=max(4 * settings().max_examples, 40))     # 100 by default; the "thorough" profile: 1200
@given(st.lists(st.one_of(st.sampled_from(ASM_WORDS), st.text(max_size=6)), max_size=12), st.integers(1, 4))
def test_any_text_assembles_or_raises_the_assembly_error_naming_the_line(words, lines):
    """Any text: a program, or ISAError starting 'line N:' — never another exception type."""
    text = "\n".join(" ".join(words[i::lines]) for i in range(lines))
    try:
        assemble(text)
    except ISAError as e:
        assert str(e).startswith("line ")
