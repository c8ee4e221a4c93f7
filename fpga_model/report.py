"""Reports of one simulated token: where the cycles go, what stalls, what moves over the port, energy, RAM.

Every number carries its provenance:
- *simulated*: counted by the cycle-level core (cycles, stalls, traffic, utilisation);
- *derived*: arithmetic on simulated numbers and the configuration (seconds = cycles / clock, tokens/s,
  bandwidth, energy = board power x time);
- the board power itself is *quoted* (13 W, the paper's abstract) or a *claim* (52.5 W, the successor notes),
  applied as a constant while the core runs: the paper read the board's rail sensors (idle vs active) and
  did not publish a per-unit split, so this model has no per-unit power term.

On-chip memory counts every RAM of the core in bits and in Stratix 10 M20K blocks (20 Kbit; the block is
used as 512 x 40, 1K x 20 or 2K x 10, whichever needs fewest blocks).

Taught in chapter 13 (``chapters/13-fpga-where-the-cycles-go.md``).
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

from .config import CoreConfig, ceil_div
from .core import Stats
from .formats import get_format
from .isa import UNITS

M20K_MODES = ((512, 40), (1024, 20), (2048, 10))


def m20k_blocks(depth: int, width: int) -> int:
    """Fewest M20K blocks for a depth x width RAM."""
    return min(ceil_div(depth, d) * ceil_div(width, w) for d, w in M20K_MODES)


def layer_of(tag: str) -> str:
    m = re.match(r"(L\d+)\.", tag)
    return m.group(1) if m else (tag.split(".")[0] or "untagged")


def part_of(tag: str) -> str:
    """'L0.attn.f_proj.load' -> 'attn.f_proj' (the model part, without layer and load / spill suffix)."""
    t = re.sub(r"^L\d+\.", "", tag)
    return re.sub(r"\.(load|spill)$", "", t) or "untagged"


def on_chip_memory(config: CoreConfig, number_format: str, program_len: int, max_rms_buffer: int) -> dict:
    """Every RAM of the core: (depth, width, copies) -> bits and M20K blocks."""
    D, lanes = config.D, config.lanes
    q43 = get_format(number_format).name == "q4.3"
    word = 8 if q43 else 32
    rams = {
        "vector registers (8 x D)": (D, word, 8 * lanes),
        "tmatmul accumulators": (D, 16 if q43 else 32, lanes),
        "tmatmul weight FIFO": (config.fifo_bytes, 8, 1),
        "rms scratch (2024: D/2 x 16)": (D // 2, 16, lanes),
        "rms buffer of squares (extension)": (max(max_rms_buffer, 1), 16 if q43 else 32, lanes),
        "instruction memory": (program_len, 64, 1),
        "scalar registers (extension)": (8, 32, lanes),
    }
    if q43:
        rams.update({"exp / sig / silu LUTs": (256, 8, 3), "square LUT": (256, 9, 1), "sqrt LUT": (512, 8, 1)})
    out, tb, tk = {}, 0, 0
    for name, (depth, width, copies) in rams.items():
        bits, blocks = depth * width * copies, m20k_blocks(depth, width) * copies
        out[name] = {"depth": depth, "width": width, "copies": copies, "bits": bits, "m20k": blocks}
        tb, tk = tb + bits, tk + blocks
    out["total"] = {"bits": tb, "m20k": tk}
    return out


def summarize(stats: Stats, config: CoreConfig, number_format: str | None = None, program_len: int = 0,
              tokens_per_run: int = 1) -> dict:
    """One run of the token program -> a JSON-able report (see the module docstring for the labels)."""
    fmt = get_format(number_format or config.number_format).name
    cyc = stats.cycles
    seconds = cyc / config.clock_hz
    busy_by_layer, busy_by_part = defaultdict(Counter), defaultdict(Counter)
    first_issue = {}
    for r in stats.records:
        layer = layer_of(r.tag)
        first_issue.setdefault(layer, r.issue)
        if r.unit:
            busy_by_layer[layer][r.unit] += r.end - r.start + 1
            busy_by_part[part_of(r.tag)][r.unit] += r.end - r.start + 1
    order = sorted(first_issue, key=first_issue.get)
    spans = {l: (first_issue[order[i + 1]] if i + 1 < len(order) else cyc) - first_issue[l]
             for i, l in enumerate(order)}
    traffic_total = sum(stats.traffic.values())
    tok_s = tokens_per_run * config.lanes / seconds if seconds else float("inf")
    energy = config.board_power_w * seconds / (tokens_per_run * config.lanes)
    return {
        "config": config.name, "number_format": fmt, "D": config.D, "clock_MHz": config.clock_hz / 1e6,
        "lanes": config.lanes,
        "cycles": {"value": cyc, "label": "simulated"},
        "seconds_per_run": {"value": seconds, "label": "derived: cycles / clock"},
        "tokens_per_second": {"value": tok_s, "label": "derived: lanes / seconds per run (core only, host excluded)"},
        "unit_busy_cycles": {u: stats.unit_busy.get(u, 0) for u in UNITS},
        "utilisation": {u: stats.unit_busy.get(u, 0) / cyc if cyc else 0.0 for u in UNITS},
        "stalls": dict(stats.stalls.most_common()),
        "issue_cycles": cyc - sum(stats.stalls.values()),
        "cycles_by_layer": spans,
        "busy_by_layer": {l: dict(busy_by_layer[l]) for l in order},
        "busy_by_part": {p: dict(c) for p, c in sorted(busy_by_part.items(), key=lambda kv: -sum(kv[1].values()))},
        "traffic_bytes": dict(stats.traffic), "traffic_total_bytes": traffic_total,
        "achieved_bandwidth_GBps": {"value": traffic_total / seconds / 1e9 if seconds else 0.0,
                                    "label": "derived: bytes moved / time"},
        "energy_J_per_token": {"value": energy,
                               "label": f"derived: {config.board_power_w} W board power "
                                        f"({'quoted' if config.name == 'rtl2024' else 'claim'}) x time / tokens"},
        "on_chip_memory": on_chip_memory(config, fmt, program_len, stats.max_rms_buffer),
    }


def text(rep: dict) -> str:
    """The report as a readable table."""
    cyc = rep["cycles"]["value"]
    lines = [f"config {rep['config']} ({rep['number_format']}, D = {rep['D']}, {rep['clock_MHz']:g} MHz, "
             f"{rep['lanes']} lane(s))",
             f"  cycles per run          {cyc:>14,}   (simulated)",
             f"  time per run            {rep['seconds_per_run']['value'] * 1e3:>14.4g} ms (derived)",
             f"  tokens / s              {rep['tokens_per_second']['value']:>14.4g}   (derived)",
             f"  energy / token          {rep['energy_J_per_token']['value']:>14.4g} J  "
             f"({rep['energy_J_per_token']['label']})",
             "", "  unit        busy cycles   utilisation"]
    for u, b in rep["unit_busy_cycles"].items():
        lines.append(f"  {u:<10} {b:>13,}   {rep['utilisation'][u]:>10.1%}")
    lines += ["", "  issue / stall reason          cycles     share", f"  {'issue':<26} {rep['issue_cycles']:>10,}"
              f"   {rep['issue_cycles'] / cyc:>7.1%}"]
    for k, v in rep["stalls"].items():
        lines.append(f"  {k:<26} {v:>10,}   {v / cyc:>7.1%}")
    lines += ["", "  memory traffic class        bytes"]
    for k, v in sorted(rep["traffic_bytes"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<22} {v:>12,}")
    lines += ["", "  layer      cycles (issue span)"]
    for k, v in rep["cycles_by_layer"].items():
        lines.append(f"  {k:<10} {v:>12,}")
    lines += ["", "  model part             tmatmul busy   other units busy"]
    for k, v in list(rep["busy_by_part"].items())[:12]:
        tm = v.get("tmatmul", 0)
        lines.append(f"  {k:<22} {tm:>12,}   {sum(v.values()) - tm:>12,}")
    m = rep["on_chip_memory"]
    lines += ["", f"  on-chip memory: {m['total']['bits']:,} bits, {m['total']['m20k']} M20K blocks"]
    for k, v in m.items():
        if k != "total":
            lines.append(f"    {k:<36} {v['depth']:>6} x {v['width']:<3} x {v['copies']:<3} "
                         f"{v['bits']:>10,} bits {v['m20k']:>4} M20K")
    return "\n".join(lines)


def to_json(rep: dict) -> str:
    return json.dumps(rep, indent=2, default=float)
