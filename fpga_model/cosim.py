"""Co-simulation against the 2024 RTL: the same programs on Verilator and on ``Core``, instruction by instruction.

    python -m fpga_model cosim --rtl DIR [--D 16 --L 2 --random 20 --seed 0]

``DIR`` is the ``rtl/`` folder of the public 2024 design (``Mattiwos/ternary_matmul_afu`` at b0345e7: it
holds ``rtl.f``, ``config_pkg.sv``, ``matrix_unit.sv`` and ``fus/``). Nothing of it is copied into this
project: ``build`` copies the folder into a temporary build directory, sets the package parameter ``D``
there, writes the project's own C++ testbench beside it and compiles both with Verilator (Debian's
``verilator`` package).

The testbench's memory answers a read requested in cycle t in cycle t + L (data and ``ddr_r_valid_i``) and
acknowledges a write requested in cycle t in cycle t + L (``ddr_w_done_i``), one request outstanding (the
design never has two). Cycle 0 is the cycle in which ``start_i`` is seen with ``ready_o`` high. Per cycle it
records which instruction issued (the program counter advanced past it without a stall) and which unit was
busy (the design's own ``*_busy`` wires); an instruction's ``end`` is the last busy cycle of its unit before
the unit takes another instruction; ``cycles`` is the cycle in which ``ready_o`` rises again.

The instruction memory has 29 entries (``NumInstructions``); shorter programs are padded with no-ops
(fu = 0), as the design's memory holds zeros there. ``Core`` runs the same padded program.

``compare`` (the diff) and ``RTLTrace`` (a recorded run) need neither Verilator nor the RTL: the test suite
checks the core against traces recorded this way (``tests/fixtures/fpga_rtl_traces.json``, written by
``cosim --record``).

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .isa import Instruction, assemble, disassemble, encode

NUM_INSTRUCTIONS = 29          # the design's instruction memory (config_pkg.sv, NumInstructions)
RTL_ADDR_BITS = 16             # the design's DDR address (config_pkg.sv, DdrAddressWidth)
RTL_FILES = ("rtl.f", "config_pkg.sv", "matrix_unit.sv", "vector_registers.sv", "fus/vector_load_store.sv",
             "fus/rowwise_operation.sv", "fus/rms.sv", "fus/ternary_matmul/ternary_matmul.sv",
             "fus/ternary_matmul/matrix_fifo.sv")


class CosimError(ValueError):
    """The RTL folder, Verilator or a program cannot be used for co-simulation (a user error)."""


@dataclass
class RTLTrace:
    """One run: the program (assembly, without the padding no-ops), D, L, per instruction its issue and end
    cycles, and the program's cycles (start -> ready, the padded program)."""
    program: str
    D: int
    L: int
    issue: list
    end: list
    cycles: int
    name: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "D": self.D, "L": self.L, "program": self.program, "issue": self.issue,
                "end": self.end, "cycles": self.cycles}

    @classmethod
    def from_json(cls, d: dict) -> "RTLTrace":
        return cls(d["program"], d["D"], d["L"], list(d["issue"]), list(d["end"]), d["cycles"], d.get("name", ""))


# ----------------------------------------------------------------------------- programs

def pad(program) -> list[Instruction]:
    """The program as the design's instruction memory holds it: 29 entries, no-ops after the last."""
    program = list(program)
    if len(program) > NUM_INSTRUCTIONS:
        raise CosimError(f"program has {len(program)} instructions; the 2024 design's instruction memory "
                         f"holds {NUM_INSTRUCTIONS}")
    for pc, ins in enumerate(program):
        if ins.is_extension:
            raise CosimError(f"pc {pc}: {ins.text()} is an extension; the 2024 design runs only the ten "
                             "2024 instructions")
    return program + [Instruction("nop")] * (NUM_INSTRUCTIONS - len(program))


def rtl_word(ins: Instruction) -> str:
    """The design's 33-bit instruction word as a binary string: the 17 opcode/register bits, a 16-bit address."""
    return format(((encode(ins) >> 47) << RTL_ADDR_BITS) | (ins.addr & ((1 << RTL_ADDR_BITS) - 1)), "033b")


