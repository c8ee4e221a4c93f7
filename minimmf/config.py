"""Model configuration: the fields of a released ``config.json`` that change the math.

Every field carries the released default. ``MMfreeConfig.from_reference`` reads a released
``config.json`` dict (rejecting options the released checkpoints never use, with a message
saying why), and ``to_reference`` writes one back.

Taught in chapter 5 (``chapters/05-the-glu.md``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


# The numerical floors of the released model, defined once (SPEC §1, §2) and imported where they are used.
NORM_EPS = 1e-6        # every RMSNorm of the released model (the config's rms_norm_eps default)
BITLINEAR_EPS = 1e-6   # BitLinear's own RMSNorm: fixed, the fused kernel the released model runs ignores eps
WEIGHT_EPS = 1e-5      # floor on mean(|W|) of a ternary matrix, so an all-zero matrix does not divide by zero
ACT_EPS = 1e-5         # floor on max(|x|) of a token before its int8 quantization


def intermediate_size_for(hidden_size: int, hidden_ratio: int = 4) -> int:
    """The GLU's width I = 256 * ceil(int(H * hidden_ratio * 2/3) / 256): the released default (SPEC §4)."""
    i = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((i + 255) // 256)


class ConfigError(ValueError):
    """A configuration that minimmf cannot run, with the field and the fix in the message."""


@dataclass(frozen=True)
class MMfreeConfig:
    vocab_size: int = 32000                # V: tokens
    hidden_size: int = 1024                # H: model width
    num_hidden_layers: int = 24            # L: blocks
    num_heads: int = 1                     # MLGRU heads: a reshape of H, no effect on the math
    intermediate_size: int | None = None   # I of the GLU; None -> 256 * ceil(int(H * hidden_ratio * 2/3) / 256)
    hidden_ratio: int = 4                  # used only when intermediate_size is None
    use_lower_bound: bool = True           # learned forget-gate floors per layer (SPEC §3)
    rms_norm_eps: float = NORM_EPS         # block and final RMSNorms (BitLinear's own is BITLINEAR_EPS)
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    initializer_range: float = 0.02        # std of the N(0, σ) init of non-MLGRU weights

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                              f"({self.num_heads})")
        if self.intermediate_size is not None and (not isinstance(self.intermediate_size, int)
                                                   or self.intermediate_size < 1):
            raise ConfigError(f"intermediate_size must be a positive integer or None, "
                              f"got {self.intermediate_size!r}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and math.isfinite(self.rms_norm_eps)
                and self.rms_norm_eps > 0):
            raise ConfigError(f"rms_norm_eps must be a positive finite number, got {self.rms_norm_eps!r}")

    @property
    def I(self) -> int:
        """The GLU's intermediate size, after the released rounding rule."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        return intermediate_size_for(self.hidden_size, self.hidden_ratio)

    # ------------------------------------------------------------------ released config.json

    @classmethod
    def from_reference(cls, cfg: dict) -> "MMfreeConfig":
        """Read a released ``config.json`` dict (model type ``hgrn_bit``)."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"config must be a dict (the content of config.json), got {type(cfg).__name__}")
        mt = cfg.get("model_type", "hgrn_bit")
        if mt != "hgrn_bit":
            raise ConfigError(f"config model_type is {mt!r}; minimmf runs the MatMul-free LM, "
                              f"model_type 'hgrn_bit'")
        for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
            if key not in cfg:
                raise ConfigError(f"config is missing the required field {key!r}")
        if cfg.get("use_short_conv", False):
            raise ConfigError("config use_short_conv=true is not supported: no released MMfreeLM "
                              "checkpoint uses the short convolution; set it to false")
        if cfg.get("expand_ratio", 1) not in (1, None):
            raise ConfigError(f"config expand_ratio={cfg['expand_ratio']!r} is not supported: "
                              f"released checkpoints use expand_ratio 1")
        if cfg.get("tie_word_embeddings", False):
            raise ConfigError("config tie_word_embeddings=true is not supported: the released model "
                              "has an untied ternary LM head; set it to false")
        if cfg.get("attn_mode", "fused_recurrent") not in ("fused_recurrent", "chunk", "fused_chunk"):
            raise ConfigError(f"config attn_mode={cfg['attn_mode']!r} is unknown")
        nullable = ("intermediate_size", "bos_token_id", "eos_token_id")
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name in cfg and (cfg[f.name] is not None or f.name in nullable):
                kw[f.name] = cfg[f.name]
        return cls(**kw)

    def to_reference(self) -> dict:
        """A released-style ``config.json`` dict for this configuration."""
        return {
            "model_type": "hgrn_bit",
            "architectures": ["HGRNBitForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_heads": self.num_heads,
            "attn_mode": "fused_recurrent",
            "expand_ratio": 1,
            "use_short_conv": False,
            "conv_size": 4,
            "share_conv_kernel": True,
            "use_lower_bound": self.use_lower_bound,
            "hidden_ratio": self.hidden_ratio,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "swish",
            "max_position_embeddings": 2048,
            "rms_norm_eps": self.rms_norm_eps,
            "use_cache": True,
            "initializer_range": self.initializer_range,
            "fuse_cross_entropy": True,
            "tie_word_embeddings": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": None,
        }
