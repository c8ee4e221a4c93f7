"""What every minimmf language model offers, written once: MMfreeLM and the Transformer++ baseline.

A model is a config and a parameter tree plus a functional forward/backward pair. A subclass names
its pair and its checks as class attributes and defines its decoding state (``init_state``,
``_check_state``); everything a user calls — ``forward``, ``prefill``, ``step``, ``loss``,
``loss_and_grads`` — validates its input here and then runs that pair.
"""
from __future__ import annotations

import numpy as np

from . import validate
from .seam import op
from .tree import leaves


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

    def forward(self, input_ids) -> np.ndarray:
        """Logits for every position. Shapes: input_ids (B, T) int -> (B, T, V)."""
        return self.prefill(input_ids)[0]

    def prefill(self, input_ids, state=None):
        """Run a whole sequence (optionally continuing ``state``). Returns (logits (B, T, V), state)."""
        validate.finite_tree(self.params)                     # a parameter changed to NaN is named
        ids = validate.token_ids(input_ids, self.config.vocab_size)
        if state is not None:
            self._check_state(state, ids.shape[0])
        logits, _, new_state = self._model_forward(self._forward_params(), self.config, ids, state)
        return logits, new_state

    def loss_and_grads(self, input_ids, labels):
        """Mean shifted cross-entropy and its gradient tree (keys and shapes of ``params``).

        Position t predicts labels[t + 1]; labels equal to -100 are ignored.
        """
        validate.finite_tree(self.params)                     # a parameter changed to NaN is named
        ids = validate.token_ids(input_ids, self.config.vocab_size)
        lab = validate.labels(labels, ids.shape, self.config.vocab_size)
        logits, cache, _ = self._model_forward(self.params, self.config, ids, None)
        loss, c_loss = op.cross_entropy_forward(logits, lab)
        if not np.isfinite(loss):
            self._check_params(self.params, self.config)   # names the bad parameter if there is one
            raise FloatingPointError(f"loss is {loss}: the forward pass overflowed")
        return loss, self._model_backward(op.cross_entropy_backward(c_loss), cache)

    def loss(self, input_ids, labels) -> float:
        """Mean shifted cross-entropy, without gradients."""
        validate.finite_tree(self.params)                     # a parameter changed to NaN is named
        ids = validate.token_ids(input_ids, self.config.vocab_size)
        lab = validate.labels(labels, ids.shape, self.config.vocab_size)
        logits, _, _ = self._model_forward(self._forward_params(), self.config, ids, None)
        return op.cross_entropy_forward(logits, lab)[0]

    # -- decoding, one token at a time

    def step(self, token_ids, state):
        """Feed one token per sequence. Returns (logits (B, V), new state); ``state`` is not changed.

        Repeated steps give the same logits as ``forward`` on the whole sequence.
        """
        ids = validate.token_ids(token_ids, self.config.vocab_size, "token_ids", ndim=1)
        self._check_state(state, ids.shape[0])
        logits, _, new_state = self._model_forward(self._forward_params(), self.config, ids[:, None], state)
        return validate.finite_logits(self.params, logits[:, 0], new_state)   # NaN: names the parameter

    def _forward_params(self) -> dict:
        """The parameters the inference paths run on (a packed model substitutes its own)."""
        return self.params
