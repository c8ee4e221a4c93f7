"""Released checkpoints in and out: ``load_pretrained(path)`` and ``export_hf(src, out)``.

A released MMfreeLM (Hugging Face layout, SPEC §7) is a directory:

    config.json                          model_type "hgrn_bit" and the sizes (MMfreeConfig reads it)
    model.safetensors                    the state dict under the released key names and shapes, or
    model-00001-of-00003.safetensors ... shards, listed by
    model.safetensors.index.json         {"metadata": {...}, "weight_map": {key: shard file name}}
    tokenizer.json                       the tokenizer (optional for numbers, needed for text)

minimmf's own training checkpoints (``checkpoint.py``) are the same layout plus optimizer and trainer
files, so one reader serves both. Weights may be float32, float16 or bfloat16. NumPy has no bfloat16:
a bf16 number is the top 16 bits of a float32, so it is read as uint16 and widened exactly,

    float32 bits = bf16 bits << 16                 (no rounding: every bf16 value is a float32 value)

which is why this module parses the safetensors format itself (8-byte little-endian header length,
a JSON header {key: {"dtype", "shape", "data_offsets"}}, then the raw little-endian data) instead of
``safetensors.numpy``, which cannot return bf16 arrays.

    load_pretrained(path, packed=False) -> MMfreeLM (or PackedMMfreeLM), with .tokenizer (or None)
    read_pretrained(path) -> Pretrained(config, state_dict, dtypes, tokenizer, path)   the raw pieces
    export_hf(src, out, dtype=None, max_shard_bytes=None) -> Path                     the released layout

Every problem is a ``CheckpointError`` (a ValueError) naming the file, tensor or field and the fix.

Taught in chapter 10 (``chapters/10-released-models.md``).
"""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .architectures import architecture_of_config
from .checkpoint import CheckpointError, _read_json, _verify_manifest, checkpoint_dir
from .config import ConfigError, MMfreeConfig
from .fileio import install_directory, recover_directory
from .interop import from_reference, to_reference

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files copied verbatim by export_hf when the source has them (the reference code's tokenizer needs the
# *_config / special-token files; generation_config.json holds its default sampling settings).
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
             "generation_config.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")

# safetensors dtype name -> (NumPy storage dtype, name minimmf reports). BF16 is stored as uint16.
_DTYPES = {"F32": (np.dtype("<f4"), "float32"), "F16": (np.dtype("<f2"), "float16"),
           "BF16": (np.dtype("<u2"), "bfloat16"), "F64": (np.dtype("<f8"), "float64")}
_EXPORT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
MAX_HEADER_BYTES = 100 << 20          # the safetensors library's own limit

CONVERT_HINT = (
    "minimmf reads only safetensors (a pickle file can run arbitrary code when loaded). Convert it once "
    "with PyTorch, in the directory that holds it:\n"
    "    python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.load('pytorch_model.bin', map_location='cpu', weights_only=True); "
    "save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\"\n"
    "or with the reference code (pip install matmulfreellm): "
    "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)")


# ----------------------------------------------------------------------------- bfloat16

def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32, exactly: the bf16 bits are the float32's top 16 bits."""
    bits = np.asarray(bits)
    assert bits.dtype == np.uint16, bits.dtype
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest, ties to even (what torch does).

    Adding 0x7FFF plus the lowest kept bit to the 32-bit pattern and dropping the low 16 bits rounds
    the mantissa to nearest-even; the carry rolls into the exponent when it should. NaN stays NaN.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, ((u >> 16) | np.uint32(0x40)).astype(np.uint16), rounded)


# ----------------------------------------------------------------------------- safetensors, by hand

