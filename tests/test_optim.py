"""AdamW and gradient clipping, against an independent scalar computation."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimmf.optim import AdamW, clip_grads, global_norm


@given(g=st.lists(st.floats(-10, 10), min_size=3, max_size=3), wd=st.sampled_from([0.0, 0.1]))
def test_adamw_matches_the_textbook_update(g, wd):
    """Three steps of AdamW on a matrix equal the scalar formulas of Loshchilov & Hutter, step by step."""
    p = {"W": np.full((1, 1), 0.5), "g": np.full(1, 0.5)}
    opt = AdamW(lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    theta_W = theta_g = 0.5
    m = v = 0.0
    for t, gt in enumerate(g, start=1):
        opt.step(p, {"W": np.full((1, 1), gt), "g": np.full(1, gt)})
        m = 0.9 * m + 0.1 * gt
        v = 0.99 * v + 0.01 * gt * gt
        upd = (m / (1 - 0.9 ** t)) / (math.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
        theta_W -= 0.1 * (upd + wd * theta_W)     # matrices are decayed
        theta_g -= 0.1 * upd                       # gains are not
        assert p["W"][0, 0] == pytest.approx(theta_W, rel=1e-12, abs=1e-12)
        assert p["g"][0] == pytest.approx(theta_g, rel=1e-12, abs=1e-12)


def test_clip_grads_scales_to_the_max_norm():
    """Clipping rescales all gradients together so their global norm equals max_norm."""
    grads = {"a": np.array([3.0]), "b": [np.array([4.0])]}
    assert global_norm(grads) == 5.0
    clipped, norm = clip_grads(grads, 1.0)
    assert norm == 5.0 and global_norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped["a"], [0.6])
    same, _ = clip_grads(grads, 10.0)
    assert same is grads                           # nothing to do below the threshold
