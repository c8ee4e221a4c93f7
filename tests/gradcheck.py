"""Finite-difference gradient checks in float64, and the STE surrogate they need.

A quantizer is piecewise constant, so finite differences of the real forward see a zero (or
infinite) slope. The straight-through estimator instead differentiates quantization as the
identity. ``ste_surrogate()`` makes that exact for finite differences: it records, on a first
("base") forward, each quantizer's offset ``Q(v0) - v0`` and scale, then on later forwards
returns ``v + (Q(v0) - v0)`` (as "codes" times the frozen scale). The surrogate equals the
real forward at the base point and has exactly the STE's gradient there.
"""
from __future__ import annotations

import contextlib

import numpy as np

import minimmf.bitlinear as bitlinear_module
from minimmf import quant


def numerical_grad(f, x: np.ndarray, eps: float = 1e-6, max_entries: int | None = None,
                   rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Central differences (f(x + eps e_k) - f(x - eps e_k)) / 2 eps for entries k of x.

    Returns (indices, values); ``max_entries`` samples a random subset for large arrays.
    ``f`` must read x afresh on every call (x is perturbed in place and restored).
    """
    flat = x.reshape(-1)
    idx = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        idx = (rng or np.random.default_rng(0)).choice(flat.size, max_entries, replace=False)
    out = np.empty(len(idx))
    for n, k in enumerate(idx):
        old = flat[k]
        flat[k] = old + eps
        fp = f()
        flat[k] = old - eps
        fm = f()
        flat[k] = old
        out[n] = (fp - fm) / (2 * eps)
    return idx, out


def assert_grad_close(analytic: np.ndarray, idx: np.ndarray, numeric: np.ndarray,
                      name: str, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Relative error |a - n| / max(|a| + |n|, floor) below rtol at every sampled entry."""
    a = analytic.reshape(-1)[idx]
    err = np.abs(a - numeric)
    scale = np.maximum(np.abs(a) + np.abs(numeric), atol / rtol)
    worst = int(np.argmax(err / scale))
    assert np.all(err <= rtol * scale + atol), (
        f"{name}: analytic {a[worst]!r} vs numeric {numeric[worst]!r} at flat index {idx[worst]} "
        f"(relative error {err[worst] / scale[worst]:.2e})")


@contextlib.contextmanager
def ste_surrogate():
    """Within the block, BitLinear's quantizers are replaced by their STE surrogate.

    The first forward inside the block is the base point (real quantization, offsets recorded);
    call ``tape.replay()`` before every further forward to reuse the recorded offsets in order.
    """
    tape = _Tape()
    real_w, real_a = bitlinear_module.weight_quant, bitlinear_module.activation_quant

    def weight_quant(W):
        return tape.apply("w", W, real_w)

    def activation_quant(x):
        return tape.apply("a", x, real_a)

    bitlinear_module.weight_quant, bitlinear_module.activation_quant = weight_quant, activation_quant
    try:
        yield tape
    finally:
        bitlinear_module.weight_quant, bitlinear_module.activation_quant = real_w, real_a


class _Tape:
    def __init__(self):
        self.entries: list = []
        self.pos = None            # None: recording the base point; int: replaying

    def replay(self):
        self.pos = 0

    def apply(self, kind, v, real):
        if self.pos is None:
            q, s = real(v)
            offset = q.astype(v.dtype) / s - v               # Q(v0) - v0, frozen from now on
            self.entries.append((kind, offset, s))
            return q, s
        kind0, offset, s = self.entries[self.pos]
        assert kind0 == kind and offset.shape == v.shape, "forward calls changed order between passes"
        self.pos += 1
        return (v + offset) * s, s                           # "codes" whose dequantized value is v + offset


__all__ = ["numerical_grad", "assert_grad_close", "ste_surrogate", "quant"]