def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a .safetensors file. Returns ({key: array}, {key: dtype name}).

    float32/float16/float64 arrays keep their dtype; bf16 arrays come back as float32 (exactly).
    A file whose header or data does not add up raises CheckpointError naming the file and the problem.
    """
    path = Path(path)
    size = path.stat().st_size
    bad = f"{path} is not a valid safetensors file"
    if size < 8:
        raise CheckpointError(f"{bad}: only {size} bytes (truncated?)")
    raw = np.memmap(path, dtype=np.uint8, mode="r")          # mapped, not read: tensors are copied once
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise CheckpointError(f"{bad}: its header claims {n} bytes but the file has {size} "
                              f"(truncated or corrupt)")
    try:
        header = json.loads(raw[8:8 + n].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{bad}: its JSON header cannot be parsed ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad}: its header is not a JSON object")
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    tensors, dtypes, spans = {}, {}, []
    for key, entry in header.items():
        try:
            code, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{bad}: the header entry of {key!r} lacks dtype/shape/data_offsets") from None
        if (not isinstance(code, str) or not all(_is_count(d) for d in shape)
                or not (_is_count(start) and _is_count(end))):
            raise CheckpointError(f"{bad}: the header entry of {key!r} has fields of the wrong type (expected "
                                  f"dtype: str, shape: list of non-negative int, data_offsets: [int, int]), "
                                  f"got {entry!r:.200}")
        if code not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has dtype {code}; minimmf reads "
                                  f"{sorted(_DTYPES)} (floating-point weights)")
        storage, name = _DTYPES[code]
        nbytes = int(np.prod(shape, dtype=np.int64)) * storage.itemsize
        if not (0 <= start <= end <= len(data)) or end - start != nbytes:
            raise CheckpointError(f"{bad}: tensor {key!r} ({code} {list(shape)}) should span {nbytes} bytes, "
                                  f"its offsets are [{start}, {end}) in {len(data)} data bytes "
                                  f"(truncated or corrupt)")
        arr = data[start:end].view(storage).reshape(shape)
        tensors[key] = bf16_to_float32(arr) if code == "BF16" else np.array(arr)   # a copy, not the map
        dtypes[key] = name
        spans.append((start, end))
    spans.sort()
    if any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:])):
        raise CheckpointError(f"{bad}: two tensors overlap in its data section")
    if (spans[-1][1] if spans else 0) != len(data):
        raise CheckpointError(f"{bad}: {len(data)} data bytes but the tensors cover "
                              f"{spans[-1][1] if spans else 0} (truncated, or extra bytes)")
    return tensors, dtypes


def write_safetensors(path, tensors: dict[str, np.ndarray], dtype: str = "float32") -> None:
    """Write ``{key: float array}`` as a .safetensors file with every tensor in ``dtype``
    (float32, float16 or bfloat16; bf16 by round-to-nearest-even). Keys are written in the given order."""
    code = _EXPORT_DTYPES[dtype]
    header, blobs, offset = {}, [], 0
    for key, arr in tensors.items():
        a = np.asarray(arr, dtype=np.float32)
        blob = (float32_to_bf16(a) if code == "BF16" else a.astype(_DTYPES[code][0])).tobytes()
        header[key] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"format": "pt"}                # what transformers expects to find
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)                                # data starts 8-byte aligned, as the library does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for blob in blobs:
            f.write(blob)


# ----------------------------------------------------------------------------- reading a directory

@dataclass
class Pretrained:
    """The pieces of a checkpoint directory, before a model is built from them."""
    config: dict                      # config.json as read
    state_dict: dict                  # {released key: float32/float16/float64 array}
    dtypes: dict                      # {released key: "float32" | "float16" | "bfloat16" | "float64"}
    tokenizer: object | None          # minimmf.tokenizer.Tokenizer, or None without tokenizer.json
    path: Path                        # the directory read

    @property
    def dtype(self) -> str:
        """The checkpoint's storage dtype (the widest one if it mixes several)."""
        order = ["bfloat16", "float16", "float32", "float64"]
        return max(set(self.dtypes.values()), key=order.index)