def random_program(rng: np.random.Generator, n: int, D: int) -> list[Instruction]:
    """``n`` random 2024 instructions (ldv sv add sub mul div exp sig norm tmatmul), addresses inside 64 KiB."""
    names = ["ldv", "sv", "add", "sub", "mul", "div", "exp", "sig", "norm", "tmatmul"]
    weights = np.array([3, 2, 1, 1, 1, 1, 1, 1, 1.5, 1.5])
    out = []
    for _ in range(n):
        name = names[rng.choice(len(names), p=weights / weights.sum())]
        r = [int(x) for x in rng.integers(0, 8, 3)]
        span = D * D // 4 if name == "tmatmul" else D
        addr = int(rng.integers(0, max(1, (1 << RTL_ADDR_BITS) - span)))
        text = {"ldv": f"ldv v{r[0]}, {addr}", "sv": f"sv v{r[0]}, {addr}", "norm": f"norm v{r[0]}",
                "exp": f"exp v{r[0]}, v{r[1]}", "sig": f"sig v{r[0]}, v{r[1]}",
                "tmatmul": f"tmatmul v{r[0]}, v{r[1]}, {addr}"}.get(name, f"{name} v{r[0]}, v{r[1]}, v{r[2]}")
        out.append(assemble(text)[0])
    return out


def directed_programs(D: int) -> dict:
    """Small programs that isolate one timing rule each (a lone instruction, pairs that must stall)."""
    M = D * D // 4
    progs = {
        "ldv": "ldv v1, 0",
        "sv": "sv v2, 0",
        "add": "add v1, v2, v3",
        "exp": "exp v1, v2",
        "norm": "norm v3",
        "tmatmul": "tmatmul v1, v2, 0",
        "ldv-ldv (unit busy)": "ldv v1, 0\nldv v2, 64",
        "ldv-tmatmul (memory port)": "ldv v1, 0\ntmatmul v2, v3, 64",
        "tmatmul-sv (memory port)": f"tmatmul v2, v3, 0\nsv v4, {M}",
        "ldv-add (register)": "ldv v1, 0\nadd v2, v1, v3",
        "add-add (unit busy)": "add v1, v2, v3\nadd v4, v5, v6",
        "tmatmul-add overlap": "tmatmul v1, v2, 0\nadd v3, v4, v5\nmul v6, v4, v5",
        "norm-norm": "norm v1\nnorm v2",
        "tmatmul-tmatmul": f"tmatmul v1, v2, 0\ntmatmul v3, v4, {M}",
        "sig-sv (WAR)": "sig v1, v2\nsv v2, 0",
    }
    return {k: assemble(v) for k, v in progs.items()}


# ----------------------------------------------------------------------------- the model side

def model_trace(program, D: int, L: int, cycle_limit: int | None = None) -> RTLTrace:
    """Run the padded program on ``Core`` (rtl2024, read and write latency L), in the trace's terms."""
    from .config import get_config
    from .core import Core
    program = list(program)
    cfg = get_config("rtl2024", D=D, read_latency=L, write_latency=L)
    stats = Core(cfg, pad(program), ddr_size=1 << 47, cycle_limit=cycle_limit).run()
    recs = sorted(stats.records, key=lambda r: r.pc)[:len(program)]
    return RTLTrace(disassemble(program), D, L, [r.issue for r in recs], [r.end for r in recs], stats.cycles)


@dataclass
class Diff:
    pc: int
    text: str
    field: str
    rtl: int
    model: int


def compare(rtl: RTLTrace, model: RTLTrace | None = None) -> list[Diff]:
    """Every instruction whose issue or end cycle differs (and the program's cycles, pc = -1). [] = exact."""
    model = model or model_trace(assemble(rtl.program), rtl.D, rtl.L)
    lines = rtl.program.splitlines()
    if len(rtl.issue) != len(lines) or len(model.issue) != len(lines):
        raise CosimError(f"trace {rtl.name!r}: {len(lines)} instructions but {len(rtl.issue)} RTL and "
                         f"{len(model.issue)} model records")
    out = []
    for pc, text in enumerate(lines):
        for f in ("issue", "end"):
            a, b = getattr(rtl, f)[pc], getattr(model, f)[pc]
            if a != b:
                out.append(Diff(pc, text, f, a, b))
    if rtl.cycles != model.cycles:
        out.append(Diff(-1, "(program: start -> ready)", "cycles", rtl.cycles, model.cycles))
    return out


