"""Command line: ``python -m fpga_model run|step|trace|program|configs|paper-figures ...`` (from the repo root).

    run            generate tokens on the simulated core; report of the last token (table or --json)
    step           one token, N instructions at a time: the trace lines, then registers and units
    trace          one token, one line per cycle (--start / --cycles select a window)
    program        the compiled token program as assembly, with the model part of every instruction
    configs        the parameter table of every configuration
    paper-figures  the paper's numbers, simulated / derived / quoted (--json: one JSON object)

The model is the tiny trained one (``--model tiny``, trained in a few seconds) or the golden fixture of the
test suite (``--model golden``, minimmf/golden/official_A.npz: random weights, no training).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def load_model(name: str):
    if name == "golden":
        from minimmf import golden
        return golden.model()
    from .tiny import tiny_model
    return tiny_model()


def _sim(args):
    from .host import FPGASim
    model = load_model(args.model)
    kw = {"D": args.D} if args.D else {"D": model.config.hidden_size}
    return model, FPGASim(model, args.config, number_format=args.format, head_on_core=args.head_on_core, **kw)


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
        a, n = (int(x, 0) for x in args.mem.split(":"))
        print(f"DDR[{a:#x}:{a + n:#x}] = {st.ddr.data[a:a + n].tolist()}")


def cmd_step(args) -> int:
    _, sim = _sim(args)
    core = sim.new_core(ord(args.prompt[0]) if args.model == "tiny" else 0)
    for _ in range(args.instructions):
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
    core = sim.new_core(0)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fpga_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def model_args(sp):
        sp.add_argument("--model", choices=["tiny", "golden"], default="tiny")
        sp.add_argument("--config", default="rtl2024", help="rtl2024 or scaled")
        sp.add_argument("--format", default="faithful", choices=["faithful", "q4.3"])
        sp.add_argument("--D", type=int, default=None, help="vector length (default: the model's hidden size)")
        sp.add_argument("--head-on-core", action="store_true", help="final norm and LM head on the core")
        sp.add_argument("--prompt", default="def ")

    sp = sub.add_parser("run", help="generate tokens; report the last one")
    model_args(sp)
    sp.add_argument("--tokens", type=int, default=8)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--gantt", default=None, help="write a unit-occupancy chart (PNG) here")
    sp.set_defaults(fn=cmd_run)
    sp = sub.add_parser("step", help="step one token N instructions at a time")
    model_args(sp)
    sp.add_argument("--instructions", type=int, default=5)
    sp.add_argument("--lines", type=int, default=3, help="trace lines shown at each end of a long stall")
    sp.add_argument("--mem", default=None, help="also print DDR bytes ADDR:N")
    sp.set_defaults(fn=cmd_step)
    sp = sub.add_parser("trace", help="one line per cycle")
    model_args(sp)
    sp.add_argument("--start", type=int, default=0)
    sp.add_argument("--cycles", type=int, default=100)
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
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
