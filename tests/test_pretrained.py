"""Released checkpoints: the golden model through the released layout (fp32, bf16, shards), export round
trips, the CLI, and one clear error per kind of bad input.

The released directories here are written by the test itself, independently of minimmf's writer:
fp32 with the ``safetensors`` library, bf16 with a hand-written file whose bf16 rounding is computed here
(nearest of the two neighbouring bf16 values, ties to the even one) rather than by ``pretrained.py``.
"""
import io
import json
import struct
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

import minimmf
from minimmf import pretrained
from minimmf.__main__ import main
from minimmf.checkpoint import CheckpointError, save_checkpoint
from minimmf.packed import PackedMMfreeLM
from minimmf.pretrained import bf16_to_float32, export_hf, float32_to_bf16, load_pretrained, read_safetensors
from minimmf.tokenizer import train_char
from minimmf.tree import leaves

# ----------------------------------------------------------------------------- writing released dirs, independently


def bf16_round_independent(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bf16 value as float32 (ties to an even last mantissa bit), by comparing the
    two candidates in float64: an independent check of ``pretrained.float32_to_bf16``."""
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32)
    down = (u & np.uint32(0xFFFF0000)).view(np.float32)                       # toward zero
    up = ((u & np.uint32(0xFFFF0000)) + np.uint32(0x10000)).view(np.float32)  # away from zero
    up64 = np.where(np.isinf(up), np.copysign(2.0 ** 128, x.astype(np.float64)), up.astype(np.float64))  # inf: 2**128
    d_down = np.abs(x.astype(np.float64) - down.astype(np.float64))
    d_up = np.abs(up64 - x.astype(np.float64))
    down_even = ((down.view(np.uint32) >> 16) & 1) == 0
    pick_up = (d_up < d_down) | ((d_up == d_down) & ~down_even)
    return np.where(pick_up, up, down)


def write_bf16_safetensors(path: Path, tensors: dict) -> None:
    """A bf16 .safetensors file written by hand: 8-byte header size, JSON header, raw little-endian data."""
    header, data = {}, b""
    for key, arr in tensors.items():
        bits = (bf16_round_independent(arr).view(np.uint32) >> 16).astype("<u2")
        header[key] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [len(data), len(data) + bits.nbytes]}
        data += bits.tobytes()
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def released_dir(path: Path, golden, dtype="float32", state_dict=None) -> Path:
    """A released-format directory from the golden file: config.json + model.safetensors."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(str(golden["config_json"]))
    sd = dict(golden.state_dict if state_dict is None else state_dict)
    if dtype == "float32":
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path / "model.safetensors"))
    else:
        write_bf16_safetensors(path / "model.safetensors", sd)
    return path


def params_equal(a, b) -> bool:
    la, lb = dict(leaves(a.params)), dict(leaves(b.params))
    return la.keys() == lb.keys() and all(np.array_equal(la[k].view(np.uint32), lb[k].view(np.uint32)) for k in la)


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory, golden):
    return released_dir(tmp_path_factory.mktemp("fp32") / "MMfreeLM-A", golden)


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory, golden):
    return released_dir(tmp_path_factory.mktemp("bf16") / "MMfreeLM-A-bf16", golden, dtype="bfloat16")


@pytest.fixture(scope="module")
def tokenizer():
    """A character tokenizer with exactly the golden model's 256 tokens (printable ASCII and beyond)."""
    return train_char("".join(chr(0x20 + i) for i in range(256)))


# ----------------------------------------------------------------------------- loading


def test_released_fp32_directory_reproduces_the_golden_logits(fp32_dir, golden):
    """An fp32 released directory built from the golden file loads and gives the golden logits (<= 1e-4)."""
    model = load_pretrained(fp32_dir)
    assert model.tokenizer is None
    err = np.abs(model.forward(golden["input_ids"]) - golden["logits"]).max()
    assert err <= 1e-4, err