def format_diff(rtl: RTLTrace, model: RTLTrace) -> str:
    """A per-instruction table: issue and end on both sides, '<-' where they differ."""
    rows = [f"{'pc':>3}  {'instruction':<26} {'rtl issue':>10} {'model':>10} {'rtl end':>10} {'model':>10}"]
    for pc, text in enumerate(rtl.program.splitlines()):
        ri, mi, re_, me = rtl.issue[pc], model.issue[pc], rtl.end[pc], model.end[pc]
        mark = "" if (ri, re_) == (mi, me) else "  <-"
        rows.append(f"{pc:>3}  {text:<26} {ri:>10} {mi:>10} {re_:>10} {me:>10}{mark}")
    mark = "" if rtl.cycles == model.cycles else "  <-"
    rows.append(f"     {'start -> ready (cycles)':<26} {rtl.cycles:>10} {model.cycles:>10}{mark}")
    return "\n".join(rows)


def load_traces(path) -> list[RTLTrace]:
    return [RTLTrace.from_json(d) for d in json.loads(Path(path).read_text())["traces"]]


def save_traces(traces, path, provenance: str) -> None:
    """Write recorded traces as JSON (numbers and the project's assembly only)."""
    Path(path).write_text(json.dumps({"provenance": provenance, "traces": [t.to_json() for t in traces]},
                                     separators=(",", ":")) + "\n")


# ----------------------------------------------------------------------------- the RTL side

TESTBENCH = r"""// Testbench for the 2024 matrix_unit, written for fpga_model's co-simulation.
// Usage: tb L CYCLE_LIMIT   (run in a folder holding tmi/process.memb)
// Prints: "issue PC CYCLE", "end PC CYCLE" for every instruction, then "cycles N" (or "timeout N").
#include "Vmatrix_unit.h"
#include "Vmatrix_unit___024root.h"
#include <cstdio>
#include <cstdlib>
static const int N = %(N)d;
int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: tb L CYCLE_LIMIT\n"); return 2; }
    long L = atol(argv[1]), limit = atol(argv[2]);
    Vmatrix_unit* top = new Vmatrix_unit;
    auto* r = top->rootp;
    top->clk_i = 0; top->rst_ni = 0; top->start_i = 0;
    top->ddr_r_valid_i = 0; top->ddr_w_done_i = 0; top->ddr_r_data_i = 0;
    for (int i = 0; i < 4; i++) { top->clk_i = 0; top->eval(); top->clk_i = 1; top->eval(); }
    top->rst_ni = 1;
    long issue[N], end[N], unit_pc[8];
    for (int i = 0; i < N; i++) issue[i] = end[i] = -1;
    for (int i = 0; i < 8; i++) unit_pc[i] = -1;
    long rd_due = -1, wr_due = -1;
    unsigned lfsr = 0xACE1u;
    for (long t = 0; t <= limit; t++) {
        top->start_i = (t == 0);
        top->ddr_r_valid_i = (rd_due == t);
        lfsr = lfsr * 1103515245u + 12345u;
        top->ddr_r_data_i = (lfsr >> 16) & 0xff;
        top->ddr_w_done_i = (wr_due == t);
        top->clk_i = 0; top->eval();
        if (t > 0 && top->ready_o) {
            for (int i = 0; i < N; i++) printf("issue %%d %%ld\nend %%d %%ld\n", i, issue[i], i, end[i]);
            printf("cycles %%ld\n", t);
            delete top; return 0;
        }
        if (rd_due == t) rd_due = -1;
        if (wr_due == t) wr_due = -1;
        int state = r->matrix_unit__DOT__state_q, pc = r->matrix_unit__DOT__pc_q;
        int cand = (state == 1) ? 0 : ((state == 2 && pc < N - 1) ? pc + 1 : -1);
        int busy[5] = {0, (int)r->matrix_unit__DOT__loadstore_busy,
                       (int)r->matrix_unit__DOT__rowwise_operation_busy,
                       (int)r->matrix_unit__DOT__tmatmul_busy, (int)r->matrix_unit__DOT__rms_busy};
        for (int u = 1; u < 5; u++) if (busy[u] && unit_pc[u] >= 0) end[unit_pc[u]] = t;
        if (cand >= 0 && !r->matrix_unit__DOT__stall) {
            int fu = (int)((r->matrix_unit__DOT__instruction >> 30) & 7);
            issue[cand] = t;
            end[cand] = t;
            if (fu >= 1 && fu <= 4) unit_pc[fu] = cand;
        }
        if (top->ddr_r_en_o || top->ddr_w_en_o) {
            if (rd_due >= 0 || wr_due >= 0 || (top->ddr_r_en_o && top->ddr_w_en_o)) {
                printf("error two memory requests outstanding at cycle %%ld\n", t); return 1;
            }
            if (top->ddr_r_en_o) rd_due = t + L; else wr_due = t + L;
        }
        top->clk_i = 1; top->eval();
    }
    printf("timeout %%ld\n", limit);
    delete top;
    return 0;
}
"""


