"""The paper's baseline, Transformer++ (Llama-2 style), in minimmf's style: manual forward/backward
pairs, the same public interface as ``MMfreeLM`` (so the same trainer, data and optimizer run it), and a
KV cache for decoding.

    layers.py   linear, rotary embeddings, causal attention, SwiGLU — forward/backward pairs
    model.py    TransformerConfig, the block, the model, TransformerPP

Taught in chapter 14 (``chapters/14-matmul-free-vs-transformer.md``).
"""
from .model import ARCHITECTURE, KVCache, TransformerConfig, TransformerPP, init_params, param_shapes

__all__ = ["ARCHITECTURE", "KVCache", "TransformerConfig", "TransformerPP", "init_params", "param_shapes"]
