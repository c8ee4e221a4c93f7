"""A one-minute demonstration: train a tiny MatMul-free LM on minimmf's own source code, then
generate from it with the packed, add-and-subtract-only inference path.

Bytes are the tokens (V = 256), so no tokenizer or download is needed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .config import MMfreeConfig
from .generate import generate
from .model import MMfreeLM
from .optim import AdamW, clip_grads
from .schedule import Schedule, learning_rate


def own_source_bytes() -> np.ndarray:
    """The text of every module of this package, as a byte array (the demo's corpus)."""
    files = sorted(Path(__file__).resolve().parent.rglob("*.py"))
    return np.frombuffer(b"\n".join(f.read_bytes() for f in files), dtype=np.uint8)


def run_demo(steps: int = 300, seed: int = 0, batch: int = 16, seq: int = 64,
             prompt: str = "def ", new_tokens: int = 300, log=print) -> dict:
    """Train for ``steps`` AdamW steps (warm-up, cosine, halved midway), then sample ``new_tokens`` bytes."""
    data = own_source_bytes().astype(np.int64)
    config = MMfreeConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, intermediate_size=256)
    model = MMfreeLM.init(config, seed=seed)
    schedule = Schedule(lr=3e-3, warmup_steps=30)                        # the paper's recipe (schedule.py)
    opt = AdamW(lr=schedule.lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    log(f"corpus: minimmf's own source, {data.size:,} bytes | model: {model.num_params():,} parameters")
    t0, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        starts = rng.integers(0, data.size - seq, size=batch)
        ids = np.stack([data[s:s + seq] for s in starts])                 # (B, T)
        loss, grads = model.loss_and_grads(ids, ids)
        grads, _ = clip_grads(grads, 1.0)
        opt.step(model.params, grads, lr=learning_rate(step, (step - 1) / steps, schedule))
        losses.append(loss)
        if step % 50 == 0 or step == 1:
            log(f"step {step:4d}  loss {loss:.3f} nats/byte  ({time.perf_counter() - t0:.1f} s)")
    seconds = time.perf_counter() - t0
    packed = model.pack()
    out = bytes(generate(packed, np.frombuffer(prompt.encode(), np.uint8), new_tokens,
                         temperature=0.8, top_k=40, seed=seed))
    log("\n--- sample (packed 2-bit weights, additions and subtractions only) ---")
    log(prompt + out.decode("utf-8", errors="replace"))
    return {"first_loss": losses[0], "last_loss": float(np.mean(losses[-20:])),
            "seconds": seconds, "tokens_per_second": steps * batch * seq / seconds}