def check_rtl(rtl_dir) -> Path:
    """The folder must be the 2024 design's ``rtl/``: its files, and the parameters this harness sets."""
    d = Path(rtl_dir)
    if not d.is_dir():
        raise CosimError(f"--rtl {rtl_dir}: no such folder (expected the rtl/ folder of "
                         "Mattiwos/ternary_matmul_afu)")
    missing = [f for f in RTL_FILES if not (d / f).is_file()]
    if missing:
        raise CosimError(f"--rtl {rtl_dir}: not the 2024 design's rtl/ folder (missing {', '.join(missing)})")
    pkg = (d / "config_pkg.sv").read_text(errors="replace")
    mu = (d / "matrix_unit.sv").read_text(errors="replace")
    expected = [(pkg, r"parameter\s+D\s*=\s*\d+\s*;", "config_pkg.sv: parameter D"),
                (pkg, rf"localparam\s+NumInstructions\s*=\s*{NUM_INSTRUCTIONS}\s*;",
                 f"config_pkg.sv: NumInstructions = {NUM_INSTRUCTIONS}"),
                (pkg, rf"localparam\s+DdrAddressWidth\s*=\s*{RTL_ADDR_BITS}\s*;",
                 f"config_pkg.sv: DdrAddressWidth = {RTL_ADDR_BITS}"),
                (mu, r"module\s+matrix_unit\b", "matrix_unit.sv: module matrix_unit"),
                (mu, r"\bstall\b", "matrix_unit.sv: the stall signal"),
                (mu, r"tmi/process\.memb", "matrix_unit.sv: the instruction memory file tmi/process.memb")]
    for text, pattern, what in expected:
        if not re.search(pattern, text):
            raise CosimError(f"--rtl {rtl_dir}: not the expected 2024 design (did not find {what})")
    return d


def verilator() -> str:
    exe = shutil.which("verilator")
    if exe is None:
        raise CosimError("verilator not found on PATH (Debian/Ubuntu: apt-get install verilator)")
    return exe


def build(rtl_dir, D: int, build_dir) -> Path:
    """Copy the design into ``build_dir`` with ``parameter D`` set, add the testbench, compile. Returns tb."""
    src, out = check_rtl(rtl_dir), Path(build_dir)
    exe = verilator()
    if D < 4 or D & (D - 1):
        raise CosimError(f"--D {D}: the 2024 design needs D a power of two >= 4 (its averaging tree)")
    shutil.copytree(src, out / "rtl", dirs_exist_ok=True)
    pkg = out / "rtl" / "config_pkg.sv"
    pkg.write_text(re.sub(r"parameter\s+D\s*=\s*\d+\s*;", f"parameter D = {D};", pkg.read_text()))
    (out / "tb.cpp").write_text(TESTBENCH % {"N": NUM_INSTRUCTIONS})
    cmd = [exe, "--cc", "--exe", "--build", "-j", "2", "-O2", "-Wno-fatal", "-Wno-lint", "-Wno-style",
           "--public-flat-rw", "--top-module", "matrix_unit", "-f", "rtl/rtl.f", "tb.cpp", "-o", "tb"]
    p = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
    tb = out / "obj_dir" / "tb"
    if p.returncode != 0 or not tb.is_file():
        raise CosimError(f"verilator failed to build the design (D = {D}):\n{(p.stdout + p.stderr)[-3000:]}")
    return tb