def _weight_files(d: Path) -> list[tuple[Path, set | None]]:
    """[(file, keys the index assigns to it, or None for a single file)], or the pickle refusal."""
    if (d / INDEX_FILE).exists():
        weight_map = _read_json(d / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in weight_map.items()):
            raise CheckpointError(f"{d / INDEX_FILE} is not a valid index: expected a 'weight_map' object "
                                  f"mapping each tensor name to a shard file name")
        shards: dict[str, set] = {}
        for key, fname in weight_map.items():
            if Path(fname).name != fname or fname in ("", ".", ".."):
                raise CheckpointError(f"{d / INDEX_FILE}: shard {fname!r} of {key!r} is not a file name "
                                      f"in this directory")
            shards.setdefault(fname, set()).add(key)
        for fname in shards:
            if not (d / fname).exists():
                raise CheckpointError(f"{d / INDEX_FILE} lists shard {fname}, which is missing from {d}")
        return [(d / f, keys) for f, keys in sorted(shards.items())]
    if (d / SINGLE_FILE).exists():
        return [(d / SINGLE_FILE, None)]
    pickles = [f for f in PICKLE_FILES if (d / f).exists()]
    if pickles:
        raise CheckpointError(f"{d} holds {pickles[0]} (a PyTorch pickle) and no {SINGLE_FILE}. "
                              + CONVERT_HINT)
    raise CheckpointError(f"{d} has no {SINGLE_FILE} (nor {INDEX_FILE} with shards): "
                          f"expected a released MMfreeLM directory or a minimmf checkpoint")


def read_pretrained(path, tokenizer: bool = True) -> Pretrained:
    """Read a released-format directory (or a minimmf run/checkpoint directory) without building a model."""
    p = Path(path)
    recover_directory(p, f".{p.name}.old-")                       # an export killed between its renames
    if p.is_file() and p.name in PICKLE_FILES:
        raise CheckpointError(f"{p} is a PyTorch pickle. " + CONVERT_HINT)
    d = checkpoint_dir(p)
    if not d.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: expected a directory with config.json and "
                              f"{SINGLE_FILE}")
    if not (d / "config.json").exists():
        raise CheckpointError(f"{d} has no config.json; is this a released MMfreeLM directory?")
    files = _weight_files(d)
    _verify_manifest(d)                                           # minimmf checkpoints only; else no-op
    config = _read_json(d / "config.json")
    try:
        architecture_of_config(config)
    except ValueError as e:
        raise CheckpointError(f"{d / 'config.json'}: {e}") from None
    state_dict, dtypes = {}, {}
    for f, keys in files:
        tensors, kinds = read_safetensors(f)
        if keys is not None and set(tensors) != keys:
            missing, extra = sorted(keys - set(tensors)), sorted(set(tensors) - keys)
            raise CheckpointError(f"{f.name} does not hold what {INDEX_FILE} says: "
                                  + (f"missing tensor {missing[0]!r}" if missing else
                                     f"unlisted tensor {extra[0]!r}"))
        dup = set(tensors) & set(state_dict)
        if dup:
            raise CheckpointError(f"tensor {sorted(dup)[0]!r} appears in two shards ({f.name} and another)")
        state_dict.update(tensors)
        dtypes.update(kinds)
    tok = None
    if tokenizer and (d / "tokenizer.json").exists():
        from .tokenizer import Tokenizer
        tok = Tokenizer.load(d / "tokenizer.json")
    return Pretrained(config, state_dict, dtypes, tok, d)


def check_tokenizer(tokenizer, config: MMfreeConfig, where="tokenizer.json") -> None:
    """The tokenizer must not produce ids the model has no embedding for.

    A model may have more embedding rows than the tokenizer has tokens (vocabularies are often padded
    to a multiple of 64); the reverse would index past the embedding table.
    """
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{where} has {tokenizer.vocab_size} tokens but config.json says "
                              f"vocab_size={config.vocab_size}: the tokenizer does not belong to this model")


