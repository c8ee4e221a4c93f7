"""Tokenizers: text <-> token ids, as Hugging Face ``tokenizers`` objects saved as ``tokenizer.json``.

    train_bpe(text, vocab_size) -> Tokenizer    byte-level BPE (GPT-2's scheme): encodes any text
    train_char(text)            -> Tokenizer    one id per distinct character, in sorted order (nanoGPT)
    Tokenizer.load(path)        -> Tokenizer    ours, or any Hugging Face tokenizer.json
    tok.encode(text) -> ids;  tok.decode(ids) -> text;  tok.save(path)

Both kinds are real ``tokenizers.Tokenizer`` objects, so one save/load path serves all three, and the
Hugging Face library loads what minimmf saves. ``chars_per_token`` converts a loss in nats per token
into bits per character, which compares models with different tokenizers fairly:

    bits/char = (nats/token) / ln 2 / (chars/token)

Errors are ``TokenizerError`` (a ``ValueError``) with the fix in the message.

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Iterable

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from .fileio import atomic_write_bytes


class TokenizerError(ValueError):
    """A tokenizer that cannot be built, loaded or used as asked; the message says how to fix it."""


EOS_TOKEN = "<|endoftext|>"     # the BPE tokenizer's one special token, as in GPT-2
MIN_BPE_VOCAB = 256 + 1         # the 256 byte tokens + <|endoftext|>: byte-level BPE with no merges
MAX_BPE_VOCAB = 1 << 20         # far above any corpus minimmf trains on; the tokenizers library aborts the
                                # whole process (SIGABRT) on sizes like 10**9, so larger ones are refused here
# End-of-text tokens recognised in a loaded Hugging Face tokenizer.json, first match wins.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")

_CHAR_PRE_TOKENIZER = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated",
                       "invert": False}   # every code point its own piece, newlines included
_CHUNK = 1 << 16   # characters per piece when encoding long text in parallel
# Where byte-level BPE must split anyway: a lone "\n" between two printable ASCII characters. GPT-2's
# pre-tokenizer regex ('s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+) makes that "\n" a
# piece of its own, whatever comes before or after, so cutting after it changes no id.
_BPE_CUT = re.compile(r"(?<=[\x21-\x7e])\n(?=[\x21-\x7e])")


def _pieces(text: str, kind: str, size: int = _CHUNK) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters whose encodings concatenate to the encoding
    of ``text``: anywhere for "char" (every character is a token), after a safe newline for "bpe"."""
    if kind == "char":
        return [text[i:i + size] for i in range(0, len(text), size)]
    assert kind == "bpe", kind
    pieces, pos = [], 0
    while pos < len(text):
        m = _BPE_CUT.search(text, pos + size)
        end = m.end() if m else len(text)
        pieces.append(text[pos:end])
        pos = end
    return pieces


def _detect_kind(hf: tokenizers.Tokenizer) -> str:
    """"char" or "bpe" when ``hf`` has exactly the structure train_char / train_bpe build (so that long
    text may be encoded in pieces), else "hf"."""
    d = json.loads(hf.to_str())
    model, pre, dec = d.get("model") or {}, d.get("pre_tokenizer") or {}, d.get("decoder") or {}
    if d.get("normalizer") is not None:
        return "hf"
    if model.get("type") == "WordLevel" and pre == _CHAR_PRE_TOKENIZER and dec.get("type") == "Fuse":
        return "char"
    if (model.get("type") == "BPE" and model.get("dropout") is None
            and pre.get("type") == "ByteLevel" and pre.get("add_prefix_space") is False
            and pre.get("use_regex", True) and dec.get("type") == "ByteLevel"
            and not any("\n" in t.get("content", "") for t in d.get("added_tokens") or [])):
        return "bpe"
    return "hf"