def run_rtl(tb: Path, program, D: int, L: int, name: str = "", cycle_limit: int = 50_000_000) -> RTLTrace:
    """Run one program on the compiled design. Returns its trace."""
    if L < 1:
        raise CosimError(f"--L {L}: the testbench memory answers one or more cycles after a request (L >= 1)")
    prog = pad(program)
    with tempfile.TemporaryDirectory(prefix="fpga_cosim_run_") as tmp:
        (Path(tmp) / "tmi").mkdir()
        (Path(tmp) / "tmi" / "process.memb").write_text("\n".join(rtl_word(i) for i in prog) + "\n")
        luts = Path(tmp) / "rtl" / "luts"           # lookup tables: contents do not affect timing
        luts.mkdir(parents=True)
        for f, n in (("exp_lut.memh", 256), ("sig_lut.memh", 256), ("rms_sqa_lut.memh", 256),
                     ("rms_sqt_lut.memh", 512)):
            (luts / f).write_text("00\n" * n)
        p = subprocess.run([str(tb), str(L), str(cycle_limit)], cwd=tmp, capture_output=True, text=True)
    n = len(list(program))
    issue, end, cycles = [None] * len(prog), [None] * len(prog), None
    for line in p.stdout.splitlines():
        k, *v = line.split()
        if k == "issue":
            issue[int(v[0])] = int(v[1])
        elif k == "end":
            end[int(v[0])] = int(v[1])
        elif k == "cycles":
            cycles = int(v[0])
        elif k in ("timeout", "error"):
            raise CosimError(f"RTL run {name!r}: {line}")
    if cycles is None:
        raise CosimError(f"RTL run {name!r} gave no result (exit {p.returncode}): {p.stderr[-500:]}")
    return RTLTrace(disassemble(program), D, L, issue[:n], end[:n], cycles, name)


def cosim_programs(D: int, n_random: int, seed: int, include_paper: bool = True) -> dict:
    """The programs a cosim run compares: directed ones, the paper's 29, ``n_random`` random ones."""
    from .programs import paper_2024_program
    progs = {f"directed {k}": v for k, v in directed_programs(D).items()}
    if include_paper:
        progs["paper 29-instruction program"] = paper_2024_program(D, address_bits=RTL_ADDR_BITS)
    rng = np.random.default_rng(seed)
    for i in range(n_random):
        progs[f"random {i} (seed {seed})"] = random_program(rng, int(rng.integers(1, NUM_INSTRUCTIONS + 1)), D)
    return progs


def cosim(rtl_dir, Ds, Ls, n_random: int, seed: int, show=print, build_dir: str | None = None,
          record: list | None = None, paper: bool = True) -> int:
    """Build per D, run every program at every L on both sides, print each diff. Returns the mismatch count.

    ``build_dir``: keep the builds there (and reuse one already built); default a temporary folder.
    ``record``: a list that receives every RTL trace (``RTLTrace``).
    """
    check_rtl(rtl_dir)
    verilator()
    bad = total = 0
    root = Path(build_dir) if build_dir else Path(tempfile.mkdtemp(prefix="fpga_cosim_build_"))
    try:
        for D in Ds:
            tb = root / f"D{D}" / "obj_dir" / "tb"
            if not tb.is_file():
                show(f"building the design with D = {D} (verilator, about a minute) in {root / f'D{D}'} ...")
                tb = build(rtl_dir, D, root / f"D{D}")
            progs = cosim_programs(D, n_random, seed, include_paper=paper and D >= 16)
            for L in Ls:
                for name, prog in progs.items():
                    rtl = run_rtl(tb, prog, D, L, name)
                    if record is not None:
                        record.append(rtl)
                    model = model_trace(prog, D, L)
                    diffs = compare(rtl, model)
                    total += 1
                    if diffs:
                        bad += 1
                        show(f"MISMATCH D = {D}, L = {L}, {name}:\n{format_diff(rtl, model)}")
                    else:
                        show(f"same  D = {D:<4} L = {L:<3} {name:<36} {rtl.cycles:>10} cycles")
    finally:
        if build_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    show(f"{total - bad} of {total} runs identical (every instruction's issue and end cycle, and start -> ready)")
    return bad


def verilator_version() -> str:
    p = subprocess.run([verilator(), "--version"], capture_output=True, text=True)
    return p.stdout.strip()