def test_released_bf16_directory_loads_exactly_the_bf16_rounded_weights(bf16_dir, golden):
    """bf16 weights widen exactly: the model equals the float path on independently bf16-rounded weights,
    logits included, and its distance to the fp32 golden logits is bf16's rounding effect (reported)."""
    model = load_pretrained(bf16_dir)
    rounded = minimmf.from_reference(golden.config, {k: bf16_round_independent(v) for k, v in golden.state_dict.items()})
    assert params_equal(model, rounded)
    logits = model.forward(golden["input_ids"])
    np.testing.assert_array_equal(logits, rounded.forward(golden["input_ids"]))
    diff = float(np.abs(logits - golden["logits"]).max())
    print(f"bf16 vs fp32 golden logits: max |diff| = {diff:.4f} (max |logit| {np.abs(golden['logits']).max():.2f})")
    assert 0 < diff < 0.5 * np.abs(golden["logits"]).max()


def test_released_fp16_directory_loads_the_fp16_weights_exactly(tmp_path, golden):
    """float16 tensors are widened exactly: the model equals the float path on float16-cast weights."""
    sd16 = {k: v.astype(np.float16) for k, v in golden.state_dict.items()}
    d = tmp_path / "fp16"
    d.mkdir()
    (d / "config.json").write_text(str(golden["config_json"]))
    save_file(sd16, str(d / "model.safetensors"))
    model = load_pretrained(d)
    assert params_equal(model, minimmf.from_reference(golden.config, {k: v.astype(np.float32) for k, v in sd16.items()}))
    out = export_hf(d, tmp_path / "out")                                  # stays float16, round-trips exactly
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        assert f.get_slice("lm_head.weight").get_dtype() == "F16"
    assert params_equal(load_pretrained(out), model)


def test_bf16_widening_is_exact_for_every_finite_bit_pattern():
    """All 2**16 bf16 patterns widen to float32 and round back to themselves (NaNs stay NaN)."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = bf16_to_float32(bits)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(float32_to_bf16(x)[finite], bits[finite])
    assert np.isnan(bf16_to_float32(float32_to_bf16(x[~np.isfinite(x) & np.isnan(x)]))).all()


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
@example([3.3961775e38, -3.3961775e38, 1.0039062, 1.0117188, 2.0 ** -133])   # overflow to inf; ties; subnormal
def test_bf16_rounding_is_round_to_nearest_even(values):
    """float32_to_bf16 picks the nearer bf16 neighbour, the even one on a tie (as torch does); a value at or
    above half-way past the largest bf16 rounds to infinity."""
    x = np.array(values, np.float32)
    np.testing.assert_array_equal(bf16_to_float32(float32_to_bf16(x)), bf16_round_independent(x))


def test_sharded_checkpoint_with_index_loads_like_a_single_file(tmp_path, golden, fp32_dir):
    """Shards listed by model.safetensors.index.json load into the same model as one model.safetensors."""
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text(str(golden["config_json"]))
    keys = list(golden.state_dict)
    parts = [keys[:10], keys[10:25], keys[25:]]
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: golden.state_dict[k] for k in part}, str(d / name))
        weight_map.update({k: name for k in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert params_equal(load_pretrained(d), load_pretrained(fp32_dir))


def test_minimmf_training_checkpoint_loads_with_its_tokenizer(tmp_path, golden_model, tokenizer):
    """load_pretrained opens minimmf's own run directories (manifest checked) and attaches the tokenizer."""
    save_checkpoint(tmp_path / "run", golden_model, tokenizer=tokenizer)
    model = load_pretrained(tmp_path / "run")
    assert params_equal(model, golden_model)
    assert model.tokenizer.vocab_size == tokenizer.vocab_size
    packed = load_pretrained(tmp_path / "run", packed=True)
    assert isinstance(packed, PackedMMfreeLM) and packed.tokenizer is not None


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("source, dtype, shard", [("fp32", None, None), ("bf16", None, None),
                                                   ("bf16", "float32", None), ("fp32", None, 40_000)])
def test_export_then_load_round_trips_bit_exactly(tmp_path, fp32_dir, bf16_dir, source, dtype, shard):
    """export_hf -> load_pretrained gives the source's parameters bit for bit (single file or shards)."""
    src = fp32_dir if source == "fp32" else bf16_dir
    out = export_hf(src, tmp_path / "out", dtype=dtype, max_shard_bytes=shard)
    assert params_equal(load_pretrained(out), load_pretrained(src))
    if shard:
        assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
        again = export_hf(out, tmp_path / "again")                  # shards in, one file out
        assert params_equal(load_pretrained(again), load_pretrained(src))


