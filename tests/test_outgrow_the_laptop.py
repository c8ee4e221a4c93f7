"""examples/outgrow_the_laptop.py: the minimmf halves of the recipe run here; the PyTorch half is skipped cleanly."""
import importlib.util
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import minimmf
from minimmf import golden

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "outgrow_the_laptop.py"


def load():
    spec = importlib.util.spec_from_file_location("outgrow_the_laptop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_torch_the_recipe_says_what_is_missing_and_skips(monkeypatch, capsys):
    """With torch absent, main() does nothing, names torch in its message and returns {'skipped': [...]}."""
    example = load()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = example.main([])
    assert "torch" in result["skipped"]
    assert capsys.readouterr().out.startswith("skipped: this recipe needs torch")


def test_the_export_half_writes_a_float32_released_directory_minimmf_reloads(tmp_path):
    """Step 1 exports a fresh byte-level model in the released layout, float32, reloadable, with an in-vocab batch."""
    exported, batch = load().export_for_pytorch(None, tmp_path)
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "hgrn_bit" and config["torch_dtype"] == "float32"
    model = minimmf.load_pretrained(exported)
    assert batch.shape == (4, 65) and 0 <= batch.min() and batch.max() < model.config.vocab_size
    assert np.isfinite(model.loss(batch, batch))


def test_the_load_back_half_matches_the_released_codes_logits(tmp_path):
    """Step 4 on a directory the released code wrote (the golden case): logits, step and packed decoding <= 1e-4."""
    z = golden.load()
    (tmp_path / "config.json").write_text(str(z["config_json"]))
    save_file(golden.state_dict(z),
              str(tmp_path / "model.safetensors"))
    diffs = load().back_in_minimmf(tmp_path, z["input_ids"], z["logits"])
    assert set(diffs) == {"logits", "step decoding", "packed decoding"}
    assert max(diffs.values()) <= 1e-4
