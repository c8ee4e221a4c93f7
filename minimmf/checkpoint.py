"""Training checkpoints: one directory, written atomically, readable by the released code too.

Layout of ``OUT/checkpoint/``:

    config.json              the released config.json (model_type "hgrn_bit")
    model.safetensors        parameters under the released key names and shapes (SPEC §7)
    tokenizer.json           the tokenizer (Hugging Face format)
    optimizer.safetensors    AdamW moments m and v, under minimmf's parameter paths
    trainer.json             step, tokens, seconds, RNG state, training settings, data fingerprint
    manifest.json            sha256 and size of every other file, written last

Because the model part is in the released layout, ``from_reference`` (and the reference PyTorch
code) can read a minimmf checkpoint directly.

Atomicity: everything is written into a hidden sibling directory, flushed to disk, and only then
renamed into place (the previous checkpoint is moved aside first and deleted last). A crash at
any moment leaves either the old or the new checkpoint complete; ``load_checkpoint`` recovers
the moved-aside one if the crash fell between the two renames. The manifest catches files that
were truncated or changed later.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .fileio import install_directory
from .interop import from_reference, to_reference
from .model import MMfreeLM
from .optim import AdamW
from .tree import leaves, tree_map

CHECKPOINT_DIRNAME = "checkpoint"
_ASIDE_PREFIX = ".checkpoint.old-"
MODEL_FILES = ("config.json", "model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, with the file and the reason in the message."""


@dataclass
class Checkpoint:
    model: MMfreeLM
    tokenizer: object | None          # minimmf.tokenizer.Tokenizer, or None if none was saved
    optimizer: AdamW | None
    trainer: dict                     # trainer.json content ({} if absent)
    path: Path


def checkpoint_dir(path) -> Path:
    """Accept a run directory (holding ``checkpoint/``) or the checkpoint directory itself."""
    path = Path(path)
    if (path / CHECKPOINT_DIRNAME).is_dir() or _aside_dirs(path):
        _recover(path)
        return path / CHECKPOINT_DIRNAME
    return path


def _aside_dirs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(_ASIDE_PREFIX + "*")) if run_dir.is_dir() else []


def _recover(run_dir: Path) -> None:
    """If a save was interrupted between its two renames, put the previous checkpoint back."""
    target = run_dir / CHECKPOINT_DIRNAME
    aside = _aside_dirs(run_dir)
    if not target.exists() and aside:
        os.replace(aside[-1], target)
        aside = aside[:-1]
    for old in aside:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(run_dir, model: MMfreeLM, tokenizer=None, optimizer: AdamW | None = None,
                    trainer: dict | None = None) -> Path:
    """Write ``run_dir/checkpoint/`` atomically. Returns its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _recover(run_dir)
    for stale in run_dir.glob(".checkpoint.tmp-*"):             # left by a writer that died
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=run_dir))
    try:
        if getattr(model, "architecture", None) == "transformer++":   # the baseline: minimmf tree paths
            config_json, tensors = model.config.to_json(), dict(leaves(model.params))
        else:                                                          # MMfreeLM: the released layout
            config_json, tensors = model.config.to_reference(), to_reference(model)
        (tmp / "config.json").write_text(json.dumps(config_json, indent=2))
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                  str(tmp / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")
        trainer = dict(trainer or {})
        if optimizer is not None:
            state = {}
            if optimizer.m is not None:
                state = {f"m.{p}": a for p, a in leaves(optimizer.m)}
                state.update({f"v.{p}": a for p, a in leaves(optimizer.v)})
            save_file(state, str(tmp / "optimizer.safetensors"))
            trainer["optimizer"] = {"t": optimizer.t, "lr": optimizer.lr, "betas": list(optimizer.betas),
                                    "eps": optimizer.eps, "weight_decay": optimizer.weight_decay}
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))
        manifest = {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
                    for f in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return install_directory(tmp, run_dir / CHECKPOINT_DIRNAME, _ASIDE_PREFIX)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _verify_manifest(ckpt: Path) -> None:
    mpath = ckpt / "manifest.json"
    if not mpath.exists():
        return                                                   # e.g. a released checkpoint
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath} is corrupt ({e}); the checkpoint cannot be trusted") from None
    for name, entry in manifest.items():
        f = ckpt / name
        if not f.exists():
            raise CheckpointError(f"checkpoint file {f} is missing (listed in manifest.json)")
        if f.stat().st_size != entry["bytes"]:
            raise CheckpointError(f"checkpoint file {f} is truncated or changed: {f.stat().st_size} "
                                  f"bytes, manifest says {entry['bytes']}")
        if _sha256(f) != entry["sha256"]:
            raise CheckpointError(f"checkpoint file {f} is corrupt: its sha256 does not match manifest.json")


def load_checkpoint(path, with_optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (or any released-format directory)."""
    ckpt = checkpoint_dir(path)
    if not ckpt.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a directory with config.json and "
                              f"model.safetensors (train one with `minimmf train --out DIR`)")
    for name in MODEL_FILES:
        if not (ckpt / name).exists():
            raise CheckpointError(f"{ckpt} has no {name}; is this a minimmf checkpoint directory?")
    _verify_manifest(ckpt)
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{ckpt / 'config.json'} is not valid JSON ({e})") from None
    try:
        state_dict = load_file(str(ckpt / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / 'model.safetensors'} cannot be read ({e}): "
                              f"the file is corrupt or truncated") from None
    try:
        if isinstance(config, dict) and config.get("architecture") == "transformer++":
            from .baseline import TransformerConfig, TransformerPP
            tc = TransformerConfig.from_json(config)
            model = TransformerPP(tc, tree_map(lambda _, p: state_dict[p], _paths_of(tc), _paths_of(tc)))
        else:
            model = from_reference(config, state_dict)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{ckpt}: {e}") from None
    tokenizer = None
    if (ckpt / "tokenizer.json").exists():
        from .tokenizer import Tokenizer
        tokenizer = Tokenizer.load(ckpt / "tokenizer.json")
    trainer = json.loads((ckpt / "trainer.json").read_text()) if (ckpt / "trainer.json").exists() else {}
    optimizer = None
    if with_optimizer and "optimizer" in trainer and (ckpt / "optimizer.safetensors").exists():
        o = trainer["optimizer"]
        optimizer = AdamW(lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                          weight_decay=o["weight_decay"], t=o["t"])
        state = load_file(str(ckpt / "optimizer.safetensors"))
        if state:
            try:
                optimizer.m = tree_map(lambda _, p: state[f"m.{p}"], model.params, _paths(model.params))
                optimizer.v = tree_map(lambda _, p: state[f"v.{p}"], model.params, _paths(model.params))
            except KeyError as e:
                raise CheckpointError(f"{ckpt / 'optimizer.safetensors'} lacks the moment {e} "
                                      f"for this model's parameters") from None
    return Checkpoint(model, tokenizer, optimizer, trainer, ckpt)


def _paths_of(transformer_config):
    """The Transformer++ parameter tree with each leaf replaced by its path."""
    from .baseline import param_shapes
    return _paths(param_shapes(transformer_config))


def _paths(tree, prefix=""):
    """A tree of the same shape whose leaves are their own paths."""
    if isinstance(tree, dict):
        return {k: _paths(v, f"{prefix}{k}.") for k, v in tree.items()}
    if isinstance(tree, list):
        return [_paths(v, f"{prefix}{i}.") for i, v in enumerate(tree)]
    return prefix[:-1]