def test_export_writes_the_released_keys_shapes_dtypes_and_config(tmp_path, golden, bf16_dir):
    """The exported files are what the reference code loads: released key names and shapes, the dtype
    asked for (read by the safetensors library itself), and the SPEC §7 config fields."""
    out = export_hf(bf16_dir, tmp_path / "out")
    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        keys = list(f.keys())
        assert sorted(keys) == sorted(k for k, _ in golden.meta["state_dict_keys"])
        for key, shape in golden.meta["state_dict_keys"]:
            sl = f.get_slice(key)
            assert sl.get_shape() == shape and sl.get_dtype() == "BF16", key
    cfg = json.loads((out / "config.json").read_text())
    spec = {"model_type": "hgrn_bit", "num_heads": 1, "expand_ratio": 1, "use_short_conv": False,
            "use_lower_bound": True, "hidden_ratio": 4, "intermediate_size": None, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "vocab_size": 256,
            "hidden_size": 64, "num_hidden_layers": 2, "torch_dtype": "bfloat16"}
    assert {k: cfg[k] for k in spec} == spec
    with safe_open(str(export_hf(bf16_dir, tmp_path / "f32", dtype="float32") / "model.safetensors"), "numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("lm_head.weight"), load_pretrained(bf16_dir).params["lm_head"]["W"])


def test_export_copies_the_tokenizer_byte_for_byte(tmp_path, golden_model, tokenizer):
    """tokenizer.json travels unchanged from a minimmf run to the released layout."""
    save_checkpoint(tmp_path / "run", golden_model, tokenizer=tokenizer)
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "run" / "checkpoint" / "tokenizer.json").read_bytes()
    assert not (out / "optimizer.safetensors").exists() and not (out / "manifest.json").exists()


