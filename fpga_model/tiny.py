"""A tiny trained minimmf model to run on the simulated core (tests, chapters, the CLI).

H = 64 (one D = 64 register), 2 layers, I = 96 (two D-tiles, the second half padded: the GLU tiling is
exercised), byte vocabulary; trained for 80 AdamW steps on minimmf's own source code (a few seconds),
enough for greedy decoding to produce varied bytes rather than a run of spaces. ``tiny_model()`` trains it
once per process and returns the same model afterwards.
"""
from __future__ import annotations

import functools

import numpy as np

from minimmf import MMfreeConfig, MMfreeLM
from minimmf.demo import own_source_bytes
from minimmf.optim import AdamW, clip_grads
from minimmf.schedule import Schedule, learning_rate

TINY = MMfreeConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, intermediate_size=96)


def train_tiny_model(steps: int = 80, seed: int = 0, config: MMfreeConfig = TINY, batch: int = 8,
                     seq: int = 48, lr: float = 5e-3) -> MMfreeLM:
    """A freshly initialized model trained for ``steps`` AdamW steps (cosine schedule) on minimmf's source."""
    data = own_source_bytes().astype(np.int64)
    model = MMfreeLM.init(config, seed=seed)
    opt = AdamW(lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    for step in range(1, steps + 1):
        starts = rng.integers(0, data.size - seq, size=batch)
        ids = np.stack([data[s:s + seq] for s in starts])
        _, grads = model.loss_and_grads(ids, ids)
        grads, _ = clip_grads(grads, 1.0)
        opt.step(model.params, grads, lr=learning_rate(step, (step - 1) / steps, Schedule(lr)))
    return model


def prompt_bytes(text: str = "def ") -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8).astype(np.int64)


@functools.lru_cache(maxsize=None)
def tiny_model(steps: int = 80, seed: int = 0) -> MMfreeLM:
    """``train_tiny_model`` once per process (tests and chapters share it). Do not modify the result."""
    return train_tiny_model(steps, seed)
