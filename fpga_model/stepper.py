"""An interactive stepper for the core: ``python -m fpga_model step`` (a small debugger, ``help`` lists commands).

    (fpga) break tag L0.attn.f_proj      stop before the first instruction whose tag contains this
    (fpga) continue                      run to the next breakpoint, watch change or the end
    (fpga) regs                          the vector registers (decoded), scalars, units
    (fpga) stepi 3                       three instructions (issue by issue), with their trace lines
    (fpga) cycle 10                      ten cycles
    (fpga) watch v2                      stop when v2 changes
    (fpga) quit

Piped input drives it the same way (``printf 'stepi 2\\nregs\\nquit\\n' | python -m fpga_model step``):
commands are echoed after the prompt so that a transcript reads like a terminal session.

Taught in chapter 12 (``chapters/12-fpga-compiling-and-stepping.md``).
"""
from __future__ import annotations

import cmd
import shlex

import numpy as np

from .core import Core
from .memory import SimError

STALL_CAUSES = ("unit busy", "memory port", "register in use", "drain")



class Stepper(cmd.Cmd):
    """A debugger over one ``Core`` (with data: a ``MachineState``)."""

    prompt = "(fpga) "
    intro = ("fpga_model stepper: 'help' lists the commands; 'stepi', 'cycle', 'continue', 'break', 'regs', "
             "'units', 'watch', 'quit'.")

    def __init__(self, core: Core, stdin=None, stdout=None, echo: bool = False, max_lines: int = 3):
        super().__init__(stdin=stdin, stdout=stdout)
        if stdin is not None:
            self.use_rawinput = False
        self.core, self.echo, self.max_lines = core, echo, max_lines
        self.breaks: list[tuple[str, object]] = []
        self._stopped_at = None          # (cycle, pc) of the last stop: a breakpoint fires once there
        self.watches: dict[tuple, np.ndarray | float] = {}

    # ------------------------------------------------------------------ plumbing

    def say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def precmd(self, line: str) -> str:
        if self.echo:
            self.say(line.rstrip("\n"))
        return line

    def emptyline(self) -> bool:
        return False                                       # an empty line does nothing (not: repeat)

    def default(self, line: str) -> bool:
        if line.strip() == "EOF":
            return True
        self.say(f"unknown command {line.split()[0]!r}: 'help' lists the commands")
        return False

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except (ValueError, SimError) as e:
            self.say(f"error: {e}")
            return False

    @staticmethod
    def _count(arg: str, what: str) -> int:
        if not arg.strip():
            return 1
        try:
            n = int(arg)
        except ValueError:
            raise ValueError(f"{what} takes a positive whole number, got {arg!r}") from None
        if n < 1:
            raise ValueError(f"{what} takes a positive whole number, got {n}")
        return n

    def _show(self, lines: list[str]) -> None:
        k = self.max_lines
        if len(lines) > 2 * k + 1:
            lines = lines[:k] + [f"          ... {len(lines) - 2 * k} more lines ..."] + lines[-k:]
        for line in lines:
            self.say(line)

    def _reg_value(self, reg):
        st = self.core.state
        return st.v[reg[1]].copy() if reg[0] == "v" else float(st.s[reg[1]])

    def _watch_hit(self) -> str | None:
        for reg, old in self.watches.items():
            new = self._reg_value(reg)
            if not np.array_equal(np.asarray(old), np.asarray(new)):
                self.watches[reg] = new
                return f"watch: {reg[0]}{reg[1]} changed"
        return None

    def _break_hit(self) -> str | None:
        """A breakpoint that holds before the next event (never twice in the same cycle)."""
        core = self.core
        c, pc = core.cycle, core.pc
        if core.done:
            return None
        same_cycle, same_pc = self._stopped_at == (c, pc), self._stopped_at is not None and self._stopped_at[1] == pc
        nxt = core.program[pc] if pc < len(core.program) else None
        for kind, val in self.breaks:
            if (same_pc and kind in ("pc", "tag")) or (same_cycle and kind in ("cycle", "stall")):
                continue
            if kind == "pc" and pc == val:
                return f"breakpoint: pc {pc} ({nxt.text()}) is next, cycle {c:,}"
            if kind == "tag" and nxt is not None and val in nxt.tag:
                return f"breakpoint: tag {val!r}: pc {pc} ({nxt.text()} ; {nxt.tag}) is next, cycle {c:,}"
            if kind == "cycle" and c == val:
                return f"breakpoint: cycle {val:,}"
            if kind == "stall":
                why = core.blocker() if nxt is not None else ("drain" if core.flights else None)
                spans = core.stats.stall_spans
                going_on = spans and spans[-1][1] == c - 1 and spans[-1][2] == why      # not a new stall
                if why and why.startswith(val) and not going_on:
                    return f"breakpoint: stall ({why}) starts in cycle {c:,} at pc {pc}"
        return None

    def _event_line(self, ev) -> str:
        kind, c, n, detail = ev
        if kind == "issue":
            pc = int(detail.split(":")[0])
            return f"cycle {c:>10,}  issue {detail:<40} ; {self.core.program[pc].tag}"
        if kind in ("stall", "drain"):
            what = f"stall: {detail}" if kind == "stall" else "drain: every instruction issued, units busy"
            return f"cycles {c:>9,}..{c + n - 1:,}  {what} ({n:,} cycles)"
        return f"cycle {c:>10,}  all units idle: ready next cycle"

    def _run(self, issues: int | None = None) -> None:
        """Advance event by event until ``issues`` instructions have issued (None: no limit), a breakpoint
        or watch fires, or the program ends. Prints one line per event."""
        lines, seen = [], 0
        cycle_breaks = [v for k, v in self.breaks if k == "cycle"]
        while True:
            why = self._break_hit()
            if why:
                self._show(lines)
                self.say(why)
                self._stopped_at = (self.core.cycle, self.core.pc)
                return
            if self.core.done:
                self._show(lines)
                self.say(f"the program has finished: {self.core.stats.cycles:,} cycles (start -> ready)")
                return
            later = [v for v in cycle_breaks if v > self.core.cycle]
            ev = self.core.step_event(until=min(later) if later else None)
            lines.append(self._event_line(ev))
            seen += ev[0] == "issue"
            hit = self._watch_hit()
            if hit or (issues is not None and seen >= issues):
                self._show(lines)
                if hit:
                    self.say(f"{hit} (cycle {self.core.cycle - 1:,})")
                self._stopped_at = (self.core.cycle, self.core.pc)
                return

    # ------------------------------------------------------------------ commands

    def do_stepi(self, arg):
        """stepi [N]: run until N more instructions have issued (default 1); one line per issue or stall."""
        self._run(issues=self._count(arg, "stepi"))

    do_si = do_stepi

    def do_cycle(self, arg):
        """cycle [N]: run N cycles (default 1), one trace line per cycle (pc, event, every unit)."""
        n, lines = self._count(arg, "cycle"), []
        for _ in range(n):
            line = self.core.step_cycle()
            if line is None:
                break
            lines.append(line)
            hit = self._watch_hit()
            if hit:
                self._show(lines)
                self.say(hit)
                return
        self._show(lines)
        if self.core.done:
            self.say(f"the program has finished: {self.core.stats.cycles:,} cycles (start -> ready)")

    def do_continue(self, arg):
        """continue: run to the next breakpoint, watched change, or the end of the program."""
        self._run()

    do_c = do_continue

    def do_break(self, arg):
        """break pc N | break tag TEXT | break cycle N | break stall CAUSE: stop there (no argument: list).
        CAUSE is one of: unit busy, memory port, register in use, drain."""
        words = arg.split(maxsplit=1)
        if not words:
            return self.do_info("breaks")
        if len(words) < 2:
            raise ValueError("break needs a kind and a value: pc N, tag TEXT, cycle N or stall CAUSE")
        kind, val = words[0], words[1].strip()
        if kind in ("pc", "cycle"):
            try:
                v = int(val, 0)
            except ValueError:
                raise ValueError(f"break {kind} takes a whole number, got {val!r}") from None
            if kind == "pc" and not 0 <= v < len(self.core.program):
                raise ValueError(f"break pc: the program has pcs 0..{len(self.core.program) - 1}, got {v}")
            self.breaks.append((kind, v))
        elif kind == "tag":
            if not any(val in i.tag for i in self.core.program):
                raise ValueError(f"break tag: no instruction's tag contains {val!r}")
            self.breaks.append((kind, val))
        elif kind == "stall":
            if val not in STALL_CAUSES:
                raise ValueError(f"break stall: expected one of {', '.join(STALL_CAUSES)}, got {val!r}")
            self.breaks.append((kind, val))
        else:
            raise ValueError(f"break: expected pc, tag, cycle or stall, got {kind!r}")
        self.say(f"breakpoint {len(self.breaks)}: {kind} {val}")

    def do_delete(self, arg):
        """delete [N]: remove breakpoint N (no argument: all)."""
        if not arg.strip():
            self.breaks.clear()
            self.say("all breakpoints removed")
            return
        n = self._count(arg, "delete")
        if n > len(self.breaks):
            raise ValueError(f"delete: no breakpoint {n}")
        self.say(f"removed breakpoint {n}: {' '.join(map(str, self.breaks.pop(n - 1)))}")

    def do_watch(self, arg):
        """watch vN | sN: stop when that register changes (no argument: list)."""
        a = arg.strip()
        if not a:
            for r in self.watches:
                self.say(f"watching {r[0]}{r[1]}")
            return
        if len(a) < 2 or a[0] not in "vs" or not a[1:].isdigit() or not 0 <= int(a[1:]) < 8:
            raise ValueError(f"watch takes a register v0..v7 or s0..s7, got {a!r}")
        reg = (a[0], int(a[1:]))
        self.watches[reg] = self._reg_value(reg)
        self.say(f"watching {a}")

    def do_unwatch(self, arg):
        """unwatch [vN|sN]: stop watching that register (no argument: all)."""
        a = arg.strip()
        if not a:
            self.watches.clear()
        else:
            self.watches.pop((a[0], int(a[1:])) if a[1:].isdigit() else None, None)
        self.say("ok")

    def do_info(self, arg):
        """info breaks | info watches: list them."""
        if arg.strip() in ("breaks", "break", ""):
            if not self.breaks:
                self.say("no breakpoints")
            for i, (k, v) in enumerate(self.breaks, 1):
                self.say(f"breakpoint {i}: {k} {v}")
        elif arg.strip().startswith("watch"):
            self.do_watch("")
        else:
            raise ValueError(f"info takes 'breaks' or 'watches', got {arg!r}")

    def do_where(self, arg):
        """where: the cycle, the program counter and the next instruction, with its model part."""
        c = self.core
        if c.pc < len(c.program):
            ins = c.program[c.pc]
            self.say(f"cycle {c.cycle:,}  pc {c.pc} of {len(c.program)}: {ins.text()}   ; {ins.tag}")
        else:
            self.say(f"cycle {c.cycle:,}  every instruction issued ({len(c.program)})"
                     + ("; finished" if c.done else "; units draining"))

    def do_list(self, arg):
        """list [N]: N instructions around the program counter (default 5 each side)."""
        n = self._count(arg, "list") if arg.strip() else 5
        c = self.core
        for pc in range(max(0, c.pc - n), min(len(c.program), c.pc + n + 1)):
            mark = "=>" if pc == c.pc else "  "
            self.say(f"{mark} {pc:5d}  {c.program[pc].text():<36} ; {c.program[pc].tag}")

    def do_regs(self, arg):
        """regs [N]: vector registers (first N decoded elements, default 8) and scalar registers."""
        n = self._count(arg, "regs") if arg.strip() else 8
        st = self.core.state
        busy = self.core.busy_regs
        for i in range(8):
            vals = st.fmt.decode_vector(st.v[i])[:n]
            flag = f" (held by {busy[('v', i)]})" if ("v", i) in busy else ""
            self.say(f"  v{i}: " + " ".join(f"{x:9.4g}" for x in vals) + flag)
        self.do_scalars("")

    def do_scalars(self, arg):
        """scalars: the scalar registers s0..s7 (an extension; s0 reads 1.0)."""
        self.say("  " + " ".join(f"s{i}={x:.6g}" for i, x in enumerate(self.core.state.s)))

    def do_units(self, arg):
        """units: what every functional unit is doing in this cycle."""
        for u, d in self.core.unit_status().items():
            if d is None:
                self.say(f"  {u:<9} idle")
                continue
            extra = {k: (v[:8].tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()
                     if k not in ("pc", "instruction", "tag", "start", "end")}
            self.say(f"  {u:<9} pc {d['pc']}: {d['instruction']} (cycles {d['start']}..{d['end']}) {d['tag']}"
                     + (f" {extra}" if extra else ""))

    def do_traffic(self, arg):
        """traffic: bytes and requests over the memory port so far, by class; stall cycles by cause."""
        s = self.core.stats
        for k, v in sorted(s.traffic.items()):
            self.say(f"  {k:<12} {v:>12,} bytes {s.requests[k]:>10,} requests")
        for k, v in s.stalls.most_common():
            self.say(f"  stall {k:<20} {v:>10,} cycles")

    def do_mem(self, arg):
        """mem ADDR N: N bytes of DDR from ADDR (numbers in decimal or 0x hex)."""
        try:
            a, n = (int(x, 0) for x in shlex.split(arg))
        except ValueError:
            raise ValueError(f"mem takes ADDR N (e.g. mem 0x100 16), got {arg!r}") from None
        ddr = self.core.state.ddr
        if a < 0 or n < 1 or a + n > ddr.size:
            raise ValueError(f"mem: {n} bytes at {a:#x} is outside DDR (size {ddr.size:#x})")
        self.say(f"  DDR[{a:#x}:{a + n:#x}] = {ddr.data[a:a + n].tolist()}")

    def do_quit(self, arg):
        """quit: leave the stepper."""
        return True

    do_q = do_exit = do_quit
