"""fpga_model.report / figures / gantt / CLI: reports add up, figures are labelled, commands work."""
import json

import numpy as np
import pytest

from fpga_model import report
from fpga_model.__main__ import load_model, main
from fpga_model.figures import paper_figures
from fpga_model.gantt import plot_occupancy
from fpga_model.host import FPGASim
from fpga_model.programs import instruction_mix, rwkv_2024


@pytest.fixture(scope="module")
def golden_run():
    sim = FPGASim(load_model("golden"), "rtl2024", number_format="q4.3", D=32)
    sim.step(3)
    return sim


@pytest.fixture(scope="module")
def figures():
    return paper_figures()


def test_report_accounts_for_every_cycle_and_byte(golden_run):
    """Issue cycles + stall cycles = all cycles; weight traffic = tiles x D^2/4; utilisation in [0, 1]."""
    sim = golden_run
    rep = report.summarize(sim.last_stats, sim.config, "q4.3", len(sim.program))
    assert rep["issue_cycles"] + sum(rep["stalls"].values()) == rep["cycles"]["value"]
    assert rep["issue_cycles"] == len(sim.program)
    n_tiles = sum(1 for i in sim.program if i.name == "tmatmul")
    assert rep["traffic_bytes"]["weights"] == n_tiles * 32 * 32 // 4
    assert all(0 <= u <= 1 for u in rep["utilisation"].values())
    assert sum(rep["cycles_by_layer"].values()) == rep["cycles"]["value"]
    assert rep["tokens_per_second"]["value"] == pytest.approx(60e6 / rep["cycles"]["value"])
    assert "derived" in rep["energy_J_per_token"]["label"]
    json.loads(report.to_json(rep))
    assert "tmatmul" in report.text(rep)


def test_m20k_blocks_follow_the_block_shapes():
    """An M20K is 512 x 40, 1K x 20 or 2K x 10: the fewest blocks of any shape are used."""
    assert report.m20k_blocks(512, 8) == 1
    assert report.m20k_blocks(2048, 8) == 1
    assert report.m20k_blocks(4096, 8) == 2
    assert report.m20k_blocks(1024, 64) == 4          # 2 x (512 x 40) twice, or 4 x (1K x 20)


def test_the_2024_program_has_the_profiled_instruction_mix():
    """29 instructions: 7 ldv, 3 sv, 3 tmatmul, 3 norm, 6 mul, 4 add, 1 div, 1 exp, 1 sig (FPGA.md)."""
    program, _ = rwkv_2024(512)
    assert len(program) == 29
    assert instruction_mix(program) == {"ldv": 7, "sv": 3, "tmatmul": 3, "norm": 3, "mul": 6, "add": 4,
                                        "div": 1, "exp": 1, "sig": 1}


def test_every_figure_is_labelled(figures):
    """Each figure has a value, a unit, the configuration used and its kind: simulated / derived / quoted."""
    for name, f in figures.items():
        assert set(f) == {"value", "unit", "config", "kind", "how"}, name
        assert f["kind"] in ("simulated", "derived", "quoted"), name
        assert np.isfinite(f["value"]), name


def test_43_ms_at_60_mhz_implies_a_12_cycle_read_round_trip(figures):
    """Three 512 x 512 tiles, one byte per round trip: Lr = 12 (200 ns) gives ~43 ms; compute alone ~13 ms."""
    assert figures["implied_read_latency_cycles"]["value"] == 12
    assert 42 < figures["rwkv_2024_program_ms"]["value"] < 45
    assert 13 < figures["compute_floor_ms"]["value"] < 14.5
    assert figures["compute_floor_ms_derived"]["value"] == pytest.approx(13.1072)


def test_one_8_bit_core_is_far_from_reading_speed_and_scaled_lands_near_the_successor(figures):
    """370M: rtl2024 needs ~20 s per token; the scaled core is within 35% of the successor's 86.4 tok/s."""
    assert figures["370M_rtl2024_tok_s"]["value"] < figures["human_reading_tok_s"]["value"] / 50
    ratio = figures["370M_scaled_tok_s_per_lane"]["value"] / figures["370M_successor_tok_s_per_lane"]["value"]
    assert 0.65 < ratio < 1.35
    assert figures["370M_scaled_weight_bandwidth_GBps"]["value"] < figures["scaled_sustained_bandwidth_GBps"]["value"]


def test_23_8_tok_s_for_1_3b_needs_about_8_gb_s_of_weights(figures):
    """1.3B ternary weights at 2 bits: ~0.34 GB per token, x 23.8 tok/s = ~8 GB/s; ~1800 2024 cores."""
    assert 7 < figures["1.3B_needed_weight_bandwidth_GBps"]["value"] < 9
    assert figures["1.3B_rtl2024_cores_for_target"]["value"] > 1000


def test_gantt_chart_is_written(golden_run, tmp_path):
    """plot_occupancy writes a PNG of the units' busy intervals."""
    path = tmp_path / "gantt.png"
    plot_occupancy(golden_run.last_stats, path, end=50_000)
    assert path.stat().st_size > 1000


def test_cli_trace_prints_one_line_per_cycle(capsys):
    """python -m fpga_model trace --cycles N prints exactly N lines, numbered by consecutive cycles."""
    assert main(["trace", "--model", "golden", "--start", "10", "--cycles", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 40
    assert [int(l.split()[0]) for l in lines] == list(range(10, 50))


def test_cli_run_matches_minimmf_and_paper_figures_print_json(capsys):
    """run --json reports tokens equal to minimmf's; paper-figures --json prints one JSON object."""
    assert main(["run", "--model", "golden", "--tokens", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["generated"]["equal_to_minimmf"] is True
    assert main(["paper-figures", "--json", "--quick"]) == 0
    figs = json.loads(capsys.readouterr().out)
    assert figs["paper_block_ms"]["kind"] == "quoted"
