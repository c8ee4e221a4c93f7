"""fpga_model.cosim: the core reproduces every recorded run of the 2024 RTL, and the harness around it
(the diff, the instruction words, the checks on the RTL folder and on Verilator) behaves."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpga_model import cosim
from fpga_model.isa import assemble
from fpga_model.programs import paper_2024_program, time_paper_2024

TRACES = Path(__file__).parent / "fixtures" / "fpga_rtl_traces.json"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def traces():
    return cosim.load_traces(TRACES)


def test_the_recorded_traces_cover_directed_random_and_the_paper_program(traces):
    """The recording holds directed and random programs at several D and L, and the paper's program."""
    names = [t.name for t in traces]
    assert sum(n.startswith("random") for n in names) >= 200
    assert sum(n.startswith("directed") for n in names) >= 100
    assert {t.D for t in traces} >= {4, 8, 16, 32, 64, 512}
    assert {t.L for t in traces} >= {1, 2, 5, 12}
    assert {(t.D, t.L) for t in traces if t.name == "paper 29-instruction program"} >= {(512, 11), (512, 12), (512, 13)}


def test_the_core_reproduces_every_recorded_rtl_run_instruction_by_instruction(traces):
    """For every recorded RTL run: each instruction's issue and end cycle, and start -> ready, are equal."""
    bad = {t.name + f" D={t.D} L={t.L}": cosim.compare(t) for t in traces}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_paper_program_takes_2623542_cycles_at_d512_l12_as_on_the_rtl(traces):
    """The RTL's recorded count for the 29-instruction program (43.73 ms at 60 MHz) is the core's."""
    rec = next(t for t in traces if t.name == "paper 29-instruction program" and (t.D, t.L) == (512, 12))
    assert rec.cycles == 2_623_542
    assert time_paper_2024("rtl2024", D=512, read_latency=12, write_latency=12).cycles == rec.cycles


def test_compare_names_the_instruction_the_field_and_both_cycles(traces):
    """A trace with one end cycle moved gives exactly one Diff: that pc, 'end', RTL and model values."""
    t = next(t for t in traces if t.name == "directed ldv-add (register)")
    changed = cosim.RTLTrace(t.program, t.D, t.L, list(t.issue), [t.end[0], t.end[1] + 1], t.cycles, t.name)
    (d,) = cosim.compare(changed)
    assert (d.pc, d.field, d.rtl, d.model) == (1, "end", t.end[1] + 1, t.end[1])
    table = cosim.format_diff(changed, cosim.model_trace(assemble(t.program), t.D, t.L))
    assert [line.endswith("<-") for line in table.splitlines()] == [False, False, True, False]


def test_rtl_words_carry_the_2024_field_layout():
    """33 bits: fu[3] op[3] v_a[3] v_b[3] v_y[3] ls[2] address[16] (the 2024 instruction_t)."""
    word = lambda text: cosim.rtl_word(assemble(text)[0])          # noqa: E731
    assert word("add v1, v2, v3") == "010" "000" "010" "011" "001" "00" + "0" * 16
    assert word("sig v4, v5") == "010" "101" "101" "000" "100" "00" + "0" * 16
    assert word("sv v6, 0x12") == "001" "000" "110" "000" "000" "01" + format(0x12, "016b")
    assert word("tmatmul v7, v0, 0x1ffff") == "011" "000" "000" "000" "111" "00" + "1" * 16   # wraps to 16 bits
    assert word("norm v3") == "100" "000" "011" "000" "011" "00" + "0" * 16


def test_padding_fills_the_29_entry_instruction_memory_and_refuses_what_the_design_cannot_run():
    """Shorter programs get no-ops; 30 instructions or an extension is a CosimError naming the problem."""
    assert [i.name for i in cosim.pad(assemble("add v1, v2, v3"))] == ["add"] + ["nop"] * 28
    assert len(cosim.pad(paper_2024_program(64))) == 29
    with pytest.raises(cosim.CosimError, match="30 instructions"):
        cosim.pad(assemble("add v1, v2, v3\n" * 30))
    with pytest.raises(cosim.CosimError, match="extension"):
        cosim.pad(assemble("silu v1, v2"))


def test_random_programs_use_only_2024_instructions_inside_the_address_space():
    """The generator draws the ten 2024 instructions, addresses within 16 bits for the whole access."""
    import numpy as np
    rng = np.random.default_rng(0)
    for _ in range(50):
        prog = cosim.random_program(rng, 29, 16)
        assert not any(i.is_extension for i in prog)
        for i in prog:
            span = 64 if i.name == "tmatmul" else 16
            assert i.addr + span <= 1 << 16


def _fake_rtl(tmp_path, num_instructions=29):
    """A folder with the expected file names and parameters (placeholder text, not the design)."""
    d = tmp_path / "rtl"
    for f in cosim.RTL_FILES:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).write_text("// placeholder\n")
    (d / "config_pkg.sv").write_text(f"parameter D = 512;\nlocalparam NumInstructions = {num_instructions};\n"
                                     "localparam DdrAddressWidth = 16;\n")
    (d / "matrix_unit.sv").write_text('module matrix_unit; logic stall; initial $readmemb("tmi/process.memb");\n')
    return d


def test_check_rtl_names_what_is_missing_or_different(tmp_path):
    """No folder, a folder without the design's files, or other parameters: a CosimError that says so."""
    with pytest.raises(cosim.CosimError, match="no such folder"):
        cosim.check_rtl(tmp_path / "nowhere")
    with pytest.raises(cosim.CosimError, match="missing rtl.f"):
        cosim.check_rtl(tmp_path)
    assert cosim.check_rtl(_fake_rtl(tmp_path)) == tmp_path / "rtl"
    with pytest.raises(cosim.CosimError, match="NumInstructions = 29"):
        cosim.check_rtl(_fake_rtl(tmp_path / "b", num_instructions=26))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fpga_model", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_cosim_cli_reports_a_missing_rtl_folder_and_a_missing_verilator(tmp_path):
    """One line 'fpga_model: error: ...', exit status 2, no traceback, for both."""
    p = _cli("cosim", "--rtl", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and p.stderr.startswith("fpga_model: error: --rtl") and "Traceback" not in p.stderr
    env = dict(os.environ, PATH=str(tmp_path / "empty-bin"))
    p = _cli("cosim", "--rtl", str(_fake_rtl(tmp_path)), env=env)
    assert p.returncode == 2 and "verilator not found" in p.stderr and "Traceback" not in p.stderr


def test_saved_traces_read_back_equal(tmp_path, traces):
    """save_traces / load_traces round-trip the numbers and programs."""
    cosim.save_traces(traces[:5], tmp_path / "t.json", "test")
    back = cosim.load_traces(tmp_path / "t.json")
    assert [b.to_json() for b in back] == [t.to_json() for t in traces[:5]]
    assert json.loads((tmp_path / "t.json").read_text())["provenance"] == "test"