class Tokenizer:
    """A ``tokenizers.Tokenizer`` (``.hf``) with the few operations training and generation need.

    kind: "bpe" (byte-level BPE with GPT-2's pre-tokenizer: train_bpe's, or e.g. GPT-2's own), "char"
    (train_char) or "hf" (any other tokenizer.json; encoded whole, never in pieces). encode never adds
    special tokens; decode keeps them, so decode(encode(x)) == x for every text the tokenizer covers.
    """

    def __init__(self, hf: tokenizers.Tokenizer, kind: str | None = None):
        self.hf = hf
        self.kind = kind or _detect_kind(hf)
        assert self.kind in ("bpe", "char", "hf"), self.kind
        vocab = hf.get_vocab(with_added_tokens=True)
        # ids may be sparse in a foreign tokenizer.json: an embedding needs max id + 1 rows
        self.vocab_size = max(hf.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
        self.eos_id = None if self.kind == "char" else next(
            (vocab[t] for t in EOS_CANDIDATES if t in vocab), None)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added. Long text is cut into pieces that encode
        independently (see _pieces) and encoded in parallel: the same ids as encoding it whole."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        if not text:
            return []
        pieces = _pieces(text, self.kind) if self.kind in ("bpe", "char") else [text]
        batch = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)   # _fast: no offsets (>= 0.20)
        try:
            encodings = batch(pieces, add_special_tokens=False)
        except Exception as e:  # the Rust library raises plain Exception
            raise self._encode_error(text, e) from None
        return list(itertools.chain.from_iterable(e.ids for e in encodings))

    def _encode_error(self, text: str, e: Exception) -> TokenizerError:
        if self.kind == "char":
            vocab = self.hf.get_vocab()
            unknown = set(text) - vocab.keys()
            if unknown:
                pos = min(text.find(c) for c in unknown)
                c = text[pos]
                return TokenizerError(
                    f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in the character tokenizer's "
                    f"vocabulary (the {len(vocab)} characters of its training text): build it from the whole "
                    f"corpus (train_char(corpus.text)), or use the BPE tokenizer, which encodes any text")
        return TokenizerError(f"the {self.kind} tokenizer cannot encode this text: {e}")

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (special tokens kept). A byte-level BPE sequence that ends inside a
        multi-byte character decodes that character as U+FFFD."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is outside this tokenizer's vocabulary [0, {self.vocab_size})")
        return self.hf.decode(ids, skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as a Hugging Face ``tokenizer.json`` at ``path``, atomically."""
        atomic_write_bytes(Path(path), self.hf.to_str(pretty=True).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a ``tokenizer.json`` (a folder means the tokenizer.json in it): minimmf's or any Hugging Face one."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise TokenizerError(f"tokenizer file not found: {p}; pass the tokenizer.json saved with a "
                                 f"checkpoint, or any Hugging Face tokenizer.json")
        try:
            hf = tokenizers.Tokenizer.from_str(p.read_text(encoding="utf-8"))
        except Exception as e:  # UnicodeDecodeError, or the library's plain Exception for bad JSON
            raise TokenizerError(f"{p} is not a valid tokenizer.json ({str(e)[:200]}); it may be truncated "
                                 f"or corrupt: save the tokenizer again") from None
        return cls(hf)


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text:
        raise TokenizerError("a tokenizer needs a non-empty training text")


def train_bpe(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE, GPT-2's scheme, trained on ``text`` with the ``tokenizers`` library.

    The initial vocabulary is <|endoftext|> (id 0, the EOS) and the 256 bytes, so any text encodes;
    then the most frequent adjacent pair inside a pre-token is merged until ``vocab_size`` tokens exist.
    Pre-tokens come from GPT-2's regex with no prefix space. Deterministic: the same text and size give
    the same tokenizer. Raises TokenizerError if vocab_size < 257, or if the corpus runs out of pairs to
    merge first (the message gives the largest vocab_size it reaches).
    """
    _check_text(text)
    if (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
            or not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB):
        raise TokenizerError(f"vocab_size (--vocab-size) must be an integer from {MIN_BPE_VOCAB} (256 bytes + "
                             f"{EOS_TOKEN}) to {MAX_BPE_VOCAB:,}, got {vocab_size!r}")
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(_pieces(text, "bpe"), trainer=trainer)   # same pre-tokens as the whole text
    # A round trip through JSON gives the object load() would (and encodes ~2x faster than the trained one).
    tok = Tokenizer(tokenizers.Tokenizer.from_str(hf.to_str()), kind="bpe")
    if tok.vocab_size < vocab_size:
        raise TokenizerError(
            f"vocab_size {vocab_size} is more than this corpus allows: byte-level BPE on its {len(text):,} "
            f"characters runs out of pairs to merge at {tok.vocab_size} tokens; use a vocab size of at most "
            f"{tok.vocab_size} (--vocab-size), or a larger corpus")
    return tok


def train_char(text: str) -> Tokenizer:
    """One token per distinct character of ``text``; ids in sorted character order, as nanoGPT's
    (tiny Shakespeare: 65 tokens, "\\n" = 0, " " = 1, "A" = 13). No special tokens, no EOS.

    Built as a ``tokenizers`` WordLevel model whose pre-tokenizer isolates every character (newlines
    included) and whose decoder concatenates, so it saves and loads like any tokenizer.json. A character
    outside the vocabulary is an error naming it (not a silent <unk>): build the vocabulary from the
    whole corpus, not only its training split.
    """
    _check_text(text)
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    hf = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))   # <unk> not in vocab: unknown -> error
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_PRE_TOKENIZER["pattern"]["Regex"]), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return Tokenizer(hf, kind="char")


def chars_per_token(tokenizer: Tokenizer, text: str) -> float:
    """len(text) / len(tokenizer.encode(text)): divide nats/token by ln 2 and by this to get bits/char."""
    _check_text(text)
    return len(text) / len(tokenizer.encode(text))
