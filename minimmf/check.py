"""Check your own MatMul-free LM, step by step, against the released code's numbers (chapters/exercise.md).

    python -m minimmf.check STEP my_model.py        # e.g. python -m minimmf.check bitlinear my_model.py
    python -m minimmf.check all my_model.py         # every step, in order, stopping at the first failure
    python -m minimmf.check --help                  # the steps and the functions each one imports

Each step imports the named functions from the reader's file, feeds them the inputs and parameters of the
golden case (the released reference code run in float32 on a tiny random model, ``official_A.npz``) and
compares every result with the released code's own output for it. A mismatch names the tensor, the index of
the largest difference, both values and the tolerance; a match prints how close it is. Exit status: 0 when
the step matches, 1 when it does not, 2 for a usage error (no such step, no such file).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

REL_TOL = 1e-5      # per op: |yours - released| <= 1e-5 x max|released| (the golden case's sensible tolerance)
LOGITS_TOL = 1e-4   # whole-model logits: absolute
LOSS_TOL = 1e-5     # the loss: absolute


def golden_path() -> Path:
    """Where the released code's numbers live: the package's golden data (``minimmf/golden/``)."""
    from importlib import resources
    from . import golden
    return Path(str(resources.files(golden).joinpath(golden.FILE)))


class Mismatch(Exception):
    """The reader's result differs from the released code's; the message says where and by how much."""


class Golden:
    def __init__(self, path: Path):
        if not path.exists():
            raise FileNotFoundError(f"the released code's numbers are not at {path}")
        z = np.load(path)
        self.z = z
        self.config = json.loads(str(z["config_json"]))
        self.params = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
        self.layers = self.config["num_hidden_layers"]

    def __getitem__(self, key):
        return self.z[key]

    def sub(self, prefix: str) -> dict:
        """The parameters under ``prefix``, with the prefix removed (copies: the reader may write to them)."""
        return {k[len(prefix):]: v.copy() for k, v in self.params.items() if k.startswith(prefix)}

    def channels(self, key: str) -> np.ndarray:
        """A recurrence tensor in (B, T, H) layout: the reference stores [B, heads, T, head_dim]."""
        a = self.z[key]
        B, nh, T, hd = a.shape
        return a.transpose(0, 2, 1, 3).reshape(B, T, nh * hd)


# ----------------------------------------------------------------------------- comparing

class Report:
    def __init__(self, out=print):
        self.out = out
        self.worst = 0.0

    def compare(self, name: str, yours, released, *, rel: float | None = REL_TOL, abs_tol: float | None = None,
                exact: bool = False) -> None:
        """Compare one tensor; raise Mismatch naming it, the worst index and both values."""
        released = np.asarray(released)
        if yours is None:
            raise Mismatch(f"{name}: your function returned None (did it forget to `return`?)")
        try:
            yours = np.asarray(yours)
        except Exception as e:  # noqa: BLE001  (a ragged list, say)
            raise Mismatch(f"{name}: your result is not an array ({e})") from None
        if yours.shape != released.shape:
            raise Mismatch(f"{name}: your shape is {yours.shape}, the released code's is {released.shape}")
        if not np.issubdtype(yours.dtype, np.number):
            raise Mismatch(f"{name}: your result has dtype {yours.dtype}, expected numbers")
        y, r = yours.astype(np.float64), released.astype(np.float64)
        bad_values = ~np.isfinite(y)
        if bad_values.any():
            idx = tuple(int(i) for i in np.argwhere(bad_values)[0])
            raise Mismatch(f"{name}: {int(bad_values.sum())} of {y.size} entries are not finite, "
                           f"the first at index {idx} ({y[idx]}; released {r[idx]:.6g})")
        diff = np.abs(y - r)
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        if exact:
            bound, label = 0.0, "exactly"
        elif abs_tol is not None:
            bound, label = abs_tol, f"{abs_tol:g} absolute"
        else:
            bound, label = rel * max(scale, 1e-30), f"{rel:g} x max|released| = {rel * scale:.3g}"
        worst = float(diff.max()) if diff.size else 0.0
        if worst > bound:
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
            n_bad = int(np.count_nonzero(diff > bound))
            raise Mismatch(f"{name} differs: at index {idx} yours is {y[idx]:.7g}, the released code's "
                           f"{r[idx]:.7g} (|diff| {worst:.3g}, allowed {label}); "
                           f"{n_bad} of {diff.size} entries are off")
        relative = worst / scale if scale > 0 else worst
        self.worst = max(self.worst, relative)
        self.out(f"  ok  {name:<48} max |diff| {worst:.2e} ({relative:.1e} of max|released|)")


def _call(fn: Callable, name: str, *args):
    """Call the reader's function; an exception becomes a Mismatch that shows the reader's own traceback."""
    try:
        return fn(*args)
    except Mismatch:
        raise
    except Exception as e:  # noqa: BLE001  (the reader's code may raise anything)
        tb = traceback.extract_tb(e.__traceback__)[1:]          # drop this frame
        where = "".join(traceback.format_list(tb[-3:])) if tb else ""
        raise Mismatch(f"{name} raised {type(e).__name__}: {e}\n{where}".rstrip()) from None


def _first(result, name: str, want: int = 2):
    """Unpack a (value, state) pair the step asks for, with a clear message when it is not one."""
    if not isinstance(result, tuple) or len(result) != want:
        raise Mismatch(f"{name} must return a tuple of {want} values (see the signature in exercise.md), "
                       f"got {type(result).__name__}")
    return result


# ----------------------------------------------------------------------------- the steps

class Step(NamedTuple):
    name: str
    functions: tuple[str, ...]      # what the reader's file must define
    summary: str
    run: Callable                   # run(module, golden, report)


BITLINEARS = ("attn.i_proj", "attn.f_proj", "attn.g_proj", "attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


def _step_quant(m, g: Golden, rep: Report):
    for name, key in (("weight_quant", "weight_quant"), ("activation_quant", "activation_quant")):
        x = g[f"unit/{key}_in"]
        q, s = _first(_call(getattr(m, name), f"{name}(x)", x.copy()), f"{name}(x)")
        q = np.asarray(q)
        if not np.issubdtype(q.dtype, np.integer):
            raise Mismatch(f"{name}: the codes q have dtype {q.dtype}; return integer codes (np.int8)")
        lo, hi = (-1, 1) if name == "weight_quant" else (-128, 127)
        if q.min() < lo or q.max() > hi:
            raise Mismatch(f"{name}: codes range over [{q.min()}, {q.max()}], outside [{lo}, {hi}] (a missing clip?)")
        rep.compare(f"{name}: q / s", q.astype(np.float64) / np.asarray(s, np.float64), g[f"unit/{key}_out"])


def _step_bitlinear(m, g: Golden, rep: Report):
    x, res, w = g["unit/resnorm_x"], g["unit/resnorm_res"], g["unit/resnorm_w"]
    rep.compare("rms_norm(x, weight, 1e-6)", _call(m.rms_norm, "rms_norm", x + res, w.copy(), 1e-6),
                g["unit/resnorm_y"])
    modules = [f"model.layers.{l}.{b}" for l in range(g.layers) for b in BITLINEARS] + ["lm_head"]
    for mod in modules:
        y = _call(m.bitlinear, f"bitlinear on {mod}", g[f"act/{mod}.in"].copy(),
                  g.params[f"{mod}.weight"].copy(), g.params[f"{mod}.norm.weight"].copy())
        rep.compare(f"{mod}.out", y, g[f"act/{mod}.out"])


def _step_mlgru(m, g: Golden, rep: Report):
    lbs = _call(m.lower_bounds, "lower_bounds", g.params["model.lower_bounds"].copy())
    rep.compare("lower_bounds(model.lower_bounds)", lbs, _released_lower_bounds(g))
    for l in range(g.layers):
        pre = f"model.layers.{l}.attn"
        f = _call(m.forget_gate, "forget_gate", g[f"act/{pre}.f_proj.out"].copy(), np.asarray(lbs)[l])
        rep.compare(f"{pre}: forget gate f", f, g.channels(f"act/{pre}.hgrn_f"))
    x, f, h0 = g["unit/hgrn_x"], g["unit/hgrn_g"], g["unit/hgrn_h0"]
    h, last = _first(_call(m.recurrence, "recurrence(x, f, h0)", x.copy(), f.copy(), h0.copy()), "recurrence")
    rep.compare("recurrence(x, f, h0): every h", h, g["unit/hgrn_o_with_h0"])
    rep.compare("recurrence(x, f, h0): last h", last, g["unit/hgrn_final_with_h0"])
    h, _ = _first(_call(m.recurrence, "recurrence(x, f)", x.copy(), f.copy()), "recurrence")
    rep.compare("recurrence(x, f): every h, zero start", h, g["unit/hgrn_o_no_h0"])
    for l in range(g.layers):
        pre = f"model.layers.{l}.attn"
        out, last = _first(_call(m.mlgru, f"mlgru on layer {l}", g[f"act/{pre}.i_proj.in"].copy(),
                                 g.sub(pre + "."), np.asarray(lbs)[l]), "mlgru")
        rep.compare(f"{pre}.out", out, g[f"act/{pre}.out"])
        rep.compare(f"{pre}: state after the last token", last, g.channels(f"act/{pre}.hgrn_h")[:, -1])


def _step_glu(m, g: Golden, rep: Report):
    for l in range(g.layers):
        pre = f"model.layers.{l}.mlp"
        rep.compare(f"{pre}.out", _call(m.glu, f"glu on layer {l}", g[f"act/{pre}.gate_proj.in"].copy(),
                                        g.sub(pre + ".")), g[f"act/{pre}.out"])


def _step_block(m, g: Golden, rep: Report):
    lbs = _released_lower_bounds(g)
    for l in range(g.layers):
        out, _ = _first(_call(m.block, f"block on layer {l}", g[f"hidden_states/{l}"].copy(),
                              g.sub(f"model.layers.{l}."), lbs[l]), "block")
        rep.compare(f"model.layers.{l}.out", out, g[f"act/model.layers.{l}.out"])


def _step_forward(m, g: Golden, rep: Report):
    logits = _call(m.forward, "forward(params, input_ids)", g.sub(""), g["input_ids"].copy())
    rep.compare("logits", logits, g["logits"], abs_tol=LOGITS_TOL)


def _step_loss(m, g: Golden, rep: Report):
    logits, labels = g["logits"], g["labels"]
    loss, dlogits = _first(_call(m.cross_entropy, "cross_entropy(logits, labels)", logits.copy(), labels.copy()),
                           "cross_entropy")
    rep.compare("loss", np.float64(loss), g["loss"], abs_tol=LOSS_TOL)
    rep.compare("d(loss)/d(logits)", dlogits, _softmax_minus_onehot(logits, labels))
    ignored = labels.copy()
    ignored[:, 5:9] = -100                                   # positions 4..7 then predict nothing
    loss2, dl2 = _first(_call(m.cross_entropy, "cross_entropy with -100 labels", logits.copy(), ignored),
                        "cross_entropy")
    rep.compare("loss with labels[:, 5:9] = -100", np.float64(loss2), _mean_nll(logits, ignored), abs_tol=LOSS_TOL)
    rep.compare("d(loss)/d(logits) with labels[:, 5:9] = -100", dl2, _softmax_minus_onehot(logits, ignored))


def _step_backward(m, g: Golden, rep: Report):
    loss, grads = _first(_call(m.loss_and_grads, "loss_and_grads(params, input_ids, labels)", g.sub(""),
                               g["input_ids"].copy(), g["labels"].copy()), "loss_and_grads")
    rep.compare("loss", np.float64(loss), g["loss"], abs_tol=LOSS_TOL)
    if not isinstance(grads, dict):
        raise Mismatch(f"loss_and_grads: the gradients must be a dict keyed like params, got {type(grads).__name__}")
    missing = sorted(set(g.params) - set(grads))
    if missing:
        raise Mismatch(f"loss_and_grads: no gradient for {len(missing)} parameter(s): {', '.join(missing[:4])}"
                       + (" ..." if len(missing) > 4 else ""))
    for key in reversed(list(g.params)):                     # from the loss backwards: the first gradient
        rep.compare(f"grad {key}", grads[key], g[f"grad/{key}"])   # that differs is the nearest to the bug


def _step_step(m, g: Golden, rep: Report):
    rng = np.random.default_rng(0)
    q = rng.integers(-1, 2, size=(37, 70)).astype(np.int8)   # 70 inputs: the last byte is half padding
    x = rng.integers(-127, 128, size=(5, 70)).astype(np.int8)
    packed = np.asarray(_call(m.pack_ternary, "pack_ternary(q)", q.copy()))
    rep.compare("pack_ternary(q): bytes", packed, _pack(q), exact=True)
    if packed.dtype != np.uint8:
        raise Mismatch(f"pack_ternary: dtype {packed.dtype}, expected uint8 (4 codes per byte)")
    y = _call(m.ternary_matmul, "ternary_matmul(packed, q_x)", packed.copy(), x.copy())
    rep.compare("ternary_matmul(packed, q_x) = q_x @ q.T", y, x.astype(np.int64) @ q.T.astype(np.int64), exact=True)
    ids, state, logits = g["input_ids"], None, []
    for t in range(ids.shape[1]):
        out, state = _first(_call(m.decode_step, f"decode_step at position {t}", g.sub(""), ids[:, t].copy(),
                                  state), "decode_step")
        logits.append(np.asarray(out))
    rep.compare("logits, one token at a time", np.stack(logits, axis=1), g["logits_step"], abs_tol=LOGITS_TOL)
    for l in range(g.layers):
        rep.compare(f"state of layer {l} after the last token", np.asarray(state[l]),
                    g[f"cache_state/{l}"].reshape(ids.shape[0], -1))


STEPS = (
    Step("quant", ("weight_quant(W) -> (q, s)", "activation_quant(x) -> (q, s)"),
         "absmean ternary weights and absmax 8-bit activations, against the released quantizers", _step_quant),
    Step("bitlinear", ("rms_norm(x, weight, eps) -> y", "bitlinear(x, weight, norm_weight) -> y"),
         "RMSNorm + quantizers + the integer product, on every BitLinear of the golden model", _step_bitlinear),
    Step("mlgru", ("lower_bounds(raw) -> (L, H)", "forget_gate(z_f, lower_bound) -> f",
                   "recurrence(x, f, h0=None) -> (h, h_last)", "mlgru(x, params, lower_bound, h0=None) -> (out, h_last)"),
         "the token mixer: floors, forget gate, recurrence, the whole MLGRU", _step_mlgru),
    Step("glu", ("glu(x, params) -> y",), "the channel mixer", _step_glu),
    Step("block", ("block(x, params, lower_bound, h0=None) -> (out, h_last)",),
         "norms, residuals, MLGRU and GLU together", _step_block),
    Step("forward", ("forward(params, input_ids) -> logits",), "embedding, blocks, final norm, ternary LM head",
         _step_forward),
    Step("loss", ("cross_entropy(logits, labels) -> (loss, dlogits)",),
         "the shifted cross-entropy, -100 ignored, and softmax - one-hot", _step_loss),
    Step("backward", ("loss_and_grads(params, input_ids, labels) -> (loss, grads)",),
         "every parameter's gradient, against the released code's autograd", _step_backward),
    Step("step", ("pack_ternary(q) -> uint8", "ternary_matmul(packed, q_x) -> int",
                  "decode_step(params, token_ids, state) -> (logits, state)"),
         "2-bit packing, the add/subtract product, one token at a time with the recurrent state", _step_step),
)
STEP_NAMES = tuple(s.name for s in STEPS)


# ----------------------------------------------------------------------------- reference numbers the checker derives

def _released_lower_bounds(g: Golden) -> np.ndarray:
    """The floors the released model used, read back from its forget gates: lb = (f - σ(z)) / (1 - σ(z))."""
    out = np.zeros_like(g.params["model.lower_bounds"], dtype=np.float64)
    for l in range(1, g.layers):
        pre = f"act/model.layers.{l}.attn"
        s = 1.0 / (1.0 + np.exp(-g[f"{pre}.f_proj.out"].astype(np.float64)))
        lb = (g.channels(f"{pre}.hgrn_f").astype(np.float64) - s) / (1.0 - s)
        out[l] = np.median(lb.reshape(-1, lb.shape[-1]), axis=0)
    return out.astype(np.float32)


def _shifted(labels):
    target = np.full_like(labels, -100)
    target[:, :-1] = labels[:, 1:]
    return target


def _mean_nll(logits, labels) -> np.float64:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    target = _shifted(labels)
    b, t = np.nonzero(target != -100)
    return np.float64(-logp[b, t, target[b, t]].mean())


def _softmax_minus_onehot(logits, labels) -> np.ndarray:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    target = _shifted(labels)
    valid = target != -100
    b, t = np.nonzero(valid)
    p[b, t, target[b, t]] -= 1.0
    p[~valid] = 0.0
    return p / len(b)


def _pack(q) -> np.ndarray:
    """The exercise's layout: input 4j+k in bits 2k, 2k+1 of byte j; 00 = 0, 01 = +1, 10 = -1."""
    O, I = q.shape
    out = np.zeros((O, -(-I // 4)), np.uint8)
    for i in range(I):
        code = np.where(q[:, i] == 1, 1, np.where(q[:, i] == -1, 2, 0)).astype(np.uint8)
        out[:, i // 4] |= code << (2 * (i % 4))
    return out


# ----------------------------------------------------------------------------- running

def load_module(path: Path):
    """Import the reader's file under its own name; raise FileNotFoundError / Mismatch with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the path to your model file, e.g. my_model.py)")
    spec = importlib.util.spec_from_file_location(f"minimmf_check_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        tb = traceback.extract_tb(e.__traceback__)
        where = "".join(traceback.format_list([f for f in tb if f.filename == str(path)][-2:]))
        raise Mismatch(f"importing {path} raised {type(e).__name__}: {e}\n{where}".rstrip()) from None
    return module


def check_step(step: str, path, out=print, golden: Path | None = None) -> bool:
    """Run one step against the file at ``path``; print what matches or what differs. True when it matches."""
    if step not in STEP_NAMES:
        raise ValueError(f"step: {step!r} is not one of {', '.join(STEP_NAMES)}")
    s = STEPS[STEP_NAMES.index(step)]
    g = Golden(golden or golden_path())
    rep = Report(out)
    out(f"step {step}: {s.summary}")
    try:
        module = load_module(Path(path))
        for sig in s.functions:
            fname = sig.split("(")[0]
            fn = getattr(module, fname, None)
            if not callable(fn):
                raise Mismatch(f"{path} has no function `{fname}`: write `def {sig.split(' ->')[0]}` "
                               f"(chapters/exercise.md, step {step})")
            want = sig.split("(")[1].split(")")[0]
            n_required = len([a for a in want.split(",") if a.strip() and "=" not in a])
            try:
                params = inspect.signature(fn).parameters.values()
                can_take = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
                if can_take < n_required and not any(p.kind == p.VAR_POSITIONAL for p in params):
                    raise Mismatch(f"`{fname}` takes {can_take} argument(s); the exercise calls it as {sig}")
            except (TypeError, ValueError):
                pass                                          # a builtin or C function: just call it
        s.run(module, g, rep)
    except Mismatch as e:
        out(f"FAIL  {e}")
        return False
    out(f"PASS  {step}: matches the released code to {rep.worst:.1e} (largest difference relative to the "
        f"tensor's largest value)")
    return True


def main(argv=None) -> int:
    steps = "".join(f"  {s.name:<10} {s.summary}\n" + "".join(f"{'':13}{f}\n" for f in s.functions)
                      for s in STEPS)
    parser = argparse.ArgumentParser(
        prog="python -m minimmf.check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare your own MatMul-free LM (chapters/exercise.md) with the released code's numbers.",
        epilog=f"steps, in order, and the functions each imports from FILE:\n{steps}\n"
               "  all        every step in order, stopping at the first that does not match")
    parser.add_argument("step", help="which step to check: " + ", ".join(STEP_NAMES + ("all",)))
    parser.add_argument("file", help="your Python file, e.g. my_model.py")
    args = parser.parse_args(argv)
    if args.step not in STEP_NAMES + ("all",):
        parser.error(f"step: {args.step!r} is not one of {', '.join(STEP_NAMES + ('all',))}")
    if not Path(args.file).is_file():
        parser.error(f"file: {args.file} does not exist (the path to your model file, e.g. my_model.py)")
    for step in (STEP_NAMES if args.step == "all" else (args.step,)):
        if not check_step(step, args.file):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
