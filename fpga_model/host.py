"""The host: embedding lookup, one program run per token, LM head and sampling.

As on the 2024 board, the host copies the weights into DDR once, then for every token writes the input
vector, starts the core and reads the result. The recurrent state stays in DDR between tokens. The final
RMSNorm and the ternary LM head run on the host with minimmf's own functions (or on the core, with
``head_on_core=True``); sampling is minimmf's.

    sim = FPGASim(model, "rtl2024", number_format="faithful", D=64)
    logits = sim.step(token_id)                   # (V,) float32, like model.step
    tokens = sim.generate(prompt_ids, 20)         # greedy, like minimmf.generate(..., temperature=0)

Taught in chapter 12 (``chapters/12-fpga-compiling-and-stepping.md``).
"""
from __future__ import annotations

import time

import numpy as np

from minimmf.bitlinear import bitlinear_forward
from minimmf.functional import rmsnorm_forward

from .compiler import compile_model
from .core import Core
from .formats import get_format
from .functional import MachineState, run_functional


class FPGASim:
    """A minimmf model running on the simulated core, token by token.

    ``engine`` is "core" (cycle-level) or "functional" (the reference, no timing).
    ``config_overrides`` replace fields of the configuration, e.g. ``D=64`` for a tiny model.
    """

    def __init__(self, model, config="rtl2024", number_format: str | None = None, head_on_core=False,
                 engine: str = "core", **config_overrides):
        if engine not in ("core", "functional"):
            raise ValueError(f"engine must be 'core' or 'functional', got {engine!r}")
        self.model = model
        self.compiled, self.ddr = compile_model(model, config, number_format, head_on_core, **config_overrides)
        self.config = self.compiled.config
        self.fmt = get_format(self.compiled.number_format)
        self.engine = engine
        self.last_stats = None
        self.last_core = None
        self.last_seconds = 0.0

    @property
    def program(self):
        return self.compiled.program

    def reset(self) -> None:
        """Zero the recurrent state in DDR (a new sequence)."""
        c = self.compiled
        nh = c.model_config.hidden_size // c.D
        zero = self.fmt.encode_vector(np.zeros(nh * c.D, np.float32))
        for l in range(c.model_config.num_hidden_layers):
            self.ddr.write(c.vectors[f"L{l}.state"], zero)

    def new_core(self, token: int) -> Core:
        """Write the token's embedding into DDR and return a core ready to run the program (not started)."""
        c = self.compiled
        x = np.asarray(self.model.params["embeddings"][int(token)], np.float32)
        self.ddr.write(c.vectors["x_in"], self.fmt.encode_vector(x))
        state = MachineState(c.D, self.fmt, self.ddr)
        return Core(self.config, c.program, state)

    def finish(self, state: MachineState) -> np.ndarray:
        """Read the core's result and turn it into logits (V,)."""
        c, mc = self.compiled, self.compiled.model_config
        if c.head_on_core:
            n = -(-mc.vocab_size // c.D) * c.D
            words = state.ddr.read(c.vectors["logits"], n * self.fmt.word_bytes).view(self.fmt.word_dtype)
            return self.fmt.decode_vector(words)[:mc.vocab_size].astype(np.float32)
        words = state.ddr.read(c.vectors["x_out"], mc.hidden_size * self.fmt.word_bytes).view(self.fmt.word_dtype)
        h = self.fmt.decode_vector(words).astype(np.float32).reshape(1, 1, -1)   # (B, T, H) as minimmf
        hn, _ = rmsnorm_forward(h, self.model.params["norm"], mc.rms_norm_eps)
        logits, _ = bitlinear_forward(hn, self.model.params["lm_head"])
        return logits[0, 0]

    def step(self, token: int) -> np.ndarray:
        """Feed one token; return its logits (V,). Statistics of the run are in ``last_stats``."""
        t0 = time.perf_counter()
        core = self.new_core(token)
        if self.engine == "core":
            self.last_stats = core.run()
        else:
            run_functional(self.program, core.state)
        self.last_core = core
        out = self.finish(core.state)
        self.last_seconds = time.perf_counter() - t0
        return out

    def generate(self, prompt_ids, max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt_ids`` (fed one token at a time), like minimmf's temperature 0."""
        self.reset()
        logits = None
        for t in np.asarray(prompt_ids).reshape(-1):
            logits = self.step(int(t))
        out = []
        for _ in range(max_new_tokens):
            tok = int(np.argmax(logits))
            out.append(tok)
            logits = self.step(tok)
        return out
