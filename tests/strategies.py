"""Hypothesis strategies shared by the tests: small float arrays, configs, token sequences."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minimmf


def float_arrays(shape, dtype=np.float64, scale=3.0):
    """Finite floats in [-scale, scale] of a given shape (a tuple or a strategy of tuples)."""
    return hnp.arrays(dtype, shape, elements=st.floats(-scale, scale, allow_nan=False,
                                                       allow_infinity=False, width=32))


def seeds():
    return st.integers(0, 2**32 - 1)


def rng_arrays(draw, shape, dtype=np.float64, scale=1.0):
    """A Gaussian array from a drawn seed: cheap for large shapes, still shrinkable via the seed."""
    rng = np.random.default_rng(draw(seeds()))
    return (rng.standard_normal(shape) * scale).astype(dtype)


@st.composite
def tiny_configs(draw, max_layers=3):
    """Small but complete model configurations: heads > 1, explicit or default I, bounds on/off."""
    heads = draw(st.sampled_from([1, 2, 4]))
    H = heads * draw(st.integers(1, 6))
    I = draw(st.one_of(st.none(), st.integers(1, 24)))
    return minimmf.MMfreeConfig(vocab_size=draw(st.integers(2, 40)), hidden_size=H,
                                num_hidden_layers=draw(st.integers(1, max_layers)), num_heads=heads,
                                intermediate_size=I, use_lower_bound=draw(st.booleans()))


@st.composite
def token_batches(draw, vocab_size, max_B=3, max_T=8):
    B = draw(st.integers(1, max_B))
    T = draw(st.integers(1, max_T))
    rng = np.random.default_rng(draw(seeds()))
    return rng.integers(0, vocab_size, size=(B, T))
