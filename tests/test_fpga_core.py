"""fpga_model.core: per-instruction cycle counts, the scoreboard, bit-exactness against the functional
model for any program, the one-line-per-cycle trace, and clear errors for bad programs."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpga_model.config import get_config
from fpga_model.core import Core
from fpga_model.formats import get_format
from fpga_model.functional import MachineState, run_functional
from fpga_model.isa import Instruction, assemble
from fpga_model.memory import DDR, Region, SimError
from fpga_model.packing import pack_tile, unpack_tile

# ----------------------------------------------------------------------------- a small machine

WEIGHTS, VECTORS, SCALARS, SCRATCH, SSCRATCH = 0, 0x4000, 0x6000, 0x7000, 0x9000
N_TILES, N_VEC, N_SCAL = 3, 6, 4


def machine(D, fmt, seed=0):
    """DDR with random ternary tiles, random vectors and scalars, and an unwritten scratch area."""
    rng = np.random.default_rng(seed)
    f = get_format(fmt)
    ddr = DDR(0xA000, [Region(WEIGHTS, VECTORS, "weights", "w"), Region(VECTORS, SCALARS, "params", "v"),
                       Region(SCALARS, SCRATCH, "params", "s"), Region(SCRATCH, 0xA000, "activations", "x")])
    for t in range(N_TILES):
        ddr.write(WEIGHTS + t * D * D // 4, pack_tile(rng.integers(-1, 2, (D, D)).astype(np.int8)))
    for k in range(N_VEC):
        ddr.write(VECTORS + k * 256, f.encode_vector((rng.standard_normal(D) * 3).astype(np.float32)))
    for k in range(N_SCAL):
        ddr.write(SCALARS + 4 * k, np.array([rng.standard_normal() * 2], np.float32))
    return MachineState(D, f, ddr)


@st.composite
def programs(draw, D):
    """Random valid programs: loads only from written memory, rstd only after sqacc, any registers."""
    reg, sreg = st.integers(0, 7), st.integers(0, 7)
    written_v, written_s = [VECTORS + 256 * k for k in range(N_VEC)], [SCALARS + 4 * k for k in range(N_SCAL)]
    buffered, prog = False, []
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["ldv", "sv", "lds", "sts", "add", "sub", "mul", "div", "exp", "sig", "silu",
                                     "mulsv", "norm", "sqacc", "rstd", "amax", "quant", "smul", "qscale",
                                     "tmatmul", "tmatmul", "nop"]))
        if kind == "rstd" and not buffered:
            kind = "sqacc"
        if kind == "ldv":
            ins = Instruction("ldv", vy=draw(reg), addr=draw(st.sampled_from(written_v)))
        elif kind == "lds":
            ins = Instruction("lds", vy=draw(sreg), addr=draw(st.sampled_from(written_s)))
        elif kind == "sv":
            a = SCRATCH + 256 * draw(st.integers(0, 5))
            written_v.append(a)
            ins = Instruction("sv", va=draw(reg), addr=a)
        elif kind == "sts":
            a = SSCRATCH + 4 * draw(st.integers(0, 3))
            written_s.append(a)
            ins = Instruction("sts", va=draw(sreg), addr=a)
        elif kind in ("add", "sub", "mul", "div", "mulsv", "quant"):
            ins = Instruction(kind, vy=draw(reg), va=draw(reg), vb=draw(reg))
        elif kind in ("exp", "sig", "silu", "qscale", "rstd"):
            ins = Instruction(kind, vy=draw(reg), va=draw(reg))
        elif kind == "smul":
            ins = Instruction(kind, vy=draw(sreg), va=draw(sreg), vb=draw(sreg))
        elif kind == "norm":
            r = draw(reg)
            ins = Instruction("norm", vy=r, va=r)
        elif kind == "sqacc":
            ins = Instruction("sqacc", va=draw(reg), addr=draw(st.integers(0, D)))
        elif kind == "amax":
            ins = Instruction("amax", vy=draw(sreg), va=draw(reg), ls=draw(st.integers(0, 1)))
        elif kind == "tmatmul":
            ins = Instruction("tmatmul", vy=draw(reg), va=draw(reg), vb=draw(sreg), ls=draw(st.integers(0, 3)),
                              addr=WEIGHTS + draw(st.integers(0, N_TILES - 1)) * D * D // 4)
        else:
            ins = Instruction("nop")
        buffered = (buffered or kind == "sqacc") and kind != "rstd"
        prog.append(ins)
    return prog


@st.composite
def core_configs(draw, D):
    return get_config("rtl2024", D=D, read_latency=draw(st.integers(1, 15)), write_latency=draw(st.integers(1, 15)),
                      outstanding=draw(st.integers(1, 3)), burst_beats=draw(st.integers(1, 2)),
                      port_bytes=draw(st.sampled_from([1, 2, 4])), tmatmul_parallelism=draw(st.sampled_from([1, 2, 16])),
                      rowwise_lanes=draw(st.integers(1, 4)), efficiency=draw(st.sampled_from([1.0, 0.5])),
                      lanes=draw(st.integers(1, 2)), fifo_bytes=64)


@st.composite
def cases(draw):
    D = draw(st.sampled_from([4, 8, 16]))
    return (draw(core_configs(D)), draw(st.sampled_from(["q4.3", "faithful"])), draw(programs(D)),
            draw(st.integers(0, 2**16)))


@given(cases())
def test_core_state_equals_the_functional_model_bit_for_bit(case):
    """After any program, registers, scalars, accumulators, RMS buffer and DDR equal the reference's."""
    cfg, fmt, prog, seed = case
    with np.errstate(all="ignore"):
        ref = run_functional(prog, machine(cfg.D, fmt, seed))
        st_ = machine(cfg.D, fmt, seed)
        Core(cfg, prog, st_).run()
    assert st_.diff(ref) == []


