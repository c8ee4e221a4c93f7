"""The paper's FPGA numbers, reproduced or explained: ``python -m fpga_model paper-figures --json``.

Each figure is ``{"value", "unit", "config", "kind", "how"}`` where kind is

- ``simulated``: counted by the cycle-level core (timing only: the models are shapes, no weights);
- ``derived``: arithmetic on simulated or quoted numbers (the formula is in ``how``);
- ``quoted``: from the paper (arXiv 2406.02528) or, for the successor, a claim from the authors' notes
  on ``sifferman/ternip`` (see ../shared/FPGA.md).

Taught in chapter 13 (``chapters/13-fpga-where-the-cycles-go.md``).
"""
from __future__ import annotations

import copy
import functools

from minimmf import MMfreeConfig

from .config import get_config
from .programs import time_paper_2024, time_rwkv_2024, time_token

MODELS = {
    "370M": MMfreeConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, intermediate_size=2816),
    "1.3B": MMfreeConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, intermediate_size=5632),
}
HUMAN_READING_TOK_S = 5.0     # assumed: ~250 words per minute is about 5 tokens per second


def fig(value, unit, config, kind, how) -> dict:
    assert kind in ("simulated", "derived", "quoted")
    return {"value": value, "unit": unit, "config": config, "kind": kind, "how": how}


def weight_bytes(compiled) -> int:
    return sum(r.end - r.start for r in compiled.layout.regions if r.cls == "weights")


def paper_figures(quick: bool = False) -> dict:
    """All figures as one dict. ``quick`` skips the 1.3B simulations (the slowest, a few seconds).

    Computed once per process (tests and chapters share it); each call returns a fresh copy.
    """
    return copy.deepcopy({**_figures_2024_and_370m(), **({} if quick else _figures_1_3b())})


