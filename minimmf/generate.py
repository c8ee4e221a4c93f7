"""Text generation with the recurrent state: prefill the prompt once, then one token at a time.

The MLGRU's state is one vector per layer, so each new token costs the same time and memory
whatever the length of the text so far (a Transformer's KV cache grows instead).

Taught in chapter 9 (``chapters/09-generation.md``).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> int:
    """Draw one token id from (V,) logits. temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < top_p        # smallest set whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eos_id: int | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids continuing ``prompt_ids`` (a 1-D sequence).

    Works with ``MMfreeLM`` and its packed form. Stops early after yielding ``eos_id``.
    """
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    prompt = np.asarray(prompt_ids).reshape(1, -1)
    rng = np.random.default_rng(seed)
    logits, state = model.prefill(prompt)                    # the whole prompt in one pass
    last = logits[0]                                         # the prompt's last position
    for _ in range(max_new_tokens):
        tok = sample_next(last, rng, temperature, top_k, top_p)
        yield tok
        if eos_id is not None and tok == eos_id:
            return
        step_logits, state = model.step(np.array([tok]), state)
        last = step_logits[0]