@given(cases())
def test_stepping_cycle_by_cycle_equals_running(case):
    """step_cycle() and run() reach the same cycle count, stall histogram and state; one line per cycle."""
    cfg, fmt, prog, seed = case
    with np.errstate(all="ignore"):
        a, b = machine(cfg.D, fmt, seed), machine(cfg.D, fmt, seed)
        ca, cb = Core(cfg, prog, a), Core(cfg, prog, b)
        stats = ca.run()
        lines = list(cb.trace())
    assert len(lines) == stats.cycles == cb.stats.cycles
    assert cb.stats.stalls == stats.stalls and cb.stats.unit_busy == stats.unit_busy
    assert a.diff(b) == []


# ----------------------------------------------------------------------------- cycle counts

def cycles(cfg, text, fmt=None):
    st_ = machine(cfg.D, fmt or cfg.number_format)
    return Core(cfg, assemble(text), st_).run()


def test_rowwise_instruction_ends_d_over_lanes_plus_one_cycles_after_issue():
    """Issued in cycle 0: row-wise ends in 1 + ceil(D / r), norm in 3 ceil(D / r); ready two cycles later."""
    for D, r in [(16, 1), (16, 4), (8, 3)]:
        cfg = get_config("rtl2024", D=D, rowwise_lanes=r)
        n = -(-D // r)
        assert cycles(cfg, "add v1, v2, v3").cycles == n + 3
        assert cycles(cfg, "norm v1").cycles == 3 * n + 2
        assert cycles(cfg, "add v1, v2, v3\nsub v4, v5, v6").cycles == 2 * n + 5     # unit busy


def test_ldv_on_the_2024_port_costs_the_latency_per_byte():
    """8-bit port, one outstanding read, the next request in the answer's cycle: ldv ends in 1 + D Lr."""
    for D, lr in [(16, 12), (8, 3), (8, 1)]:
        cfg = get_config("rtl2024", D=D, read_latency=lr)
        assert cycles(cfg, f"ldv v1, {VECTORS}", "q4.3").cycles == D * lr + 3
        assert cycles(cfg, f"ldv v1, {VECTORS}", "faithful").cycles == 4 * D * lr + 3   # 32-bit words


def test_tmatmul_is_latency_bound_on_the_2024_port():
    """One byte (4 weights) per Lr + 1 cycles: ends in D^2/4 (Lr + 1) + 6 + D; ready two cycles later."""
    for D, lr in [(16, 12), (32, 3), (8, 5)]:
        cfg = get_config("rtl2024", D=D, read_latency=lr)
        assert cycles(cfg, f"tmatmul v1, v0, {WEIGHTS}").cycles == D * D // 4 * (lr + 1) + 6 + D + 2


def test_tmatmul_is_compute_bound_with_a_fast_port():
    """Lr = 1, 2: the FIFO fills faster than one MAC per cycle drains it: ends in D^2 + Lr + 3 + D."""
    for D, lr in [(16, 1), (32, 1), (32, 2)]:
        cfg = get_config("rtl2024", D=D, read_latency=lr)
        assert cycles(cfg, f"tmatmul v1, v0, {WEIGHTS}").cycles == D * D + lr + 3 + D + 2


def test_tmatmul_on_the_scaled_core_pops_p_weights_per_cycle():
    """Wide bursts keep the FIFO full: first weights in c + Lr + 4, then D^2 / P cycles, then D / r copy-out."""
    cfg = get_config("scaled", D=256)
    st_ = MachineState(256, get_format("q4.3"), DDR(1 << 15, [Region(0, 1 << 15, "weights", "w")]))
    st_.ddr.write(0, np.zeros(256 * 256 // 4, np.uint8))
    c = Core(cfg, assemble("tmatmul v1, v0, 0"), st_).run().cycles
    assert c == cfg.read_latency + 3 + 256 * 256 // cfg.tmatmul_parallelism + 256 // cfg.rowwise_lanes + 2
    assert c == 93 + 512 + 8 + 2


def test_scoreboard_stalls_on_registers_units_and_the_memory_port():
    """RAW waits for the producer; independent work on another unit overlaps; ldv waits for tmatmul's port."""
    D, lr = 8, 4
    cfg = get_config("rtl2024", D=D, read_latency=lr)
    ldv = D * lr + 1                                                  # busy cycles of one ldv
    raw = cycles(cfg, f"ldv v0, {VECTORS}\nadd v1, v0, v0")
    assert raw.cycles == ldv + 1 + (D + 1) + 2 and raw.stalls["register in use"] == ldv
    overlap = cycles(cfg, f"ldv v0, {VECTORS}\nadd v1, v2, v3")
    assert overlap.cycles == ldv + 2 and overlap.stalls.get("register in use", 0) == 0
    tm = D * D // 4 * (lr + 1) + 6 + D                                # busy cycles of one tmatmul
    port = cycles(cfg, f"tmatmul v1, v0, {WEIGHTS}\nldv v2, {VECTORS}")
    assert port.stalls["memory port"] == tm and port.cycles == tm + ldv + 3


# ----------------------------------------------------------------------------- bad programs

def test_address_outside_ddr_is_a_clear_error():
    """ldv / tmatmul beyond the end of DDR raise SimError naming the instruction."""
    cfg = get_config("rtl2024", D=8)
    for text in ("ldv v1, 0x9ffc", "tmatmul v1, v0, 0x9ff8", "sts s1, 0x9ffe"):
        with pytest.raises(SimError, match="outside DDR"):
            Core(cfg, assemble(text), machine(8, "q4.3")).run()


def test_reading_unwritten_memory_is_a_clear_error():
    """A load from memory nobody wrote raises: the core never computes with garbage."""
    cfg = get_config("rtl2024", D=8)
    with pytest.raises(SimError, match="unwritten"):
        Core(cfg, assemble(f"ldv v1, {SCRATCH}"), machine(8, "faithful")).run()
    with pytest.raises(SimError, match="unwritten"):
        run_functional(assemble(f"lds s1, {SSCRATCH}"), machine(8, "faithful"))


def test_unsupported_shapes_are_clear_errors():
    """The 2024 norm needs a power-of-two D; rstd needs sqacc first; sqacc cannot exceed D."""
    with pytest.raises(SimError, match="power of two"):
        Core(get_config("rtl2024", D=12), assemble("norm v1"), machine(12, "q4.3")).run()
    with pytest.raises(SimError, match="empty RMS buffer"):
        Core(get_config("rtl2024", D=8), assemble("rstd s1, s2"), machine(8, "q4.3")).run()
    with pytest.raises(SimError, match="exceeds D"):
        Core(get_config("rtl2024", D=8), assemble("sqacc v1, 9"), machine(8, "q4.3")).run()


def test_packed_tile_is_input_major_with_the_low_pair_first():
    """Weight k = i D + o in byte k // 4, bits 2 (k % 4): 00 = 0, 01 = +1, 11 = -1; unpack inverts pack."""
    q = np.zeros((4, 4), np.int8)
    q[1, 0], q[0, 1], q[3, 3] = 1, -1, -1                            # W[o, i]
    b = pack_tile(q)
    assert b.tolist() == [0b00000100, 0b00000011, 0, 0b11000000]
    assert np.array_equal(unpack_tile(b, 4), q.T)
    with pytest.raises(SimError, match="invalid"):
        unpack_tile(np.array([0b10, 0, 0, 0], np.uint8), 4)
