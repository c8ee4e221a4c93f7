"""What every minimmf language model offers, written once: MMfreeLM and the Transformer++ baseline.

A model is a config and a parameter tree plus a functional forward/backward pair. A subclass names
its pair and its checks as class attributes and defines its decoding state (``init_state``,
``_check_state``); everything a user calls — ``forward``, ``prefill``, ``step``, ``loss``,
``loss_and_grads`` — validates its input here and then runs that pair.

Training (``loss_and_grads``) keeps every layer's cache for the backward pass. Inference (``forward``,
``prefill``, ``loss``, ``step``) keeps none, and runs a long sequence in chunks of ``chunk_size``
positions, handing the decoding state (MLGRU hidden states, or a Transformer's KV cache) from one chunk
to the next: the same numbers as one pass over the whole sequence (bit for bit for MMfreeLM, whose every
operation but the scan is per position; to float rounding for Transformer++, whose attention products
change shape), in memory that does not grow with its length, beyond what is returned (a Transformer's
KV cache, and its chunk's attention scores (B, n, C, S), do grow with the S positions seen).
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import validate
from .loss import IGNORE_INDEX
from .seam import op
from .tree import leaves

# Positions per chunk of forward / prefill / loss (``LanguageModel.chunk_size``; a model may set its own).
# Large enough that a chunk's products and kernel launches are amortized (a prompt up to this long runs in one
# pass, as before), small enough that a chunk's activations stay small: in the tiny preset, prefill peaks at
# +50 MB whatever T (measured); in a 370M model, one block's activations are ~110 KB per position (derived from
# a block cache's arrays: 16 of width H = 1024 and 4 of width I = 2816), so two blocks of a chunk take ~0.2 GB.
CHUNK_SIZE = 1024


class OutOfMemoryError(MemoryError):
    """A request that does not fit in memory; the message says what did not fit and what to do instead."""


class LanguageModel:
    # Supplied by a subclass (as staticmethods):
    #   _model_forward(params, config, ids, state) -> (logits, cache, state_after)
    #   _model_backward(dlogits, cache) -> grads
    #   _check_params(params, config)           raises ValueError naming a bad parameter
    #   _init_params(config, seed, dtype) -> params

    def __init__(self, config, params: dict):
        self._check_params(params, config)
        self.config = config
        self.params = params

    @classmethod
    def init(cls, config, seed: int = 0, dtype=np.float32):
        """A freshly initialized model (the reference initialization of its architecture)."""
        return cls(config, cls._init_params(config, seed, dtype))

    @property
    def dtype(self):
        return self.params["embeddings"].dtype

    def num_params(self) -> int:
        return sum(int(np.size(a)) for _, a in leaves(self.params))

    # -- full sequences

    chunk_size: int = CHUNK_SIZE   # positions per chunk at inference (see CHUNK_SIZE)

    def forward(self, input_ids) -> np.ndarray:
        """Logits for every position. Shapes: input_ids (B, T) int -> (B, T, V).

        Computed chunk by chunk; the result itself is B T V numbers (for a long input, ``prefill`` or
        ``loss`` need far less). ``OutOfMemoryError`` (a ``MemoryError``) if it does not fit.
        """
        validate.finite_tree(self.params)                     # a parameter changed to NaN is named
        ids = validate.token_ids(input_ids, self.config.vocab_size)
        out = None
        for t, logits, _ in self._chunks(ids, None, "forward"):
            if t == 0 and logits.shape[1] == ids.shape[1]:
                return logits                                        # one chunk: its logits are the result
            if out is None:
                out = _empty((*ids.shape, logits.shape[2]), logits.dtype, "forward")
            out[:, t:t + logits.shape[1]] = logits
        return out

    def prefill(self, input_ids, state=None):
        """Run a prompt (optionally continuing ``state``), chunk by chunk.

        Returns (logits of the LAST position (B, V), state): what generation needs to pick the next
        token, like ``step``. ``forward`` gives the logits of every position.
        """
        validate.finite_tree(self.params)                     # a parameter changed to NaN is named
        ids = validate.token_ids(input_ids, self.config.vocab_size)
        if state is not None:
            self._check_state(state, ids.shape[0])
        for _, logits, state in self._chunks(ids, state, "prefill"):
            pass
        return logits[:, -1].copy(), state

    def loss_and_grads(self, input_ids, labels):
        """Mean shifted cross-entropy and its gradient tree (keys and shapes of ``params``).

        Position t predicts labels[t + 1]; labels equal to -100 are ignored.
        """
        validate.finite_tree(self.params)                     # a parameter changed to NaN is named
        ids = validate.token_ids(input_ids, self.config.vocab_size)
        lab = validate.labels(labels, ids.shape, self.config.vocab_size)
        with _out_of_memory(f"loss_and_grads: not enough memory for the training caches of a batch of shape "
                            f"{ids.shape}; lower the batch size or the sequence length"):
            logits, cache, _ = self._model_forward(self.params, self.config, ids, None)
        loss, c_loss = op.cross_entropy_forward(logits, lab)
        if not np.isfinite(loss):
            self._check_params(self.params, self.config)   # names the bad parameter if there is one
            raise FloatingPointError(f"loss is {loss}: the forward pass overflowed")
        return loss, self._model_backward(op.cross_entropy_backward(c_loss), cache)

    def loss(self, input_ids, labels) -> float:
        """Mean shifted cross-entropy, without gradients, chunk by chunk (any length fits in memory).

        Each chunk is scored with the labels its positions predict, one past its end included (a
        placeholder position, never scored, stands for the next chunk's first); the chunks' losses
        are averaged weighted by how many positions each scored.
        """
        validate.finite_tree(self.params)                     # a parameter changed to NaN is named
        ids = validate.token_ids(input_ids, self.config.vocab_size)
        lab = validate.labels(labels, ids.shape, self.config.vocab_size)
        parts = []                                                   # (mean loss, positions scored)
        for t, logits, _ in self._chunks(ids, None, "loss"):
            lab_c = lab[:, t:t + logits.shape[1] + 1]                # (B, C + 1), or (B, C) at the end
            if lab_c.shape[1] > logits.shape[1]:                     # the placeholder position
                logits = np.concatenate([logits, np.zeros_like(logits[:, :1])], axis=1)
            if np.any(lab_c[:, 1:] != IGNORE_INDEX):                 # a chunk that scores something
                loss, c_loss = op.cross_entropy_forward(logits, lab_c)
                parts.append((loss, c_loss.count))
        if not parts:
            op.cross_entropy_forward(logits, lab_c)                  # nothing scored anywhere: its error
        if len(parts) == 1:
            return parts[0][0]                                       # one chunk: the unchunked loss, bit for bit
        return sum(loss * n for loss, n in parts) / sum(n for _, n in parts)

    def _chunks(self, ids: np.ndarray, state, what: str):
        """Yield (t, logits (B, C, V), state after the chunk) for the chunks ids[:, t:t + C] in order,
        with no training cache kept; a ``MemoryError`` becomes an ``OutOfMemoryError`` naming ``what``."""
        C = self.chunk_size
        if not isinstance(C, (int, np.integer)) or isinstance(C, bool) or C < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {C!r}")
        params = self._forward_params()
        for t in range(0, ids.shape[1], C):
            with _out_of_memory(f"{what}: not enough memory for a chunk of {ids.shape[0]} x "
                                f"{min(C, ids.shape[1])} positions; lower the model's chunk_size (now {C}) "
                                f"or the batch size"):
                logits, _, state = self._model_forward(params, self.config, ids[:, t:t + C], state, False)
            yield t, logits, state

    # -- decoding, one token at a time

    def step(self, token_ids, state):
        """Feed one token per sequence. Returns (logits (B, V), new state); ``state`` is not changed.

        Repeated steps give the same logits as ``forward`` on the whole sequence.
        """
        ids = validate.token_ids(token_ids, self.config.vocab_size, "token_ids", ndim=1)
        self._check_state(state, ids.shape[0])
        logits, _, new_state = self._model_forward(self._forward_params(), self.config, ids[:, None], state,
                                                   False)
        return validate.finite_logits(self.params, logits[:, 0], new_state)   # NaN: names the parameter

    def _forward_params(self) -> dict:
        """The parameters the inference paths run on (a packed model substitutes its own)."""
        return self.params


@contextlib.contextmanager
def _out_of_memory(message: str):
    """Turn a bare ``MemoryError`` raised in the block into an ``OutOfMemoryError`` with ``message``."""
    try:
        yield
    except OutOfMemoryError:
        raise
    except MemoryError:
        raise OutOfMemoryError(message) from None


def _empty(shape: tuple, dtype, what: str) -> np.ndarray:
    """np.empty, or an ``OutOfMemoryError`` that says how much was asked for and what to do instead."""
    try:
        return np.empty(shape, dtype)
    except MemoryError:
        gb = np.prod(shape, dtype=np.float64) * np.dtype(dtype).itemsize / 1e9
        raise OutOfMemoryError(
            f"{what}: the logits of every position, shape {shape} {np.dtype(dtype)} ({gb:.1f} GB), do not fit "
            f"in memory; for a long input use prefill (the last position's logits and the state) or loss "
            f"(scored chunk by chunk)") from None
