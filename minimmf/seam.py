"""The seam between the readable layers and their fast twins: one switch, chosen once, and one table.

Every layer that is hot in training or decoding exists twice: the readable NumPy forward/backward pair in its own
file (``functional.py``, ``bitlinear.py``, ``mlgru.py``, ...), which *is* the specification, and a fast twin with
the same signature and the same cache in ``minimmf/fast/`` (Numba kernels from ``minimmf/kernels/``). The code
that composes layers (``block.py``, ``model.py``, ``lm.py``, ``optim.py``, ``packed.py``) calls each layer through
``op``, e.g. ``op.mlgru_forward(x, p, lb, h0, eps)``; which of the two runs is decided here, for the whole process:

    reference   every layer runs from its readable file
    fast        every layer runs its fast twin (float32/float64; other dtypes run the reference)
    auto        (default) before the first use, each twin is run beside its reference on a small canary input
                (``fast/canary.py``): forward values, caches and gradients must agree bit for bit. A twin that
                differs is not used: its layer runs from the readable file, and one line on stderr says so, e.g.
                ``minimmf/mlgru.py differs from minimmf/fast/mlgru.py: using the reference for the MLGRU``.
                So an edit to a layer file takes effect everywhere, with no flag. Without the JIT
                (``NUMBA_DISABLE_JIT=1``) ``auto`` is ``reference``.

Choose with the environment variable ``MINIMMF_PATH=reference|fast|auto`` (``MINIMMF_REFERENCE=1`` is an alias for
``reference``) or ``minimmf.set_path(...)``; ``using(path)`` is a block-scoped version for tests and benchmarks.

Changing a layer module at run time (``mlgru.silu = ...``, a test's monkeypatch, chapter 2's
``bitlinear.BITLINEAR_EPS = 1e-8``) is noticed too: the layers that depend on the changed module run on the
reference until it is restored. (No canary is run then: a replaced function may count or record its calls.)

Taught in chapter 3 (``chapters/03-manual-backprop-and-gradient-checking.md``).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import types
from typing import NamedTuple

PATHS = ("reference", "fast", "auto")


class Twin(NamedTuple):
    """One layer: its readable file and functions, its fast twin's module, and what it depends on."""
    label: str                 # how the message names the layer
    reference: str             # the readable module
    twin: str                  # the fast twin's module (same function names)
    functions: tuple           # the functions the seam dispatches
    depends: tuple             # modules whose edits the twin cannot see (it has their math built in)
    mirrors: tuple = ()        # other layers whose math the twin has built in: it runs only while they do


# The table: every dispatched layer, in the order the canary checks them (a layer's twin may call an earlier one
# through ``op``, so an edit to an earlier layer is handled there, not here).
TWINS = {
    "rmsnorm": Twin("RMSNorm", "minimmf.functional", "minimmf.fast.functional",
                    ("rmsnorm_forward", "rmsnorm_backward"), ("minimmf.functional",)),
    "embedding": Twin("embedding backward", "minimmf.functional", "minimmf.fast.functional",
                      ("embedding_backward",), ("minimmf.functional",)),
    "bitlinear": Twin("BitLinear", "minimmf.bitlinear", "minimmf.fast.bitlinear",
                      ("bitlinear_forward", "bitlinear_backward"),
                      ("minimmf.bitlinear", "minimmf.quant", "minimmf.functional")),
    "mlgru": Twin("MLGRU", "minimmf.mlgru", "minimmf.fast.mlgru", ("mlgru_forward", "mlgru_backward"),
                  ("minimmf.mlgru", "minimmf.functional")),
    "glu": Twin("GLU", "minimmf.glu", "minimmf.fast.glu", ("glu_forward", "glu_backward"),
                ("minimmf.glu", "minimmf.functional")),
    "cross_entropy": Twin("cross-entropy", "minimmf.loss", "minimmf.fast.loss",
                          ("cross_entropy_forward", "cross_entropy_backward"), ("minimmf.loss",)),
    "adamw": Twin("AdamW update", "minimmf.optim", "minimmf.fast.optim", ("adamw_update",), ("minimmf.optim",)),
    "swiglu": Twin("SwiGLU", "minimmf.baseline.layers", "minimmf.fast.baseline", ("swiglu_forward", "swiglu_backward"),
                   ("minimmf.baseline.layers", "minimmf.functional")),
    "packed_step": Twin("packed one-token step", "minimmf.packed", "minimmf.fast.decode", ("packed_step",),
                        ("minimmf.packed", "minimmf.model", "minimmf.block", "minimmf.mlgru", "minimmf.glu",
                         "minimmf.bitlinear", "minimmf.quant", "minimmf.functional"),
                        ("rmsnorm", "bitlinear", "mlgru", "glu")),
}


def file_of(module: str) -> str:
    """'minimmf.fast.mlgru' -> 'minimmf/fast/mlgru.py' (how messages and tests name files)."""
    return module.replace(".", "/") + ".py"


# ----------------------------------------------------------------------------- the switch

def _path_from_env() -> str:
    path = os.environ.get("MINIMMF_PATH", "").strip().lower()
    if not path:
        return "reference" if os.environ.get("MINIMMF_REFERENCE", "") not in ("", "0") else "auto"
    if path not in PATHS:
        raise ValueError(f"MINIMMF_PATH={path!r}: expected one of {', '.join(PATHS)}")
    return path


