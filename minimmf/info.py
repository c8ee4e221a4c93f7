"""``minimmf info``: what is in a checkpoint, in a few lines."""
from __future__ import annotations


import numpy as np

from .architectures import architecture_of
from .checkpoint import checkpoint_dir
from .quant import weight_quant
from .tree import leaves


def code_statistics(model) -> list[tuple[str, float, float, float]]:
    """(path, fraction of -1, of 0, of +1) for every ternary weight matrix."""
    rows = []
    for path, W in leaves(model.params):
        if path.endswith(".W"):
            q, _ = weight_quant(W)
            n = q.size
            rows.append((path[:-2], np.count_nonzero(q == -1) / n, np.count_nonzero(q == 0) / n,
                         np.count_nonzero(q == 1) / n))
    return rows


def describe(path) -> str:
    """Config, size, tokenizer, training state and ternary-code statistics of any directory ``generate``
    reads: a minimmf run or checkpoint, or a released-layout export (float32/float16/bf16, sharded)."""
    from .checkpoint import _read_json
    from .pretrained import load_pretrained
    m = load_pretrained(path)
    d = checkpoint_dir(path)
    c, tokenizer = m.config, m.tokenizer
    size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    tok = f"{tokenizer.kind}, {tokenizer.vocab_size} tokens" if tokenizer else "none"
    t = _read_json(d / "trainer.json") if (d / "trainer.json").exists() else {}
    training = (f"training: step {t.get('step')}, {t.get('tokens', 0):,} tokens, {t.get('seconds', 0):.0f} s, "
                f"data {t.get('data_source')}" if t else "training: no trainer state (a released checkpoint?)")
    if not architecture_of(m).ternary:
        fields = ", ".join(f"{k}={v}" for k, v in vars(c).items()) if hasattr(c, "__dict__") else str(c)
        return "\n".join([f"checkpoint: {d}", f"model: Transformer++ baseline ({fields})",
                          f"parameters: {m.num_params():,} (all float32)",
                          f"size on disk: {size / 1e6:.2f} MB", f"tokenizer: {tok}", training])
    ternary = sum(W.size for p, W in leaves(m.params) if p.endswith(".W"))
    lines = [f"checkpoint: {d}",
             f"model: L={c.num_hidden_layers} H={c.hidden_size} I={c.I} V={c.vocab_size} "
             f"heads={c.num_heads} lower bounds={'on' if c.use_lower_bound else 'off'}",
             f"parameters: {m.num_params():,} ({ternary:,} ternary, {m.num_params() - ternary:,} float)",
             f"size on disk: {size / 1e6:.2f} MB; packed 2-bit ternary weights "
             f"would take {ternary / 4 / 1e6:.2f} MB",
             f"tokenizer: {tok}", training]
    stats = code_statistics(m)
    mean_zero = sum(z for _, _, z, _ in stats) / max(len(stats), 1)
    lines.append(f"ternary codes (fraction -1 / 0 / +1 per matrix; mean zero fraction {mean_zero:.3f}):")
    for name, neg, zero, pos in stats:
        lines.append(f"  {name:32s} {neg:6.3f} {zero:6.3f} {pos:6.3f}")
    return "\n".join(lines)
