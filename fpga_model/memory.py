"""DDR contents and the timing of one memory stream (requests, bursts, latency, FIFO back-pressure).

Two things live here:

1. ``DDR``: bytes plus a "written" mask (reading a byte nobody wrote is an error: it would be garbage on the
   board) and named regions with a traffic class (weights, params, activations, state).

2. ``simulate_stream``: when does a unit that streams ``n`` bytes through the memory port finish? The port
   issues requests of ``beat_bytes * burst_beats`` bytes, at most ``outstanding`` in flight; a request issued
   in cycle t delivers its first beat in cycle t + latency + 1 and further beats every ``beat_cycles``
   cycles (one data bus: beats of different requests never overlap); its slot frees when its last beat
   arrives. Data lands in a FIFO of ``fifo_bytes``; a request is only issued if the FIFO has room for it
   counting the data still in flight (credit-based back-pressure). A consumer pops ``rate`` weights per
   cycle (4 weights per byte; ``rate=None``: everything at once, as a register write port does).

   Each cycle, in order: beats due this cycle enter the FIFO; the consumer pops; the requester may issue.

   ``simulate_stream_cycles`` is that paragraph as a loop over cycles: the specification. ``simulate_stream``
   gives the same answer, cycle for cycle, by jumping from event to event (a beat arrives, a request can be
   issued, the FIFO runs dry) and, once the pipeline reaches a steady state (the same FIFO level and the
   same requests in flight, relative to now, at two request issues), by skipping whole periods at once.
   ``tests/test_fpga_memory.py`` proves the two equal for every cycle.

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

import numpy as np

WEIGHTS_PER_BYTE = 4     # 2-bit ternary codes; stream quantities are counted in weights (quarter bytes)


class SimError(ValueError):
    """A program the core cannot run: address outside DDR, unwritten memory, unsupported shape..."""


# ----------------------------------------------------------------------------- DDR contents

@dataclass(frozen=True)
class Region:
    start: int
    end: int          # exclusive
    cls: str          # traffic class: "weights", "params", "activations", "state", "spill"
    name: str


class DDR:
    """Byte-addressed memory with a written mask and named regions."""

    def __init__(self, size: int, regions=()):
        self.size = int(size)
        self.data = np.zeros(self.size, np.uint8)
        self.written = np.zeros(self.size, bool)
        self.regions = sorted(regions, key=lambda r: r.start)
        self._starts = [r.start for r in self.regions]

    def copy(self) -> "DDR":
        d = DDR.__new__(DDR)
        d.size, d.regions, d._starts = self.size, self.regions, self._starts
        d.data, d.written = self.data.copy(), self.written.copy()
        return d

    def check_range(self, addr: int, n: int, what: str = "access") -> None:
        if addr < 0 or addr + n > self.size:
            raise SimError(f"{what} of {n} bytes at {addr:#x} is outside DDR (size {self.size:#x})")

    def write(self, addr: int, payload) -> None:
        b = np.frombuffer(bytes(payload), np.uint8) if not isinstance(payload, np.ndarray) else \
            np.ascontiguousarray(payload).view(np.uint8).reshape(-1)
        self.check_range(addr, b.size, "write")
        self.data[addr:addr + b.size] = b
        self.written[addr:addr + b.size] = True

    def read(self, addr: int, n: int) -> np.ndarray:
        self.check_range(addr, n, "read")
        if not self.written[addr:addr + n].all():
            bad = addr + int(np.argmin(self.written[addr:addr + n]))
            raise SimError(f"read of {n} bytes at {addr:#x} touches unwritten memory (first at {bad:#x}, "
                           f"region {self.region_of(bad)})")
        return self.data[addr:addr + n].copy()

    def region_of(self, addr: int) -> str:
        r = self.find(addr)
        return r.name if r else "none"

    def find(self, addr: int) -> Region | None:
        return find_region(self.regions, self._starts, addr)

    def same_contents(self, other: "DDR") -> bool:
        return (np.array_equal(self.written, other.written)
                and np.array_equal(self.data[self.written], other.data[other.written]))


def find_region(regions, starts, addr: int) -> Region | None:
    i = bisect.bisect_right(starts, addr) - 1
    if i >= 0 and regions[i].start <= addr < regions[i].end:
        return regions[i]
    return None


# ----------------------------------------------------------------------------- stream timing

@dataclass(frozen=True)
class StreamParams:
    beat_bytes: int           # bytes per beat (all channels together)
    burst_beats: int          # beats per request
    outstanding: int          # requests in flight at most
    latency: int              # request -> first beat: latency + 1 cycles
    beat_cycles: int = 1      # cycles between beats on the data bus (1 / efficiency)
    fifo_bytes: int | None = None   # None: no back-pressure
    rate: int | None = None         # weights popped per cycle; None: everything that arrived

    @property
    def request_bytes(self) -> int:
        return self.beat_bytes * self.burst_beats


@dataclass
class Stream:
    """The timeline of one stream: events (cycle, consumed, fifo) after each processed cycle, plus skips."""
    params: StreamParams
    n_bytes: int
    start: int
    end: int = -1                                   # the last cycle with work
    times: list = field(default_factory=list)
    consumed: list = field(default_factory=list)    # weights consumed up to and including that cycle
    fifo: list = field(default_factory=list)        # weights in the FIFO after that cycle
    skips: list = field(default_factory=list)       # (t_from, t_to, period, d_consumed)
    requests: int = 0

    @property
    def total(self) -> int:
        return self.n_bytes * WEIGHTS_PER_BYTE

    def _state(self, c: int):
        if c < self.start:
            return 0, 0
        if c >= self.end:
            return self.total, 0
        for t_from, t_to, period, dcons in self.skips:
            if t_from < c < t_to:
                j = -(-(c - t_from) // period)
                cons, fifo = self._state(c - j * period)
                return cons + j * dcons, fifo
        i = bisect.bisect_right(self.times, c) - 1
        t, cons, fifo = self.times[i], self.consumed[i], self.fifo[i]
        rate = self.params.rate
        pop = fifo if rate is None else min(fifo, rate * (c - t))
        return cons + pop, fifo - pop

    def consumed_at(self, c: int) -> int:
        """Weights consumed in cycles start..c inclusive."""
        return self._state(c)[0]

    def fifo_at(self, c: int) -> int:
        """Weights waiting in the FIFO at the end of cycle c."""
        return self._state(c)[1]


def _issue(t, r, p, inflight, bus_next):
    """Schedule the beats of one request of r bytes issued in cycle t. Returns (weights, new bus_next)."""
    nb = -(-r // p.beat_bytes)
    w_total = 0
    for j in range(nb):
        ready = max(t + p.latency + 1 + j * p.beat_cycles, bus_next)
        bus_next = ready + p.beat_cycles
        w = min(p.beat_bytes, r - j * p.beat_bytes) * WEIGHTS_PER_BYTE
        inflight.append([ready, w, j == nb - 1])
        w_total += w
    return w_total, bus_next


def simulate_stream(n_bytes: int, start: int, p: StreamParams) -> Stream:
    """Event-driven timeline of a stream of ``n_bytes`` starting in cycle ``start`` (see module docstring)."""
    if n_bytes <= 0:
        raise SimError(f"a memory stream needs at least one byte, got {n_bytes}")
    W = WEIGHTS_PER_BYTE
    total, R = n_bytes * W, p.request_bytes
    cap = None if p.fifo_bytes is None else p.fifo_bytes * W
    if cap is not None and cap < R * W:
        raise SimError(f"FIFO of {p.fifo_bytes} B cannot hold one request of {R} B")
    s = Stream(p, n_bytes, start)
    t, fifo, consumed, requested = start, 0, 0, 0
    inflight, inflight_w, n_out, bus_next = deque(), 0, 0, 0
    seen = {}
    while True:
        while inflight and inflight[0][0] == t:                  # 1. beats due now enter the FIFO
            _, w, last = inflight.popleft()
            fifo += w
            inflight_w -= w
            n_out -= last
        pop = fifo if p.rate is None else min(fifo, p.rate)      # 2. the consumer pops
        fifo -= pop
        consumed += pop
        s.times.append(t)
        s.consumed.append(consumed)
        if consumed == total:
            s.fifo.append(0)
            s.end = t
            return s
        issued = False                                           # 3. the requester
        if n_out < p.outstanding and requested < n_bytes:
            r = min(R, n_bytes - requested)
            if cap is None or fifo + inflight_w + r * W <= cap:
                w, bus_next = _issue(t, r, p, inflight, bus_next)
                inflight_w += w
                n_out += 1
                requested += r
                s.requests += 1
                issued = True
        s.fifo.append(fifo)
        if issued:                                               # steady state? skip whole periods
            sig = (fifo, n_out, max(bus_next - t, p.latency + 2),
                   tuple((b[0] - t, b[1], b[2]) for b in inflight))
            if sig in seen:
                t0, req0, cons0 = seen[sig]
                period, dreq, dcons = t - t0, requested - req0, consumed - cons0
                margin = R * (p.outstanding + 2) + (p.fifo_bytes or 0) + dreq
                m = (n_bytes - requested - margin) // dreq if dreq > 0 else 0
                if m >= 1 and period > 0:
                    s.skips.append((t, t + m * period, period, dcons))
                    t += m * period
                    requested += m * dreq
                    consumed += m * dcons
                    s.requests += m * _requests_between(seen, t0)
                    for b in inflight:
                        b[0] += m * period
                    bus_next += m * period
                    s.times.append(t)
                    s.consumed.append(consumed)
                    s.fifo.append(fifo)
                    seen.clear()
            else:
                seen[sig] = (t, requested, consumed)
        cands = []                                               # the next cycle where anything changes
        if inflight:
            cands.append(inflight[0][0])
        if n_out < p.outstanding and requested < n_bytes:
            r = min(R, n_bytes - requested)
            budget = None if cap is None else cap - inflight_w - r * W
            if budget is None or fifo <= budget:
                cands.append(t + 1)
            elif p.rate is not None:
                cands.append(t + -(-(fifo - budget) // p.rate))
        if p.rate is not None and fifo > 0:
            cands.append(t + -(-fifo // p.rate))                 # the FIFO runs dry
        if not cands:
            raise SimError("memory stream deadlocked (FIFO smaller than a request?)")
        tn = min(cands)
        if p.rate is not None and tn - t > 1:                    # cycles t+1 .. tn-1: pops only
            pop = min(fifo, p.rate * (tn - t - 1))
            fifo -= pop
            consumed += pop
        t = tn


def _requests_between(seen, t0) -> int:
    """Requests issued per period: every entry of ``seen`` from t0 on is one issue."""
    return sum(1 for v in seen.values() if v[0] >= t0)


def _stream_cycles(n_bytes: int, start: int, p: StreamParams):
    """The stream one cycle at a time: yields (cycle, weights consumed so far, the request issued this cycle as
    (cycle issued, cycle its last beat is usable, bytes), or None); the last cycle yielded consumes the last weight."""
    W = WEIGHTS_PER_BYTE
    total, R = n_bytes * W, p.request_bytes
    cap = None if p.fifo_bytes is None else p.fifo_bytes * W
    t, fifo, consumed, requested = start, 0, 0, 0
    inflight, inflight_w, n_out, bus_next = deque(), 0, 0, 0
    while True:
        while inflight and inflight[0][0] == t:
            _, w, last = inflight.popleft()
            fifo += w
            inflight_w -= w
            n_out -= last
        pop = fifo if p.rate is None else min(fifo, p.rate)
        fifo -= pop
        consumed += pop
        if consumed == total:
            yield t, consumed, None
            return
        issued = None
        if n_out < p.outstanding and requested < n_bytes:
            r = min(R, n_bytes - requested)
            if cap is None or fifo + inflight_w + r * W <= cap:
                w, bus_next = _issue(t, r, p, inflight, bus_next)
                issued = (t, inflight[-1][0], r)
                inflight_w += w
                n_out += 1
                requested += r
        yield t, consumed, issued
        t += 1


def simulate_stream_cycles(n_bytes: int, start: int, p: StreamParams) -> tuple[int, list]:
    """The specification: the same stream, one cycle at a time. Returns (end, consumed after each cycle)."""
    trace, end = [], start
    for end, consumed, _ in _stream_cycles(n_bytes, start, p):
        trace.append(consumed)
    return end, trace


def stream_requests(n_bytes: int, start: int, p: StreamParams) -> list[tuple[int, int, int]]:
    """Every request of the stream, one cycle at a time (as ``simulate_stream_cycles``):
    (cycle issued, cycle its last beat is usable, bytes). For waveforms; ``simulate_stream`` is the fast path."""
    return [req for _, _, req in _stream_cycles(n_bytes, start, p) if req is not None]


def closed_form_end(n_bytes: int, start: int, p: StreamParams) -> int | None:
    """The stream's last cycle without simulating it, for the 2024 port (1-byte beats, one request of one beat
    outstanding, a beat every cycle); None for any other port. With a = latency + 1 cycles per byte and the
    consumer popping ``rate`` weights per cycle (None: all at once), either every byte is consumed before the
    next one arrives (memory bound) or, once the first byte is there, the FIFO never runs dry (compute bound):

        end = max(start + n a + ceil(4 / rate) - 1,  start + a + ceil(4 n / rate) - 1)

    ``tests/test_fpga_memory.py`` checks it against ``simulate_stream_cycles``."""
    if (p.beat_bytes, p.burst_beats, p.outstanding, p.beat_cycles) != (1, 1, 1, 1):
        return None
    if p.fifo_bytes is not None and p.fifo_bytes < 8:
        return None
    a, W = p.latency + 1, WEIGHTS_PER_BYTE
    if p.rate is None:
        return start + n_bytes * a
    return max(start + n_bytes * a + -(-W // p.rate) - 1, start + a + -(-W * n_bytes // p.rate) - 1)


class LazyStream:
    """A stream whose end is known in closed form; the cycle-by-cycle timeline is built only when asked for."""

    def __init__(self, n_bytes: int, start: int, p: StreamParams, end: int):
        self.n_bytes, self.start, self.params, self.end = n_bytes, start, p, end
        self._full = None

    @property
    def total(self) -> int:
        return self.n_bytes * WEIGHTS_PER_BYTE

    def full(self) -> Stream:
        if self._full is None:
            self._full = simulate_stream(self.n_bytes, self.start, self.params)
            if self._full.end != self.end:
                raise AssertionError(f"closed-form stream end {self.end} != simulated {self._full.end}")
        return self._full

    def consumed_at(self, c: int) -> int:
        return self.full().consumed_at(c)

    def fifo_at(self, c: int) -> int:
        return self.full().fifo_at(c)


def stream(n_bytes: int, start: int, p: StreamParams):
    """``simulate_stream``, or a ``LazyStream`` when the end has a closed form (the 2024 port)."""
    if n_bytes <= 0:
        raise SimError(f"a memory stream needs at least one byte, got {n_bytes}")
    end = closed_form_end(n_bytes, start, p)
    return simulate_stream(n_bytes, start, p) if end is None else LazyStream(n_bytes, start, p, end)