@functools.lru_cache(maxsize=None)
def _figures_2024_and_370m() -> dict:
    F = {}
    rtl = get_config("rtl2024")
    cmd = "python -m fpga_model paper-figures"

    # -- 1. the 2024 program: 43 ms at d = 512, 60 MHz, 8-bit single-outstanding port
    F["paper_block_ms"] = fig(43.0, "ms", "D5005, d = 512, 60 MHz", "quoted",
                              "paper: 'completes a forward-pass of a block in 43 ms at d = 512 ... 60 MHz'")
    sweep = {L: time_paper_2024("rtl2024", read_latency=L, write_latency=L).cycles / rtl.clock_hz * 1e3
             for L in range(8, 17)}
    lr = min(sweep, key=lambda k: abs(sweep[k] - 43.0))
    F["paper_program_ms"] = fig(sweep[rtl.read_latency], "ms", f"rtl2024, D = 512, L = {rtl.read_latency}",
                                "simulated", f"{cmd}: the 29-instruction program of the 2024 repository "
                                "(3 tmatmul of 512 x 512), start -> ready; equal to the RTL under Verilator")
    F["rwkv_2024_program_ms"] = fig(time_rwkv_2024("rtl2024").cycles / rtl.clock_hz * 1e3, "ms",
                                    f"rtl2024, D = 512, L = {rtl.read_latency}", "simulated",
                                    f"{cmd}: the reconstruction with the same instruction mix")
    F["implied_read_latency_cycles"] = fig(lr, "cycles", "rtl2024, D = 512", "simulated",
                                           "the L (reads and writes) in 8..16 whose simulated program time is "
                                           "closest to 43 ms: " + ", ".join(f"{k}: {v:.2f} ms" for k, v in sweep.items()))
    F["implied_read_latency_ns"] = fig(lr / rtl.clock_hz * 1e9, "ns", "rtl2024", "derived", "L / 60 MHz")
    F["rtl2024_ldv_bandwidth_MBps"] = fig(rtl.clock_hz / lr / 1e6, "MB/s", "rtl2024", "derived",
                                          "ldv / sv: one byte per L cycles at 60 MHz")
    F["rtl2024_weight_bandwidth_MBps"] = fig(rtl.clock_hz / (lr + 1) / 1e6, "MB/s", "rtl2024", "derived",
                                             "tmatmul's weight reader: one byte per L + 1 cycles at 60 MHz")
    floor = time_paper_2024("rtl2024", read_latency=1, write_latency=1).cycles / rtl.clock_hz * 1e3
    F["compute_floor_ms"] = fig(floor, "ms", "rtl2024 with L = 1 (reads and writes)", "simulated",
                                "the same program with the fastest memory the design can use (one MAC per cycle)")
    F["compute_floor_ms_derived"] = fig(3 * 512 * 512 / rtl.clock_hz * 1e3, "ms", "rtl2024", "derived",
                                        "3 x 512^2 ternary MACs at one per cycle, 60 MHz")

    # -- 2. the MLGRU + GLU block at d = 512 on rtl2024
    mc512 = MMfreeConfig(vocab_size=256, hidden_size=512, num_hidden_layers=1)
    s, c = time_token(mc512, "rtl2024", head_on_core=False)
    F["mlgru_glu_block_d512_ms"] = fig(s.cycles / rtl.clock_hz * 1e3, "ms", "rtl2024, D = 512, Q4.3, I = 1536",
                                       "simulated", f"{cmd}: one compiled MLGRU + GLU block ({len(c.program)} "
                                       f"instructions, 4 x 512^2 + 3 x 512 x 1536 ternary weights)")
    F["mlgru_glu_block_d512_tmatmul_share"] = fig(s.unit_busy["tmatmul"] / s.cycles, "fraction", "rtl2024",
                                                  "simulated", "tmatmul busy cycles / all cycles")

    # -- 3. the 370M model per token, rtl2024 (D = 1024, like the 2024 board build; rtl/ sets 512) and scaled
    s, c = time_token(MODELS["370M"], "rtl2024", D=1024)
    rtl_370 = rtl.clock_hz / s.cycles
    F["370M_rtl2024_s_per_token"] = fig(s.cycles / rtl.clock_hz, "s", "rtl2024, D = 1024, LM head on core",
                                        "simulated", f"{cmd}: 24 blocks + ternary LM head, one token")
    F["370M_rtl2024_tok_s"] = fig(rtl_370, "tok/s", "rtl2024", "derived", "60 MHz / cycles per token")
    F["human_reading_tok_s"] = fig(HUMAN_READING_TOK_S, "tok/s", "-", "derived",
                                   "assumed ~250 words/min reading speed, ~1.2 tokens per word")
    wb370 = weight_bytes(c)
    F["370M_weight_bytes_per_token"] = fig(wb370, "B", "2 bits per weight, tiles padded", "derived",
                                           "size of the weights region of the compiled DDR image")
    s, c = time_token(MODELS["370M"], "scaled")
    sc = get_config("scaled")
    tok = sc.clock_hz / s.cycles
    F["370M_scaled_tok_s_per_lane"] = fig(tok, "tok/s", "scaled, D = 1024, 128 weights/cycle, 300 MHz", "simulated",
                                          f"{cmd}: one lane, LM head on core")
    F["370M_successor_tok_s_per_lane"] = fig(86.4, "tok/s", "ternip model, one 370M lane", "quoted",
                                             "claim (authors' notes): one 370M lane modelled at 86.4 tok/s")
    F["370M_scaled_tmatmul_share"] = fig(s.unit_busy["tmatmul"] / s.cycles, "fraction", "scaled", "simulated",
                                         "tmatmul busy / all cycles (claim for the successor: ~76%)")
    F["370M_scaled_weight_bandwidth_GBps"] = fig(wb370 * tok / 1e9, "GB/s", "scaled", "derived",
                                                 "weight bytes per token x tokens/s")
    F["scaled_sustained_bandwidth_GBps"] = fig(sc.sustained_read_bandwidth / 1e9, "GB/s", "scaled", "derived",
                                               "4 channels x 64 B x 300 MHz x 50% efficiency")
    s48, _ = time_token(MODELS["370M"], "scaled", lanes=48)
    agg = 48 * sc.clock_hz / s48.cycles
    F["370M_scaled_48_lanes_tok_s"] = fig(agg, "tok/s", "scaled, 48 lanes sharing one weight stream", "simulated",
                                          f"{cmd}: per-lane activations and state traffic x 48")
    F["370M_successor_48_lanes_tok_s"] = fig(3712, "tok/s", "ternip on U250, 48 lanes", "quoted",
                                             "claim (authors' notes): measured aggregate")
    F["370M_scaled_48_lanes_J_per_token"] = fig(sc.board_power_w / agg, "J/token", "scaled, 48 lanes", "derived",
                                                "52.5 W (claim) / simulated aggregate tok/s; claim: 0.0144")

    F["1.3B_target_tok_s"] = fig(23.8, "tok/s", "-", "quoted", "press coverage (secondary source)")
    return F


@functools.lru_cache(maxsize=None)
def _figures_1_3b() -> dict:
    """What 23.8 tok/s for a 1.3B model requires."""
    F, target = {}, 23.8
    rtl, sc, cmd = get_config("rtl2024"), get_config("scaled"), "python -m fpga_model paper-figures"
    s, c13 = time_token(MODELS["1.3B"], "scaled")
    wb13 = weight_bytes(c13)
    F["1.3B_scaled_tok_s_per_lane"] = fig(sc.clock_hz / s.cycles, "tok/s", "scaled", "simulated",
                                          f"{cmd}: one lane, LM head on core")
    F["1.3B_weight_bytes_per_token"] = fig(wb13, "B", "2 bits per weight, tiles padded", "derived",
                                           "size of the weights region of the compiled DDR image")
    F["1.3B_needed_weight_bandwidth_GBps"] = fig(wb13 * target / 1e9, "GB/s", "-", "derived",
                                                 "weight bytes per token x 23.8 tok/s")
    F["1.3B_needed_adds_per_cycle_at_60MHz"] = fig(wb13 * 4 * target / rtl.clock_hz, "adds/cycle", "60 MHz",
                                                   "derived", "ternary weights per token x 23.8 / 60 MHz")
    s, _ = time_token(MODELS["1.3B"], "rtl2024", D=1024)
    t13 = rtl.clock_hz / s.cycles
    F["1.3B_rtl2024_tok_s"] = fig(t13, "tok/s", "rtl2024, D = 1024", "simulated", f"{cmd}: one token")
    F["1.3B_rtl2024_cores_for_target"] = fig(target / t13, "cores", "rtl2024", "derived",
                                             "23.8 / simulated tok/s, if each core had its own 8-bit port")
    return F