def test_export_is_atomic_when_writing_fails(tmp_path, fp32_dir, monkeypatch):
    """A failure midway leaves no output directory and no temporary files; an existing output survives."""
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(pretrained, "write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        export_hf(fp32_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(OSError):
        export_hf(fp32_dir, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep").exists() and len(list(tmp_path.iterdir())) == 1


def test_export_refuses_to_overwrite_without_being_asked(tmp_path, fp32_dir):
    """An existing output directory is an error unless overwrite=True (--overwrite), which replaces it."""
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        export_hf(fp32_dir, tmp_path / "out")
    export_hf(fp32_dir, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- the command line


def run_cli(*argv) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main([str(a) for a in argv]) == 0
    return buf.getvalue()


def test_cli_exports_and_generates_from_a_released_directory(tmp_path, golden, tokenizer):
    """`minimmf export --format hf` writes the released layout; `minimmf generate --checkpoint` reads it,
    and greedy text is the same from the packed and the float model."""
    src = released_dir(tmp_path / "src", golden)
    tokenizer.save(src / "tokenizer.json")
    run_cli("export", "--format", "hf", "--checkpoint", src, "--out", tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in (tmp_path / "hf").iterdir()}
    args = ("generate", "--checkpoint", tmp_path / "hf", "--prompt", "the ", "--max-tokens", 12, "--temperature", 0)
    packed_text = run_cli(*args)
    assert packed_text.startswith("the ") and packed_text == run_cli(*args, "--float")


def test_cli_generate_without_a_tokenizer_says_why(tmp_path, fp32_dir, capsys):
    """A released directory without tokenizer.json cannot generate text, and the error says so."""
    assert main(["generate", "--checkpoint", str(fp32_dir), "--prompt", "x"]) == 2
    assert "has no tokenizer.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input, one test each


def test_a_missing_tensor_is_named(tmp_path, golden):
    """A state dict without one of the config's tensors names that tensor."""
    sd = dict(golden.state_dict)
    sd.pop("model.layers.1.mlp.down_proj.norm.weight")
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.1\.mlp\.down_proj\.norm\.weight"):
        load_pretrained(released_dir(tmp_path / "d", golden, state_dict=sd))


def test_an_extra_tensor_is_named(tmp_path, golden):
    """A tensor the config does not use (e.g. a third layer) is named."""
    sd = dict(golden.state_dict, **{"model.layers.2.attn_norm.weight": np.ones(64, np.float32)})
    with pytest.raises(CheckpointError, match=r"does not use.*model\.layers\.2\.attn_norm\.weight"):
        load_pretrained(released_dir(tmp_path / "d", golden, state_dict=sd))


def test_a_misshaped_tensor_is_named_with_both_shapes(tmp_path, golden):
    """A tensor of the wrong shape is named with its shape and the shape the config implies."""
    sd = dict(golden.state_dict, **{"model.embeddings.weight": np.zeros((300, 64), np.float32)})
    with pytest.raises(CheckpointError, match=r"model\.embeddings\.weight.*\(300, 64\).*\(256, 64\)"):
        load_pretrained(released_dir(tmp_path / "d", golden, state_dict=sd))


@pytest.mark.parametrize("field, value", [("use_short_conv", True), ("expand_ratio", 2),
                                          ("tie_word_embeddings", True), ("model_type", "llama")])
def test_an_unsupported_config_option_is_named(tmp_path, golden, field, value):
    """Config options no released checkpoint uses are refused, naming the field and the file."""
    d = released_dir(tmp_path / "d", golden)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"config\.json.*{field if field != 'model_type' else 'hgrn_bit'}"):
        load_pretrained(d)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, golden):
    """A tokenizer with more tokens than config.json's vocab_size does not belong to the model."""
    d = released_dir(tmp_path / "d", golden)
    train_char("".join(chr(0x100 + i) for i in range(300))).save(d / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"300 tokens.*vocab_size=256"):
        load_pretrained(d)


def test_pytorch_model_bin_is_refused_with_the_conversion_recipe(tmp_path, golden):
    """A pickle checkpoint is never unpickled: the error explains how to convert it to safetensors."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.json").write_text(str(golden["config_json"]))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    for path in (d, d / "pytorch_model.bin"):
        with pytest.raises(CheckpointError, match=r"(?s)pickle.*torch\.load.*save_file.*safe_serialization"):
            load_pretrained(path)


def _corrupt(raw: bytes, how: str) -> bytes:
    n = struct.unpack("<Q", raw[:8])[0]
    if how == "truncated data":
        return raw[:-100]
    if how == "truncated header":
        return raw[:8 + n // 2]
    if how == "garbage header":
        return raw[:8] + b"{" * n + raw[8 + n:]
    if how == "header size too large":
        return struct.pack("<Q", 1 << 40) + raw[8:]
    if how == "tiny file":
        return raw[:5]
    if how == "extra bytes":
        return raw + b"\0" * 16
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated data", "truncated header", "garbage header", "header size too large",
                                 "tiny file", "extra bytes"])
def test_a_corrupt_safetensors_file_is_reported_not_misread(tmp_path, golden, how):
    """Truncated, garbled or padded safetensors files raise CheckpointError naming the file."""
    d = released_dir(tmp_path / "d", golden)
    f = d / "model.safetensors"
    f.write_bytes(_corrupt(f.read_bytes(), how))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(d)


def test_a_non_float_tensor_is_refused(tmp_path):
    """Integer tensors (e.g. a quantized export from another tool) are refused, naming the tensor and dtype."""
    save_file({"model.norm.weight": np.ones(4, np.int32)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*I32"):
        read_safetensors(tmp_path / "x.safetensors")


def test_an_index_that_disagrees_with_its_shards_is_reported(tmp_path, golden):
    """A shard that is missing, or that lacks a tensor the index assigns to it, is named."""
    d = released_dir(tmp_path / "d", golden)
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    wm = {k: "model-00001-of-00001.safetensors" for k in golden.state_dict}
    wm["model.extra.weight"] = "model-00001-of-00001.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.extra\.weight'"):
        load_pretrained(d)
    wm.pop("model.extra.weight")
    wm["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors, which is missing"):
        load_pretrained(d)


def test_a_directory_without_weights_or_config_says_what_is_missing(tmp_path, golden):
    """No config.json, or no weights file at all, is an error naming the missing file."""
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(str(golden["config_json"]))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(tmp_path / "d")


@pytest.mark.parametrize("index", ['{"weight_map": [1, 2]}', '{"weight_map": {"a": 5}}', '[]', '{"weight_map":',
                                   '{"weight_map": {"model.norm.weight": ".."}}'])
def test_a_malformed_shard_index_is_named(tmp_path, fp32_dir, index):
    """An index whose weight_map is not {tensor: shard file} is a CheckpointError naming the index."""
    out = export_hf(fp32_dir, tmp_path / "out", max_shard_bytes=20_000)
    (out / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match="model.safetensors.index.json"):
        load_pretrained(out)
