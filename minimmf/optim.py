"""AdamW, written out: the optimizer the paper trains with (SPEC §6).

For every parameter θ with gradient g, at step t = 1, 2, ...:

    m = β1 m + (1 - β1) g                 v = β2 v + (1 - β2) g²
    m̂ = m / (1 - β1^t)                    v̂ = v / (1 - β2^t)
    θ = θ - lr (m̂ / (sqrt(v̂) + eps) + weight_decay θ)      # decoupled weight decay

Weight decay applies to matrices only (ndim ≥ 2); norm gains are not decayed.

The update is applied in place to the model's parameter arrays; the moments are trees of the
same shape (``tree.py``), so they can be saved and restored with the parameters.

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import validate
from .seam import op
from .tree import leaves, tree_map


def adamw_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd) -> None:
    """One AdamW update of one parameter, in place (the moments too), with c1 = 1 - b1^t, c2 = 1 - b2^t:

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g²;   p -= lr ((m / c1) / (sqrt(v / c2) + eps) + wd p).
    Shapes: p, g, m, v all one shape.
    """
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    p -= (lr * (m / c1 / (np.sqrt(v / c2) + eps) + wd * p)).astype(p.dtype)


@dataclass
class AdamW:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    t: int = 0
    m: dict | None = field(default=None, repr=False)
    v: dict | None = field(default=None, repr=False)

    def step(self, params: dict, grads: dict, lr: float | None = None) -> None:
        """One AdamW update of ``params`` in place (``lr`` overrides the default, for schedules)."""
        validate.optimizer_inputs(params, grads, self.m, self.v)   # before any kernel trusts a shape
        lr = self.lr if lr is None else lr
        if self.m is None:
            self.m = tree_map(np.zeros_like, params)
            self.v = tree_map(np.zeros_like, params)
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for (_, p), (_, g), (_, m), (_, v) in zip(leaves(params), leaves(grads),
                                                  leaves(self.m), leaves(self.v)):
            wd = self.weight_decay if p.ndim >= 2 else 0.0
            op.adamw_update(p, g, m, v, lr, b1, b2, c1, c2, self.eps, wd)


def global_norm(grads: dict) -> float:
    """sqrt(sum of squares of every gradient entry), for clipping and logging."""
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for _, g in leaves(grads))))


def clip_grads(grads: dict, max_norm: float) -> tuple[dict, float]:
    """Scale every gradient by min(1, max_norm / global_norm). Returns (clipped tree, norm before)."""
    norm = global_norm(grads)
    if norm <= max_norm or norm == 0.0:
        return grads, norm
    scale = max_norm / norm
    return tree_map(lambda g: g * g.dtype.type(scale), grads), norm
