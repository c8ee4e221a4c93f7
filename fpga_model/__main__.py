"""Command line: ``python -m fpga_model run|step|trace|program|configs|paper-figures|cosim ...``.

    run            generate tokens on the simulated core; report of the last token (table or --json)
    step           one token in an interactive stepper (breakpoints, registers, watches; 'help' inside);
                   --batch: N instructions at a time, printed, then registers and units
    trace          one token, one line per cycle (--start / --cycles select a window); --vcd FILE: the
                   whole token as a waveform (GTKWave, Surfer)
    program        the compiled token program as assembly, with the model part of every instruction
    configs        the parameter table of every configuration
    paper-figures  the paper's numbers, simulated / derived / quoted (--json: one JSON object)
    cosim          the same programs on the 2024 RTL (Verilator) and on the core, instruction by instruction

A bad argument or input gives one line ``fpga_model: error: ...`` and exit status 2 (``--debug``: the
traceback too); an internal error gives exit status 1.

The model is the tiny trained one (``--model tiny``, trained in a few seconds) or the golden fixture of the
test suite (``--model golden``, minimmf/golden/official_A.npz: random weights, no training).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def load_model(name: str):
    if name == "golden":
        from minimmf import golden
        return golden.model()
    from .tiny import tiny_model
    return tiny_model()


class UsageError(Exception):
    """A bad command line or input: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def positive_multiple_of_4(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 4, got {text!r}") from None
    if v < 4 or v % 4:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 4 (4 weights per byte), got {v}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {v}")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {v}")
    return v


def mem_range(text: str) -> tuple[int, int]:
    try:
        a, n = (int(x, 0) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ADDR:N (e.g. 0x100:16), got {text!r}") from None
    if a < 0 or n < 1:
        raise argparse.ArgumentTypeError(f"expected ADDR >= 0 and N >= 1, got {text!r}")
    return a, n


def output_file(text: str) -> Path:
    p = Path(text)
    if not p.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(p.parent)!r} does not exist")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file name")
    return p


def int_list(kind):
    def parse(text: str) -> list[int]:
        return [kind(t) for t in text.split(",")]
    return parse


def _sim(args):
    from .host import FPGASim
    model = load_model(args.model)
    kw = {"D": args.D} if args.D else {"D": model.config.hidden_size}
    if model.config.hidden_size % kw["D"]:
        raise UsageError(f"argument --D: the model's hidden size {model.config.hidden_size} is not a multiple "
                         f"of D = {kw['D']}")
    if args.latency is not None:
        kw.update(read_latency=args.latency, write_latency=args.latency)
    return model, FPGASim(model, args.config, number_format=args.format, head_on_core=args.head_on_core, **kw)


def _core(args, sim, token):
    core = sim.new_core(token)
    core.cycle_limit = args.max_cycles
    return core


def cmd_run(args) -> int:
    from minimmf.generate import generate

    from . import report
    from .gantt import plot_occupancy
    from .tiny import prompt_bytes
    model, sim = _sim(args)
    prompt = prompt_bytes(args.prompt)
    t0 = time.perf_counter()
    toks = sim.generate(prompt, args.tokens)
    wall = time.perf_counter() - t0
    ref = list(generate(model, prompt, args.tokens, temperature=0))
    rep = report.summarize(sim.last_stats, sim.config, sim.fmt.name, len(sim.program))
    rep["generated"] = {"tokens": toks, "text": bytes(t % 256 for t in toks).decode("utf-8", "replace"),
                        "minimmf_tokens": ref, "equal_to_minimmf": toks == ref}
    rep["simulator_seconds_per_token"] = wall / (len(prompt) + args.tokens)
    if args.gantt:
        plot_occupancy(sim.last_stats, args.gantt, title=f"one token on {sim.config.name}")
    if args.json:
        print(report.to_json(rep))
    else:
        g = rep["generated"]
        print(f"prompt {args.prompt!r} -> {g['text']!r}  (minimmf greedy: "
              f"{bytes(t % 256 for t in ref).decode('utf-8', 'replace')!r}, equal: {g['equal_to_minimmf']})")
        print(f"simulator: {rep['simulator_seconds_per_token']:.2f} s per token (wall clock)\n")
        print(report.text(rep))
    return 0


