"""fpga_model.memory: the event-driven stream equals the cycle-by-cycle specification; DDR guards."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpga_model.memory import (DDR, Region, SimError, StreamParams, closed_form_end, simulate_stream,
                               simulate_stream_cycles, stream_requests)


@st.composite
def streams(draw):
    p = StreamParams(beat_bytes=draw(st.sampled_from([1, 2, 4, 8])), burst_beats=draw(st.integers(1, 4)),
                     outstanding=draw(st.integers(1, 5)), latency=draw(st.integers(0, 20)),
                     beat_cycles=draw(st.integers(1, 3)),
                     fifo_bytes=draw(st.sampled_from([None, 32, 64, 256])),
                     rate=draw(st.sampled_from([None, 1, 2, 3, 4, 8, 32])))
    if p.fifo_bytes is not None and p.fifo_bytes < p.request_bytes:
        p = StreamParams(p.beat_bytes, p.burst_beats, p.outstanding, p.latency, p.beat_cycles, None, p.rate)
    return p, draw(st.integers(1, 2500)), draw(st.integers(0, 5))


@given(streams())
def test_event_driven_stream_equals_the_cycle_by_cycle_loop(case):
    """Same last cycle, and the same number of weights consumed after every single cycle."""
    p, n, start = case
    s = simulate_stream(n, start, p)
    end, consumed = simulate_stream_cycles(n, start, p)
    assert s.end == end
    assert [s.consumed_at(c) for c in range(start, end + 1)] == consumed
    assert s.requests == -(-n // p.request_bytes)


def test_single_outstanding_byte_port_costs_latency_plus_one_per_byte():
    """One 1-byte request in flight: a byte every Lr + 1 cycles, so n bytes end at start + n (Lr + 1)."""
    for lr in (0, 5, 12):
        s = simulate_stream(1000, 1, StreamParams(1, 1, 1, lr))
        assert s.end == 1 + 1000 * (lr + 1)


def test_steady_streams_skip_whole_periods():
    """A long stream is simulated in a few thousand events, not one per byte (the 2024 tile: 65536 B)."""
    s = simulate_stream(65536, 1, StreamParams(1, 1, 1, 12, 1, 2048, 1))
    assert s.end == 1 + 65536 * 13 + 3
    assert s.skips and len(s.times) < 10_000


def test_ddr_refuses_unwritten_and_out_of_range_reads():
    """Reading a byte nobody wrote, or outside DDR, raises an error naming the address."""
    ddr = DDR(256, [Region(0, 128, "weights", "w"), Region(128, 256, "activations", "a")])
    ddr.write(0, np.arange(16, dtype=np.uint8))
    assert list(ddr.read(4, 4)) == [4, 5, 6, 7]
    with pytest.raises(SimError, match="unwritten memory .* region w"):
        ddr.read(8, 16)
    with pytest.raises(SimError, match="outside DDR"):
        ddr.read(250, 16)
    with pytest.raises(SimError, match="outside DDR"):
        ddr.write(255, b"ab")


@given(st.integers(0, 20), st.sampled_from([None, 1, 2, 3, 4, 8, 128]), st.sampled_from([None, 8, 64, 2048]),
       st.integers(1, 600), st.integers(0, 5))
def test_closed_form_end_of_the_2024_port_equals_the_cycle_by_cycle_loop(lat, rate, fifo, n, start):
    """1-byte beats, one outstanding: end = max(start + n a + ceil(4/rate) - 1, start + a + ceil(4n/rate) - 1)."""
    p = StreamParams(1, 1, 1, lat, 1, fifo, rate)
    assert closed_form_end(n, start, p) == simulate_stream_cycles(n, start, p)[0]


@given(streams())
def test_stream_requests_lists_one_request_per_burst_in_order(case):
    """stream_requests: ceil(n / request bytes) requests, increasing cycles, the bytes add up to n."""
    p, n, start = case
    reqs = stream_requests(n, start, p)
    assert len(reqs) == -(-n // p.request_bytes)
    assert sum(r[2] for r in reqs) == n
    assert all(a[0] < b[0] for a, b in zip(reqs, reqs[1:])) and all(t + p.latency < u for t, u, _ in reqs)
