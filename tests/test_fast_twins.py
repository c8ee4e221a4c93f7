"""Every fast twin against its readable layer, and the seam that chooses between them (minimmf/seam.py).

A failure names both functions and both files, so the reader knows which two pieces of code disagree.
"""
import importlib
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import minimmf
from minimmf import mlgru, seam
from minimmf.fast import canary

jit_on = not numba.config.DISABLE_JIT


@pytest.mark.parametrize("name", list(seam.TWINS))
def test_each_fast_twin_gives_its_layers_values_caches_and_gradients(name):
    """On the canary input, forward values, caches and backward gradients of the twin equal the layer's
    (bit for bit; the loss value to 1e-6)."""
    t = seam.TWINS[name]
    where = ", ".join(f"{seam.file_of(t.reference)}:{fn} vs {seam.file_of(t.twin)}:{fn}" for fn in t.functions)
    assert canary.mismatch(name) is None, f"{where}: {canary.mismatch(name)}"


@pytest.mark.parametrize("name", list(seam.TWINS))
def test_each_twin_has_the_signatures_of_its_layer(name):
    """Same function names and parameters (names and defaults) in the twin as in the layer."""
    import inspect
    t = seam.TWINS[name]
    ref, twin = importlib.import_module(t.reference), importlib.import_module(t.twin)
    for fn in t.functions:
        a, b = inspect.signature(getattr(ref, fn)), inspect.signature(getattr(twin, fn))
        assert list(a.parameters) == list(b.parameters), f"{seam.file_of(t.twin)}:{fn}{b} vs {fn}{a}"
        assert [p.default for p in a.parameters.values()] == [p.default for p in b.parameters.values()]


def test_the_layer_files_import_nothing_fast():
    """functional, quant, bitlinear, mlgru, glu, loss and the baseline's layers import neither fast/, the
    kernels' fused code nor the seam: they are the readable math and nothing else."""
    import ast
    from pathlib import Path
    root = Path(minimmf.__file__).parent
    for f in ("functional", "quant", "bitlinear", "mlgru", "glu", "loss", "baseline/layers"):
        tree = ast.parse((root / f"{f}.py").read_text())
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [m for m in mods if "fast" in m or "seam" in m or m.endswith("fused") or "decode" in m]
        assert not bad, f"minimmf/{f}.py imports {bad}"


def test_the_kernels_import_nothing_above_them():
    """minimmf/kernels/ imports only numpy, numba, the standard library, itself, and threadpoolctl (which finds
    the BLAS library whose threads ``_numba.py`` configures)."""
    import ast
    import sys
    from pathlib import Path
    allowed = {"numba", "numpy", "llvmlite", "threadpoolctl"} | set(sys.stdlib_module_names)
    for f in (Path(minimmf.__file__).parent / "kernels").glob("*.py"):
        tree = ast.parse(f.read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom):
                assert n.level <= 1, f"{f.name} imports from {'.' * n.level}{n.module}"
                assert n.level == 1 or n.module.split(".")[0] in allowed, f"{f.name}: {n.module}"
            elif isinstance(n, ast.Import):
                for a in n.names:
                    assert a.name.split(".")[0] in allowed, f"{f.name}: {a.name}"


def test_the_path_is_chosen_by_set_path_and_the_environment():
    """set_path picks the path for the process; a wrong name is refused naming the choices; MINIMMF_PATH and the
    older MINIMMF_REFERENCE=1 choose it at import."""
    before = seam.get_path()
    try:
        minimmf.set_path("reference")
        assert set(seam.status().values()) == {"reference"}
        minimmf.set_path("fast")
        assert set(seam.status().values()) == {"fast"}
    finally:
        minimmf.set_path(before)
    with pytest.raises(ValueError, match="reference, fast, auto"):
        minimmf.set_path("quick")
    code = "import minimmf; print(minimmf.get_path())"
    for extra, want in (({"MINIMMF_PATH": "fast"}, "fast"), ({"MINIMMF_REFERENCE": "1"}, "reference"), ({}, "auto")):
        env = {k: v for k, v in os.environ.items() if k not in ("MINIMMF_PATH", "MINIMMF_REFERENCE")}
        env.update(extra)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want


