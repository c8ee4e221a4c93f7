"""Fast twin of ``minimmf/optim.py``'s per-parameter AdamW update: one pass, in place, the same float operations."""
from __future__ import annotations

from .. import optim
from ..kernels import fused


def adamw_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd) -> None:
    """optim.adamw_update. Shapes: p, g, m, v one shape (C-contiguous here; anything else runs the reference)."""
    if not (fused.fusable(p, g, m, v) and p.flags.c_contiguous and m.flags.c_contiguous
            and v.flags.c_contiguous):
        return optim.adamw_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd)
    fused.adamw_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd)