def load_pretrained(path, packed: bool = False):
    """A model from a released MMfreeLM directory or a minimmf checkpoint, ready for forward/step/generate.

    ``path``: a directory with config.json + model.safetensors (or shards + index), or a minimmf run
    directory. Weights (fp32, fp16 or bf16) are widened to float32 exactly. ``packed=True`` returns
    ``model.pack()`` (2-bit codes, integer kernels; inference only). The tokenizer, if the directory
    has a tokenizer.json, is ``model.tokenizer`` (else None).
    """
    pre = read_pretrained(path)
    if not architecture_of_config(pre.config).ternary:        # the baseline (minimmf/baseline): float only
        from .checkpoint import load_checkpoint
        model = load_checkpoint(pre.path, with_optimizer=False).model
        model.tokenizer = pre.tokenizer
        return model
    try:
        cfg = MMfreeConfig.from_reference(pre.config)
    except ConfigError as e:
        raise CheckpointError(f"{pre.path / 'config.json'}: {e}") from None
    check_tokenizer(pre.tokenizer, cfg, str(pre.path / "tokenizer.json"))
    try:
        model = from_reference(pre.config, pre.state_dict)
    except ValueError as e:
        raise CheckpointError(f"{pre.path}: {e}") from None
    model.tokenizer = pre.tokenizer
    return model.pack() if packed else model


# ----------------------------------------------------------------------------- export

def _released_config(pre: Pretrained, dtype: str) -> dict:
    """The source's config.json with every field minimmf knows rewritten in the released form."""
    cfg = MMfreeConfig.from_reference(pre.config)
    out = {k: v for k, v in pre.config.items() if k not in ("torch_dtype", "dtype")}
    out.update(cfg.to_reference())
    out["torch_dtype"] = dtype
    return out


def _shards(keys: list, sizes: dict, max_bytes: int | None) -> list[list]:
    """Consecutive keys grouped into shards of at most max_bytes (a bigger tensor gets its own shard)."""
    if max_bytes is None:
        return [keys]
    shards, cur, cur_bytes = [], [], 0
    for k in keys:
        if cur and cur_bytes + sizes[k] > max_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(k)
        cur_bytes += sizes[k]
    return shards + [cur] if cur else shards


def export_hf(src, out, dtype: str | None = None, max_shard_bytes: int | None = None,
              overwrite: bool = False) -> Path:
    """Write ``src`` (a minimmf checkpoint/run directory or a released directory) in the released layout.

    ``out`` gets config.json (released fields, ``torch_dtype``), model.safetensors (released key names
    and shapes; shards + model.safetensors.index.json if ``max_shard_bytes`` is given) and the tokenizer
    files copied byte for byte. ``dtype``: "float32", "float16" or "bfloat16"; default the source's own,
    which makes ``load_pretrained(out)`` give bit-identical parameters. The directory is written next to
    ``out`` under a temporary name and renamed into place only when complete.
    """
    pre = read_pretrained(src, tokenizer=False)
    if not architecture_of_config(pre.config).ternary:
        raise CheckpointError(f"{src} is a {architecture_of_config(pre.config).title} run: export writes the "
                              f"released MMfreeLM layout only (its checkpoint/ directory is already "
                              f"config.json + model.safetensors)")
    dtype = dtype or ("float32" if pre.dtype == "float64" else pre.dtype)
    if dtype not in _EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_EXPORT_DTYPES)}, got {dtype!r}")
    model = from_reference(pre.config, pre.state_dict)          # validates names, shapes and values
    state_dict = to_reference(model)                              # released key order
    out = Path(out)
    recover_directory(out, f".{out.name}.old-")                  # a previous export killed between renames
    if out.resolve() in (pre.path.resolve(), *pre.path.resolve().parents):
        raise CheckpointError(f"--out {out} is the directory being exported (or holds it); choose another")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; choose another output directory or pass overwrite=True "
                              f"(--overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(_released_config(pre, dtype), indent=2))
        itemsize = 4 if dtype == "float32" else 2
        sizes = {k: v.size * itemsize for k, v in state_dict.items()}
        groups = _shards(list(state_dict), sizes, max_shard_bytes)
        if len(groups) == 1:
            write_safetensors(tmp / SINGLE_FILE, state_dict, dtype)
        else:
            weight_map = {}
            for i, keys in enumerate(groups):
                name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
                write_safetensors(tmp / name, {k: state_dict[k] for k in keys}, dtype)
                weight_map.update({k: name for k in keys})
            index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
        for name in AUX_FILES:
            if (pre.path / name).exists():
                shutil.copyfile(pre.path / name, tmp / name)
        return install_directory(tmp, out, f".{out.name}.old-")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
