"""Core configurations: every timing, width and power number of the simulator in one table.

``CONFIGS["rtl2024"]`` is the paper's core (the public 2024 RTL: 8-bit single-outstanding memory port, Q4.3,
one ternary multiply-accumulate per cycle, 60 MHz). ``CONFIGS["scaled"]`` is a successor-like core (wide
bursty memory over 4 DDR4 channels at 50% efficiency, 128 ternary adds per cycle, 300 MHz), after the
authors' notes on ``sifferman/ternip`` (see ../shared/FPGA.md: those numbers are claims, not measurements).

Where a number comes from is said next to it: *quoted* (paper or FPGA.md), *derived* (from quoted numbers),
or *assumed* (a modelling choice of this simulator).

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CoreConfig:
    name: str
    D: int                      # vector length (elements per register); the 2024 RTL is built for one D
    clock_hz: float             # core clock
    number_format: str          # default number format: "q4.3" or "faithful" (see formats.py)
    # --- functional units
    tmatmul_parallelism: int    # ternary weights consumed (adds/subs) per cycle by tmatmul
    rowwise_lanes: int          # elements per cycle of the row-wise, rms, quant units and the tmatmul copy-out
    fifo_bytes: int             # tmatmul weight FIFO between the memory port and the adders
    lanes: int                  # batch lanes sharing one weight stream (each lane: its own registers, units)
    # --- memory port (all in core cycles)
    port_bytes: int             # bytes per beat per channel
    burst_beats: int            # beats per read/write request
    outstanding: int            # requests in flight at once
    read_latency: int           # Lr >= 1: a read requested in cycle t is answered (first beat) in cycle t + Lr
    write_latency: int          # Lw >= 1: a write requested in cycle t is acknowledged in cycle t + Lw
    efficiency: float           # fraction of peak the memory delivers: one beat every 1/efficiency cycles
    channels: int               # memory channels, striped: each beat moves channels * port_bytes bytes
    # --- power (for the energy estimate; see report.py)
    board_power_w: float        # board power while the core runs
    instruction_memory: int = 1 << 20   # instructions the program memory holds
    notes: str = ""

    @property
    def beat_cycles(self) -> int:
        return round(1 / self.efficiency)

    @property
    def beat_bytes(self) -> int:
        return self.port_bytes * self.channels

    @property
    def peak_bandwidth(self) -> float:
        """Bytes per second the port could move at one beat per cycle (derived)."""
        return self.beat_bytes * self.clock_hz

    @property
    def sustained_read_bandwidth(self) -> float:
        """Bytes per second of a long read stream: limited by latency x outstanding, bursts and efficiency."""
        req = self.beat_bytes * self.burst_beats
        per_request = max((self.read_latency + (self.burst_beats - 1) * self.beat_cycles) / self.outstanding,
                          self.burst_beats * self.beat_cycles)
        return req / per_request * self.clock_hz

    def replace(self, **kw) -> "CoreConfig":
        return dataclasses.replace(self, **kw)

    def __post_init__(self):
        for f in ("D", "tmatmul_parallelism", "rowwise_lanes", "fifo_bytes", "lanes", "port_bytes",
                  "burst_beats", "outstanding", "channels", "read_latency", "write_latency",
                  "instruction_memory"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"config {self.name}: {f} must be a positive integer (cycles or a count), "
                                 f"got {v!r}")
        for f in ("clock_hz", "efficiency"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"config {self.name}: {f} must be a finite number > 0, got {v!r}")
        v = self.board_power_w
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"config {self.name}: board_power_w must be a finite number >= 0, got {v!r}")
        if not 0 < self.efficiency <= 1 or abs(1 / self.efficiency - round(1 / self.efficiency)) > 1e-9:
            raise ValueError(f"config {self.name}: efficiency must be 1/k for an integer k, got {self.efficiency}")
        if self.number_format not in ("q4.3", "faithful"):
            raise ValueError(f"config {self.name}: number_format must be 'q4.3' or 'faithful'")
        if self.fifo_bytes < self.beat_bytes * self.burst_beats:
            raise ValueError(f"config {self.name}: the FIFO ({self.fifo_bytes} B) must hold one request "
                             f"({self.beat_bytes * self.burst_beats} B)")
        if self.D % 4:
            raise ValueError(f"config {self.name}: D must be a positive multiple of 4 (4 weights per byte), "
                             f"got {self.D}")


CONFIGS = {
    "rtl2024": CoreConfig(
        name="rtl2024",
        D=512,                      # quoted: "a block in 43 ms at d = 512"
        clock_hz=60e6,              # quoted: "a clock rate of 60 MHz"
        number_format="q4.3",       # quoted (RTL): int8, exponent -3
        tmatmul_parallelism=1,      # quoted (RTL): one ternary MAC per cycle
        rowwise_lanes=1,            # quoted (RTL): one element per cycle
        fifo_bytes=2048,            # quoted (RTL): MatrixFifoSize
        lanes=1,                    # quoted: one core, N = 1
        port_bytes=1,               # quoted: "receives 8 bits at a time from memory"
        burst_beats=1,              # quoted (RTL): burst 1
        outstanding=1,              # quoted (RTL): one pending read
        read_latency=12,            # derived: the paper's 29-instruction program takes 43 ms at 60 MHz when
                                    # Lr = 12 (figures.py; the RTL under Verilator: 43.73 ms)
        write_latency=12,           # assumed: as reads
        efficiency=1.0,             # assumed: the latency already covers the port's slowness
        channels=1,
        board_power_w=13.0,         # quoted: "13 W" (abstract); applied to this core as an assumption
        instruction_memory=1 << 20,  # extension: the 2024 RTL holds 29 (config_pkg.sv NumInstructions); a
                                    # compiled MLGRU + GLU token needs thousands (cosim pads to 29)
        notes="the paper's 2024 core (public RTL Mattiwos/ternary_matmul_afu)",
    ),
    "scaled": CoreConfig(
        name="scaled",
        D=1024,                     # claim (ternip notes): D = 1024 for the 370M lane
        clock_hz=300e6,             # claim: Alveo U250 at 300 MHz
        number_format="q4.3",
        tmatmul_parallelism=128,    # claim: 128 weights per cycle
        rowwise_lanes=32,           # assumed
        fifo_bytes=32768,           # assumed
        lanes=1,                    # the 86.4 tok/s claim is per lane; the measured aggregate used 48 lanes
        port_bytes=64,              # assumed: 512-bit data path per channel (64 B x 300 MHz = 19.2 GB/s)
        burst_beats=8,              # assumed: 512 B bursts
        outstanding=16,             # assumed
        read_latency=90,            # assumed: 300 ns
        write_latency=90,           # assumed
        efficiency=0.5,             # claim: DDR modelled at 50% efficiency
        channels=4,                 # claim: 4 DDR4-2400 banks (4 x 19.2 GB/s peak)
        board_power_w=52.5,         # claim: "about 52-53 W" measured with 35-48 lanes
        notes="successor-like (sifferman/ternip, claims from the authors' notes)",
    ),
}


def get_config(name_or_config, **overrides) -> CoreConfig:
    """A configuration by name (or a CoreConfig), with fields overridden, e.g. get_config("rtl2024", D=64)."""
    cfg = name_or_config if isinstance(name_or_config, CoreConfig) else None
    if cfg is None:
        if name_or_config not in CONFIGS:
            raise ValueError(f"unknown configuration {name_or_config!r}; known: {', '.join(CONFIGS)}")
        cfg = CONFIGS[name_or_config]
    return cfg.replace(**overrides) if overrides else cfg


def config_table() -> list[dict]:
    """Every configuration as a dict (fields plus derived bandwidths), for the README and reports."""
    rows = []
    for c in CONFIGS.values():
        d = dataclasses.asdict(c)
        d["peak_bandwidth_GBps"] = c.peak_bandwidth / 1e9
        d["sustained_read_bandwidth_GBps"] = c.sustained_read_bandwidth / 1e9
        rows.append(d)
    return rows


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