class _Seam:
    path: str = "auto"
    table: dict = {}                 # function name -> the function that runs (filled layer by layer on first use)
    using_twin: dict = {}            # layer name -> True if its twin runs
    canary: dict = {}                # layer name -> True if the twin passed its canary (auto)
    snapshot: dict = {}              # module name -> {attribute: value} when the first canary ran
    changed: frozenset = frozenset() # modules changed at run time since (their layers run the reference)
    generation: int = 0              # bumped by every assignment to a watched module's attribute
    built_at: int = 0                # the generation the table was filled at
    canary_seconds: float = 0.0      # what the canary checks took in this process, in total


_seam = _Seam()
_LAYER_OF = {fn: name for name, t in TWINS.items() for fn in t.functions}


def set_path(path: str) -> None:
    """Choose 'reference', 'fast' or 'auto' for this process (see the module docstring). 'auto' re-runs the
    canary on the next use, so it also picks up layers changed since."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    _seam.path = path
    _seam.table, _seam.using_twin, _seam.canary, _seam.snapshot = {}, {}, {}, {}
    _seam.changed = frozenset()


def get_path() -> str:
    """The path chosen: 'reference', 'fast' or 'auto'."""
    return _seam.path


@contextlib.contextmanager
def using(path: str):
    """Run the block on one path, then go back to the previous choice (its canary results kept)."""
    saved = (_seam.path, _seam.canary, _seam.snapshot, _seam.changed)
    set_path(path)
    try:
        yield
    finally:
        _seam.path, _seam.canary, _seam.snapshot, _seam.changed = saved
        _seam.table, _seam.using_twin = {}, {}


def status() -> dict:
    """Layer name -> 'fast' or 'reference': what runs now (checking every twin that was not checked yet)."""
    for t in TWINS.values():
        getattr(op, t.functions[0])
    return {name: "fast" if _seam.using_twin[name] else "reference" for name in TWINS}


# ----------------------------------------------------------------------------- watching the layer modules

class _WatchedModule(types.ModuleType):
    """A layer module whose attribute assignments are counted (so a run-time change is noticed in O(1))."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        _seam.generation += 1

    def __delattr__(self, name):
        super().__delattr__(name)
        _seam.generation += 1


def _watched_modules() -> list:
    names = sorted({m for t in TWINS.values() for m in (t.reference, *t.depends)})
    return [importlib.import_module(n) for n in names]


def _take_snapshot() -> dict:
    snap = {}
    for mod in _watched_modules():
        if type(mod) is types.ModuleType:
            mod.__class__ = _WatchedModule
        snap[mod.__name__] = {k: v for k, v in vars(mod).items() if not k.startswith("__")}
    return snap


def watch() -> None:
    """Remember the layer modules as they are now (``minimmf/__init__.py`` calls this once every module is
    imported); a later assignment to one of their attributes is a run-time change."""
    if not _seam.snapshot:
        _seam.snapshot = _take_snapshot()
        _seam.built_at = _seam.generation


def _same(a, b) -> bool:
    return a is b or (type(a) is type(b) and isinstance(a, (int, float, str, tuple)) and a == b)


def _changed_modules() -> frozenset:
    """Modules whose attributes differ from the snapshot taken when the canary ran."""
    out = set()
    for name, before in _seam.snapshot.items():
        now = vars(sys.modules[name])
        if any(k not in now or not _same(now[k], v) for k, v in before.items()):
            out.add(name)
    return frozenset(out)


# ----------------------------------------------------------------------------- resolving the table

def _jit_on() -> bool:
    import numba
    return not numba.config.DISABLE_JIT


def _choose(name: str) -> None:
    """Decide whether layer ``name`` runs its twin, and put its functions in the table."""
    t = TWINS[name]
    path = _seam.path
    if path == "auto" and not _jit_on():
        path = "reference"
    if path == "auto":
        watch()
        on = (not (_seam.changed & {t.reference, *t.depends}) and all(_canary(m) for m in t.mirrors)
              and _canary(name))
    else:
        on = path == "fast"
    src = importlib.import_module(t.twin if on else t.reference)
    for fn in t.functions:
        _seam.table[fn] = getattr(src, fn)
    _seam.using_twin[name] = on


def _canary(name: str) -> bool:
    """The twin's canary result, run once (``fast/canary.py``); a twin that differs is named on stderr."""
    if name not in _seam.canary:
        from .fast import canary
        t = TWINS[name]
        t0 = time.perf_counter()
        _seam.canary[name] = ok = canary.agrees(name)
        _seam.canary_seconds += time.perf_counter() - t0
        also = [file_of(m) for m in t.depends if m != t.reference]
        if not ok:
            print(f"{file_of(t.reference)} differs from {file_of(t.twin)}: using the reference for the {t.label}"
                  + (f" (its math includes {', '.join(also)})" if also and len(also) < 3 else ""), file=sys.stderr)
    return _seam.canary[name]


def _rebuild_after_change() -> None:
    """A watched module was assigned to: start the table afresh, noting which modules now differ."""
    changed = _changed_modules() if _seam.snapshot else frozenset()
    for m in sorted(changed - _seam.changed):
        print(f"{file_of(m)} was changed at run time: using the reference for the layers that depend on it "
              f"until it is restored", file=sys.stderr)
    _seam.changed = changed
    _seam.table, _seam.using_twin = {}, {}
    _seam.built_at = _seam.generation


class _Op:
    """``op.<function>``: the function the switch chose for this layer (see the module docstring)."""

    def __getattr__(self, fn):
        if _seam.built_at != _seam.generation:
            _rebuild_after_change()
        f = _seam.table.get(fn)
        if f is None:
            if fn not in _LAYER_OF:
                raise AttributeError(f"no layer function {fn!r} behind the seam")
            _choose(_LAYER_OF[fn])
            f = _seam.table[fn]
        return f


op = _Op()
_seam.path = _path_from_env()
