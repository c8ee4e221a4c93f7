"""minimmf: the MatMul-free language model (Zhu et al., 2024) in NumPy and Numba.

Public API::

    model = minimmf.from_reference(config_dict, state_dict)   # released names and shapes
    logits = model.forward(input_ids)                         # (B, T) -> (B, T, V)
    loss, grads = model.loss_and_grads(input_ids, labels)
    state = model.init_state(B); logits, state = model.step(token_ids, state)
    minimmf.to_reference(model) / minimmf.to_reference(model, grads)
    model = minimmf.load_pretrained("MMfreeLM-370M")          # a released directory or a minimmf run
    minimmf.export_hf("runs/tiny", "out-hf")                  # back to the released layout
    for token_id in minimmf.generate(model, prompt_ids, 50): ...
    minimmf.set_path("reference")       # run every layer from its readable file ("fast", "auto": seam.py)
"""
# First, before NumPy loads OpenBLAS if it has not yet: OpenBLAS's and Numba's idle threads must not spin
# against each other on a 2-core machine (kernels/_numba.py says how, also when NumPy was imported first).
from .kernels import _numba as _threads_setup                     # noqa: F401

from .config import ConfigError, MMfreeConfig                      # noqa: E402
from .interop import from_reference, key_table, to_reference       # noqa: E402
from .model import MMfreeLM, State, init_params                   # noqa: E402
from .packed import PackedMMfreeLM                                 # noqa: E402
from .generate import generate                                     # noqa: E402
from .seam import get_path, set_path                               # noqa: E402
from .pretrained import export_hf, load_pretrained                 # noqa: E402
from .baseline import TransformerConfig, TransformerPP              # noqa: E402

__all__ = ["ConfigError", "MMfreeConfig", "MMfreeLM", "PackedMMfreeLM", "State",
           "TransformerConfig", "TransformerPP",
           "export_hf", "from_reference", "generate", "get_path", "init_params", "key_table", "load_pretrained",
           "set_path", "to_reference"]
__version__ = "0.1.0"

from . import seam as _seam   # noqa: E402
_seam.watch()                 # the layer modules as imported: later assignments to them are noticed
