"""Outgrow the laptop: continue training a minimmf model with the released PyTorch/Triton code on a GPU, then load
the result back into minimmf.

    python examples/outgrow_the_laptop.py [--checkpoint runs/shakespeare] [--steps 20] [--work DIR]

1. export the minimmf model in the released Hugging Face layout (``minimmf.export_hf``, float32);
2. load it with the released code (``import mmfreelm`` registers the ``hgrn_bit`` model type with transformers)
   and check that PyTorch computes the same loss on the same batch;
3. train it for ``--steps`` AdamW steps in PyTorch, on the GPU, and ``save_pretrained`` the result;
4. load that directory back with ``minimmf.load_pretrained`` and compare its logits, its token-by-token decoding
   and its packed decoding with PyTorch's logits.

Needs torch, transformers, the released ``mmfreelm`` package (github.com/ridgerchu/matmulfreellm) and a CUDA GPU
(its kernels are Triton). Without them the script says what is missing and exits with status 0 (skipped).
Without ``--checkpoint`` it starts from a freshly initialized byte-level model trained on nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

import minimmf
from minimmf.checkpoint import save_checkpoint
from minimmf.demo import own_source_bytes

REQUIRED = ("torch", "transformers", "mmfreelm")


def missing_requirements() -> list[str]:
    """What this machine lacks for the PyTorch half: packages, then a CUDA device."""
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        import torch
        if not torch.cuda.is_available():
            missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    return missing


def export_for_pytorch(checkpoint: Path | None, work: Path) -> tuple[Path, np.ndarray]:
    """Step 1: the released-layout directory to hand to PyTorch, and a batch (4, 65) of token ids from the model's
    own vocabulary (windows of minimmf's source text for a byte-level model, else random ids, seed 0)."""
    if checkpoint is None:
        config = minimmf.MMfreeConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, intermediate_size=128)
        checkpoint = save_checkpoint(work / "fresh", minimmf.MMfreeLM.init(config, seed=0)).parent
    model = minimmf.load_pretrained(checkpoint)
    V = model.config.vocab_size
    rng = np.random.default_rng(0)
    if V == 256:
        text = own_source_bytes().astype(np.int64)
        starts = rng.integers(0, len(text) - 65, size=4)
        batch = np.stack([text[s:s + 65] for s in starts])
    else:
        batch = rng.integers(0, V, size=(4, 65))
    return minimmf.export_hf(checkpoint, work / "exported", dtype="float32", overwrite=True), batch


def continue_in_pytorch(exported: Path, out: Path, batch: np.ndarray, steps: int, lr: float):
    """Steps 2-3: load with the released code, check the loss, train, save. Returns (loss before, loss after,
    PyTorch's logits of the batch after training)."""
    import torch
    import mmfreelm  # noqa: F401  (registers the hgrn_bit model type with transformers)
    from transformers import AutoModelForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False                 # float32 products, to compare with minimmf
    model = AutoModelForCausalLM.from_pretrained(str(exported), torch_dtype=torch.float32).cuda()
    ids = torch.as_tensor(batch, device="cuda")
    model.train()
    loss_before = model(input_ids=ids, labels=ids).loss.item()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        loss_after = model(input_ids=ids, labels=ids).loss.item()
        logits = model(input_ids=ids, use_cache=False).logits.float().cpu().numpy()
    for module in model.modules():                              # transformers 5 expects a dict here; the
        if hasattr(module, "_tied_weights_keys"):               # released classes declare a list, and
            module._tied_weights_keys = {}                      # save_pretrained fails without this
    model.save_pretrained(str(out), safe_serialization=True)
    return loss_before, loss_after, logits


def back_in_minimmf(trained: Path, batch: np.ndarray, torch_logits: np.ndarray) -> dict:
    """Step 4: minimmf loads PyTorch's result; its logits, step decoding and packed decoding against PyTorch's."""
    model = minimmf.load_pretrained(trained)
    full = model.forward(batch)
    state, steps = model.init_state(batch.shape[0]), []
    for t in range(batch.shape[1]):
        out, state = model.step(batch[:, t], state)
        steps.append(out)
    packed = model.pack()
    pstate, psteps = packed.init_state(batch.shape[0]), []
    for t in range(batch.shape[1]):
        out, pstate = packed.step(batch[:, t], pstate)
        psteps.append(out)
    return {"logits": float(np.abs(full - torch_logits).max()),
            "step decoding": float(np.abs(np.stack(steps, 1) - torch_logits).max()),
            "packed decoding": float(np.abs(np.stack(psteps, 1) - torch_logits).max())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a minimmf run or checkpoint directory (default: a fresh model)")
    parser.add_argument("--steps", type=int, default=20, help="AdamW steps in PyTorch")
    parser.add_argument("--lr", type=float, default=1e-3, help="PyTorch AdamW learning rate")
    parser.add_argument("--work", type=Path, help="where to write the exported and trained directories")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("skipped: this recipe needs " + ", ".join(missing)
              + " (pip install torch transformers, and the released code: "
                "pip install git+https://github.com/ridgerchu/matmulfreellm)")
        return {"skipped": missing}
    work = args.work or Path(tempfile.mkdtemp(prefix="outgrow-"))
    exported, batch = export_for_pytorch(args.checkpoint, work)
    check = minimmf.load_pretrained(exported).loss(batch, batch)
    before, after, torch_logits = continue_in_pytorch(exported, work / "trained", batch, args.steps, args.lr)
    print(f"loss on the batch: minimmf {check:.6f}, PyTorch before training {before:.6f} "
          f"(|diff| {abs(check - before):.1e}); after {args.steps} steps {after:.6f}")
    diffs = back_in_minimmf(work / "trained", batch, torch_logits)
    for name, d in diffs.items():
        print(f"minimmf {name} vs PyTorch logits: max |diff| {d:.1e}")
    return {"loss_minimmf": check, "loss_torch": before, "loss_after": after, **diffs}


if __name__ == "__main__":
    main()
    sys.exit(0)
