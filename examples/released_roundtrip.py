"""A minimmf model out to the released (Hugging Face) layout and back, with the numbers checked.

    python examples/released_roundtrip.py OUT_DIR

Builds the golden test model (the released reference code's tiny model), exports it with ``export_hf``
as fp32 and as bf16, reloads both with ``load_pretrained`` and compares the logits.
"""
import json
import sys
from pathlib import Path

import numpy as np

import minimmf
from minimmf import golden


def main(out: Path) -> dict:
    z = golden.load()                                          # minimmf/golden/official_A.npz
    config = json.loads(str(z["config_json"]))
    state_dict = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
    model = minimmf.from_reference(config, state_dict)
    ids = z["input_ids"]
    reference = z["logits"]                                    # the released code's own logits
    diffs = {"minimmf vs released code": float(np.abs(model.forward(ids) - reference).max())}
    src = out / "source"
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text(json.dumps(config))
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(src / "model.safetensors"))
    for dtype in ("float32", "bfloat16"):
        path = minimmf.export_hf(src, out / dtype, dtype=dtype, overwrite=True)
        back = minimmf.load_pretrained(path)
        diffs[f"{dtype} export, reloaded"] = float(np.abs(back.forward(ids) - reference).max())
    for k, v in diffs.items():
        print(f"max |logit difference|, {k}: {v:.2e}")
    return diffs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/released_roundtrip.py OUT_DIR")
    main(Path(sys.argv[1]))