# ----------------------------------------------------------------------------- auto: an edited layer takes effect

def _tanh_candidate(x):
    """What a learner tries first: the paper's tanh candidate instead of the released SiLU."""
    return np.tanh(x)


def _tiny():
    cfg = minimmf.MMfreeConfig(vocab_size=23, hidden_size=16, num_hidden_layers=2, intermediate_size=32)
    model = minimmf.MMfreeLM.init(cfg, seed=1)
    model.params["lower_bounds"][:] = np.random.default_rng(0).standard_normal((2, 16))
    return model


def _outputs(model, packed, ids):
    loss, grads = model.loss_and_grads(ids, ids)
    logits, _ = packed.step(ids[0, :1], packed.init_state(1))
    return model.forward(ids), loss, grads, logits


@pytest.mark.skipif(not jit_on, reason="auto is the reference path without the JIT: there is no twin to fall back from")
def test_auto_runs_an_edited_layer_from_its_file_and_names_both_files(monkeypatch, capsys):
    """With mlgru.silu swapped for tanh, 'auto' runs the MLGRU (and the packed step that mirrors it) from
    mlgru.py: forward, loss_and_grads and the packed step change, and one line names mlgru.py and its twin.
    Undoing the edit gives the fast path's outputs back, bit for bit."""
    model, ids = _tiny(), np.random.default_rng(2).integers(0, 23, (2, 9))
    packed = model.pack()
    before = seam.get_path()
    try:
        minimmf.set_path("auto")
        fast = _outputs(model, packed, ids)
        assert seam.status()["mlgru"] == "fast"
        capsys.readouterr()

        monkeypatch.setattr(mlgru, "silu", _tanh_candidate)
        minimmf.set_path("auto")                                     # a fresh process would see the same files
        edited = _outputs(model, packed, ids)
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1                                       # one line, naming both files
        assert err.startswith("minimmf/mlgru.py differs from minimmf/fast/mlgru.py: using the reference for the MLGRU")
        status = seam.status()
        assert status["mlgru"] == status["packed_step"] == "reference" and status["bitlinear"] == "fast"
        with seam.using("reference"):
            want = _outputs(model, packed, ids)
        for a, b, c in zip(edited[:2] + edited[3:], want[:2] + want[3:], fast[:2] + fast[3:]):
            np.testing.assert_allclose(a, b, rtol=1e-6)               # the edit runs ...
            assert not np.allclose(a, c)                              # ... and it changed the numbers

        monkeypatch.undo()
        minimmf.set_path("auto")
        again = _outputs(model, packed, ids)
        assert seam.status()["mlgru"] == "fast"
        for a, b in zip(again[:2] + again[3:], fast[:2] + fast[3:]):
            np.testing.assert_array_equal(a, b)
        for (p, a), (_, b) in zip(minimmf.tree.leaves(again[2]), minimmf.tree.leaves(fast[2])):
            np.testing.assert_array_equal(a, b, err_msg=p)
    finally:
        minimmf.set_path(before)


@pytest.mark.skipif(not jit_on, reason="auto is the reference path without the JIT: there is no twin to fall back from")
def test_a_run_time_change_to_a_layer_module_is_noticed_without_a_new_canary(monkeypatch, capsys):
    """Assigning to a layer module's attribute after the canary ran (a test's monkeypatch, chapter 2's eps)
    sends the layers that depend on it to the reference until the attribute is restored."""
    from minimmf import bitlinear
    model, ids = _tiny(), np.random.default_rng(3).integers(0, 23, (1, 7))
    fast = model.forward(ids)
    assert seam.status()["bitlinear"] == seam.status()["mlgru"] == "fast"
    monkeypatch.setattr(bitlinear, "BITLINEAR_EPS", 1e-2)
    changed = model.forward(ids)
    assert "minimmf/bitlinear.py was changed at run time" in capsys.readouterr().err
    assert seam.status()["bitlinear"] == "reference" and seam.status()["mlgru"] == "fast"
    with seam.using("reference"):
        np.testing.assert_array_equal(changed, model.forward(ids))
    assert not np.allclose(changed, fast)
    monkeypatch.undo()
    np.testing.assert_array_equal(model.forward(ids), fast)
    assert seam.status()["bitlinear"] == "fast"
