"""The training loop written out with the library's pieces, no trainer: windows, AdamW, the paper's
learning-rate recipe, then generation from the packed model.

    python examples/train_loop.py [--steps 200]

Runs offline on minimmf's own source code (bytes as tokens, V = 256).
"""
import argparse
import math

import numpy as np

import minimmf
from minimmf.data import sample_batch
from minimmf.demo import own_source_bytes
from minimmf.generate import generate
from minimmf.optim import AdamW, clip_grads
from minimmf.schedule import Schedule, learning_rate


def main(steps: int) -> float:
    data = own_source_bytes().astype(np.int64)
    config = minimmf.MMfreeConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    model = minimmf.MMfreeLM.init(config, seed=0)
    schedule = Schedule(lr=4e-3, warmup_steps=max(1, steps // 10))           # warm-up, cosine, halved midway
    opt, rng = AdamW(lr=schedule.lr, weight_decay=0.01), np.random.default_rng(0)
    for step in range(1, steps + 1):
        batch = sample_batch(data, batch_size=8, seq_len=64, rng=rng)          # (8, 65) byte ids
        loss, grads = model.loss_and_grads(batch, batch)                       # position t predicts t + 1
        grads, norm = clip_grads(grads, 1.0)
        opt.step(model.params, grads, lr=learning_rate(step, (step - 1) / steps, schedule))
        if step % max(1, steps // 5) == 0 or step == 1:
            print(f"step {step:4d}  loss {loss:.3f} nats/byte  ({loss / math.log(2):.2f} bits/byte)")
    prompt = np.frombuffer(b"def ", np.uint8)
    text = bytes(generate(model.pack(), prompt, 120, temperature=0.7, top_k=20, seed=0))
    print("\ndef " + text.decode("utf-8", errors="replace"))
    return loss


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    main(p.parse_args().steps)