def _print_state(core, args) -> None:
    st = core.state
    print("\nvector registers (decoded, first 8 elements):")
    for i in range(8):
        vals = st.fmt.decode_vector(st.v[i])[:8]
        print(f"  v{i}: " + " ".join(f"{x:9.4g}" for x in vals))
    print("scalar registers: " + " ".join(f"s{i}={x:.6g}" for i, x in enumerate(st.s)))
    for u, d in core.unit_status().items():
        if d:
            d = {k: (v[:8].tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}
            print(f"unit {u}: {d}")
    if args.mem:
        a, n = args.mem
        st.ddr.check_range(a, n, "--mem")
        print(f"DDR[{a:#x}:{a + n:#x}] = {st.ddr.data[a:a + n].tolist()}")


def _token(args) -> int:
    return ord(args.prompt[0]) if (args.model == "tiny" and args.prompt) else 0


def cmd_step(args) -> int:
    _, sim = _sim(args)
    core = _core(args, sim, _token(args))
    if not (args.batch or args.instructions or args.mem):
        from .stepper import Stepper
        interactive = sys.stdin.isatty()
        s = Stepper(core, stdin=None if interactive else sys.stdin, echo=not interactive, max_lines=args.lines)
        if not interactive:
            s.prompt = "(fpga) "
        s.cmdloop()
        return 0
    for _ in range(args.instructions or 5):
        lines = core.step_instruction()
        if len(lines) > 2 * args.lines:
            lines = lines[:args.lines] + [f"  ... {len(lines) - 2 * args.lines} cycles ..."] + lines[-args.lines:]
        print("\n".join(lines))
        if core.done:
            break
    _print_state(core, args)
    return 0


def cmd_trace(args) -> int:
    _, sim = _sim(args)
    core = _core(args, sim, _token(args))
    if args.vcd:
        from .waves import write_vcd
        stats = core.run()
        tmp = args.vcd.with_name(args.vcd.name + ".partial")
        try:
            write_vcd(core, tmp)
            tmp.replace(args.vcd)
        finally:
            tmp.unlink(missing_ok=True)
        print(f"wrote {args.vcd}: {stats.cycles:,} cycles, {len(stats.records):,} instructions")
        return 0
    while core.cycle < args.start and not core.done:
        core.step_cycle()
    for line in core.trace(args.cycles):
        print(line)
    return 0


def cmd_program(args) -> int:
    _, sim = _sim(args)
    for pc, ins in enumerate(sim.program):
        print(f"{pc:5d}  {ins.text():<40} ; {ins.tag}")
    return 0


def cmd_configs(args) -> int:
    from .config import config_table
    print(json.dumps(config_table(), indent=2))
    return 0


def cmd_figures(args) -> int:
    from .figures import paper_figures
    F = paper_figures(quick=args.quick)
    if args.json:
        print(json.dumps(F, indent=2))
    else:
        for k, v in F.items():
            print(f"{k:<40} {v['value']:>14.6g} {v['unit']:<10} {v['kind']:<9} {v['config']}")
    return 0


def cmd_cosim(args) -> int:
    from . import cosim
    for D in args.D:
        if D & (D - 1):
            raise UsageError(f"argument --D: the 2024 design needs a power of two (its averaging tree), got {D}")
    record = [] if args.record else None
    bad = cosim.cosim(args.rtl, args.D, args.L, args.random, args.seed, build_dir=args.build_dir, record=record)
    if args.record:
        prov = (f"recorded with: python -m fpga_model cosim --rtl RTL --D {','.join(map(str, args.D))} --L "
                f"{','.join(map(str, args.L))} --random {args.random} --seed {args.seed}; RTL = rtl/ of "
                "Mattiwos/ternary_matmul_afu at b0345e7, Verilator " + cosim.verilator_version())
        cosim.save_traces(record, args.record, prov)
        print(f"recorded {len(record)} RTL traces in {args.record}")
    return 1 if bad else 0


def build_parser() -> Parser:
    from .config import CONFIGS
    p = Parser(prog="python -m fpga_model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    def model_args(sp):
        sp.add_argument("--model", choices=["tiny", "golden"], default="tiny")
        sp.add_argument("--config", default="rtl2024", choices=list(CONFIGS), help="rtl2024 or scaled")
        sp.add_argument("--format", default="faithful", choices=["faithful", "q4.3"])
        sp.add_argument("--D", type=positive_multiple_of_4, default=None,
                        help="vector length (default: the model's hidden size)")
        sp.add_argument("--latency", type=positive_int, default=None,
                        help="memory read and write latency in cycles (default: the configuration's)")
        sp.add_argument("--head-on-core", action="store_true", help="final norm and LM head on the core")
        sp.add_argument("--prompt", default="def ")
        sp.add_argument("--max-cycles", type=positive_int, default=1 << 40,
                        help="stop with an error if one token takes more cycles than this")

    sp = sub.add_parser("run", help="generate tokens; report the last one")
    model_args(sp)
    sp.add_argument("--tokens", type=positive_int, default=8)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--gantt", type=output_file, default=None, help="write a unit-occupancy chart (PNG) here")
    sp.set_defaults(fn=cmd_run)
    sp = sub.add_parser("step", help="step one token: an interactive stepper ('help' inside), or --batch")
    model_args(sp)
    sp.add_argument("--batch", action="store_true", help="print --instructions instructions and exit")
    sp.add_argument("--instructions", type=positive_int, default=None,
                    help="with --batch (implied): instructions to print (default 5)")
    sp.add_argument("--lines", type=positive_int, default=3, help="trace lines shown at each end of a long stall")
    sp.add_argument("--mem", type=mem_range, default=None, help="with --batch (implied): also print DDR bytes ADDR:N")
    sp.set_defaults(fn=cmd_step)
    sp = sub.add_parser("trace", help="one line per cycle, or --vcd FILE")
    model_args(sp)
    sp.add_argument("--start", type=non_negative_int, default=0)
    sp.add_argument("--cycles", type=positive_int, default=100)
    sp.add_argument("--vcd", type=output_file, default=None, help="write the whole token as a VCD waveform")
    sp.set_defaults(fn=cmd_trace)
    sp = sub.add_parser("program", help="print the compiled program")
    model_args(sp)
    sp.set_defaults(fn=cmd_program)
    sp = sub.add_parser("configs", help="the parameter table")
    sp.set_defaults(fn=cmd_configs)
    sp = sub.add_parser("paper-figures", help="the paper's numbers")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--quick", action="store_true", help="skip the 1.3B simulations")
    sp.set_defaults(fn=cmd_figures)
    sp = sub.add_parser("cosim", help="compare the core with the 2024 RTL under Verilator")
    sp.add_argument("--rtl", required=True, help="the rtl/ folder of Mattiwos/ternary_matmul_afu (b0345e7)")
    sp.add_argument("--D", type=int_list(positive_multiple_of_4), default=[16],
                    help="vector lengths, comma-separated powers of two (default 16)")
    sp.add_argument("--L", type=int_list(positive_int), default=[1, 4, 12],
                    help="memory latencies, comma-separated (default 1,4,12)")
    sp.add_argument("--random", type=non_negative_int, default=20, help="random programs per D (default 20)")
    sp.add_argument("--seed", type=non_negative_int, default=0)
    sp.add_argument("--build-dir", default=None, help="keep (and reuse) the Verilator builds here")
    sp.add_argument("--record", type=output_file, default=None, help="write the RTL traces as JSON here")
    sp.set_defaults(fn=cmd_cosim)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    from .cosim import CosimError
    from .isa import ISAError
    from .memory import SimError
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except (UsageError, CosimError, ISAError, SimError) as e:
        if debug:
            traceback.print_exc()
        print(f"fpga_model: error: {e}".splitlines()[0] if not isinstance(e, CosimError) else
              f"fpga_model: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fpga_model: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                                      # the reader went away (e.g. `| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:                                       # noqa: BLE001 - the CLI's last resort
        if debug:
            traceback.print_exc()
        print(f"fpga_model: internal error: {type(e).__name__}: {e} (please report it, with the output of the "
              "same command with --debug)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
