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

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from . import validate
from .architectures import architecture_of, architecture_of_config
from .fileio import install_directory, recover_directory
from .model import MMfreeLM
from .optim import AdamW
from .tree import leaves, paths, tree_map

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
    recover_directory(run_dir / CHECKPOINT_DIRNAME, _ASIDE_PREFIX)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(run_dir, model: MMfreeLM, tokenizer=None, optimizer: AdamW | None = None,
                    trainer: dict | None = None) -> Path:
    """Write ``run_dir/checkpoint/`` atomically. Returns its path.

    A model holding NaN or inf is refused (it would replace a good checkpoint with one that cannot
    be used); a failed write (a full disk) is a CheckpointError, and the previous checkpoint stays.
    """
    run_dir = Path(run_dir)
    try:
        validate.finite_tree(model.params)
    except ValueError as e:
        raise CheckpointError(f"not saved in {run_dir}: {e}") from None
    try:
        return _save(run_dir, model, tokenizer, optimizer, trainer)
    except OSError as e:
        raise CheckpointError(f"cannot save the checkpoint in {run_dir}: {e.strerror or e} "
                              f"({e.filename or 'writing'}); the previous checkpoint is kept") from None


def _save(run_dir: Path, model, tokenizer, optimizer, trainer) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    _recover(run_dir)
    for stale in run_dir.glob(".checkpoint.tmp-*"):             # left by a writer that died
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=run_dir))
    try:
        config_json, tensors = architecture_of(model).to_saved(model)   # MMfreeLM: the released layout
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


@contextmanager
def _reading(path: Path):
    """Any failure while reading ``path`` becomes a CheckpointError naming it (never another exception type)."""
    try:
        yield
    except (CheckpointError, MemoryError):
        raise
    except Exception as e:                       # noqa: BLE001  (a corrupt file can fail in any parser)
        raise CheckpointError(f"checkpoint file {path} is corrupt or invalid ({type(e).__name__}: {e})") from None


def _read_json(path: Path, kind: type = dict):
    """The JSON object in ``path`` (UTF-8), or a CheckpointError naming the file and what was expected."""
    with _reading(path):
        try:
            value = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start}): expected a JSON object") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}): expected a JSON object") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, expected a JSON object")
    return value


def _verify_manifest(ckpt: Path) -> None:
    mpath = ckpt / "manifest.json"
    if not mpath.exists():
        return                                                   # a released or hand-edited checkpoint
    manifest = _read_json(mpath)
    for name, entry in manifest.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or isinstance(entry.get("bytes"), bool) or not isinstance(entry.get("bytes"), int)
                or "/" in name or name in ("", ".", "..")):
            raise CheckpointError(f"{mpath} is malformed at {name!r}: expected {{\"sha256\": str, \"bytes\": int}} "
                                  f"for each file of the checkpoint; the checkpoint cannot be trusted")
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing (listed in manifest.json)")
        if f.stat().st_size != entry["bytes"]:
            raise CheckpointError(f"checkpoint file {f} is truncated or changed: {f.stat().st_size} "
                                  f"bytes, manifest says {entry['bytes']}")
        if _sha256(f) != entry["sha256"]:
            raise CheckpointError(f"checkpoint file {f} is corrupt: its sha256 does not match manifest.json")
    for name in MODEL_FILES + ("trainer.json", "optimizer.safetensors", "tokenizer.json"):
        if (ckpt / name).exists() and name not in manifest:
            raise CheckpointError(f"checkpoint file {ckpt / name} is not listed in {mpath}: the checkpoint "
                                  f"was changed after it was written")


def load_checkpoint(path, with_optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (or any released-format directory).

    Every failure is a CheckpointError naming the file: a missing, truncated or corrupted file, a
    header or JSON field of the wrong type, optimizer moments whose shapes do not match the model.
    """
    ckpt = checkpoint_dir(path)
    if not ckpt.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a directory with config.json and "
                              f"model.safetensors (train one with `minimmf train --out DIR`)")
    for name in MODEL_FILES:
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt} has no {name}; is this a minimmf checkpoint directory?")
    _verify_manifest(ckpt)
    config = _read_json(ckpt / "config.json")
    with _reading(ckpt / "model.safetensors"):
        state_dict = load_file(str(ckpt / "model.safetensors"))
    with _reading(ckpt / "config.json"):
        try:
            model = architecture_of_config(config).from_saved(config, state_dict)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt}: config.json and model.safetensors do not make a model ({e})") from None
    tokenizer = None
    if (ckpt / "tokenizer.json").exists():
        from .tokenizer import Tokenizer
        with _reading(ckpt / "tokenizer.json"):
            tokenizer = Tokenizer.load(ckpt / "tokenizer.json")
    trainer = _read_json(ckpt / "trainer.json") if (ckpt / "trainer.json").exists() else {}
    optimizer = None
    if with_optimizer and "optimizer" in trainer and (ckpt / "optimizer.safetensors").exists():
        optimizer = _load_optimizer(ckpt, trainer["optimizer"], model.params)
    return Checkpoint(model, tokenizer, optimizer, trainer, ckpt)


def _load_optimizer(ckpt: Path, o, params) -> AdamW:
    """AdamW from trainer.json's hyperparameters and optimizer.safetensors's moments, each checked
    against the model's parameters (shape and dtype) before any kernel sees them."""
    where = ckpt / "trainer.json"
    try:
        t, lr, eps, wd = o["t"], o["lr"], o["eps"], o["weight_decay"]
        b1, b2 = o["betas"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"t = {t!r}, expected a non-negative integer")
        for name, x in (("lr", lr), ("eps", eps), ("weight_decay", wd), ("beta1", b1), ("beta2", b2)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x):
                raise ValueError(f"{name} = {x!r}, expected a finite number")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid optimizer settings ({e})") from None
    optimizer = AdamW(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, t=t)
    path = ckpt / "optimizer.safetensors"
    with _reading(path):
        state = load_file(str(path))
    if state:
        try:
            optimizer.m = tree_map(lambda _, p: state[f"m.{p}"], params, paths(params))
            optimizer.v = tree_map(lambda _, p: state[f"v.{p}"], params, paths(params))
        except KeyError as e:
            raise CheckpointError(f"{path} lacks the moment {e} for this model's parameters") from None
        try:
            validate.optimizer_inputs(params, params, optimizer.m, optimizer.v)
            validate.finite_tree(optimizer.m, "optimizer moment m")
            validate.finite_tree(optimizer.v, "optimizer moment v")
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    return optimizer
