"""Tokenizers: byte-level BPE and character-level, saved and loaded as Hugging Face tokenizer.json."""
import json
import math
import subprocess
import sys

import pytest
import tokenizers
from hypothesis import given, settings, strategies as st

from minimmf import tokenizer as tk
from minimmf.tokenizer import (EOS_TOKEN, MIN_BPE_VOCAB, Tokenizer, TokenizerError, chars_per_token,
                               train_bpe, train_char)

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 20

# Text a tokenizer may meet: any Unicode (no surrogates), and text heavy in the whitespace patterns
# where GPT-2's pre-tokenizer regex is subtle (runs of spaces and newlines next to words).
any_text = st.text(max_size=200)
spacy_text = st.lists(st.sampled_from(list("ab. \n\n\t\r'é") + ["  ", "\n ", " \n", "e's", "\u3000"]),
                      max_size=100).map("".join)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(CORPUS, 300)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return train_char(CORPUS)


# ---------------------------------------------------------------------------- BPE

def test_bpe_has_the_byte_alphabet_the_eos_token_and_the_requested_size(bpe):
    """256 byte tokens + <|endoftext|> + merges = vocab_size; the EOS is <|endoftext|>."""
    assert bpe.kind == "bpe" and bpe.vocab_size == 300
    assert bpe.eos_id == bpe.hf.token_to_id(EOS_TOKEN) == 0
    vocab = bpe.hf.get_vocab()
    assert all(c in vocab for c in tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert len(json.loads(bpe.hf.to_str())["model"]["merges"]) == 300 - MIN_BPE_VOCAB


@given(text=any_text)
def test_bpe_round_trips_any_text(bpe, text):
    """decode(encode(x)) == x for any Unicode text, including characters never seen in training."""
    assert bpe.decode(bpe.encode(text)) == text


@given(text=spacy_text)
def test_bpe_round_trips_whitespace_heavy_text(bpe, text):
    """Runs of spaces, tabs, carriage returns and newlines come back exactly."""
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_adds_no_special_tokens_and_merges_frequent_pairs(bpe):
    """encode adds no BOS/EOS; a frequent word of the corpus is fewer tokens than its bytes."""
    ids = bpe.encode("First Citizen:")
    assert bpe.eos_id not in ids
    assert len(ids) < len("First Citizen:")


def test_bpe_training_is_deterministic(bpe):
    """The same text and vocab_size give the same tokenizer, in this process and in another one."""
    assert train_bpe(CORPUS, 300).hf.to_str() == bpe.hf.to_str()
    code = ("import sys; from minimmf.tokenizer import train_bpe; "
            "sys.stdout.write(train_bpe(sys.stdin.read(), 300).hf.to_str())")
    out = subprocess.run([sys.executable, "-c", code], input=CORPUS, capture_output=True, text=True, check=True)
    assert out.stdout == bpe.hf.to_str()


@pytest.mark.parametrize("vocab_size", [256, 0, -5, 300.0, "300", True, 10**9, 10**20])
def test_bpe_rejects_a_vocab_size_outside_its_range(vocab_size):
    """vocab_size must be an integer from 257 (256 bytes + <|endoftext|>) to 2**20, checked before the
    tokenizers library sees it (it aborts the whole process on 10**9)."""
    with pytest.raises(TokenizerError, match=r"vocab_size \(--vocab-size\) must be an integer from 257 .* to 1,048,576"):
        train_bpe(CORPUS, vocab_size)


def test_bpe_vocab_of_257_is_plain_bytes():
    """The smallest vocabulary has no merges: one token per UTF-8 byte."""
    tok = train_bpe("hello hello", MIN_BPE_VOCAB)
    assert tok.vocab_size == 257 and len(tok.encode("héllo")) == len("héllo".encode())


def test_bpe_rejects_a_vocab_size_larger_than_the_corpus_allows():
    """When the corpus runs out of pairs to merge, the error names the largest reachable size, which works."""
    text = "abc abd"
    with pytest.raises(TokenizerError, match=r"more than this corpus allows.* at (\d+) tokens") as e:
        train_bpe(text, 1000)
    reachable = int(str(e.value).split(" at ")[1].split()[0])
    assert MIN_BPE_VOCAB < reachable < 1000
    assert train_bpe(text, reachable).vocab_size == reachable


@pytest.mark.parametrize("train", [lambda t: train_bpe(t, 300), train_char])
@pytest.mark.parametrize("text", ["", None, b"bytes"])
def test_training_rejects_an_empty_or_non_text_corpus(train, text):
    """A tokenizer needs a non-empty str to learn from."""
    with pytest.raises(TokenizerError, match="non-empty training text"):
        train(text)


# ---------------------------------------------------------------------------- long text in pieces

@pytest.fixture(scope="module")
def spacy_bpe() -> Tokenizer:
    """A BPE that has merged whitespace runs ("\n\n", " \n", "  "), where a careless cut would show."""
    tok = train_bpe(("a \nb\n\n c   d \n\ne's\r\n" * 50) + CORPUS, 290)
    assert all(tok.hf.token_to_id(t) is not None for t in ("ĊĊ", "ĠĠ", "ĠĊ"))
    return tok


@settings(max_examples=300)   # cheap examples; a wrong cut rule needs a specific whitespace pattern
@given(text=spacy_text, size=st.integers(1, 20))
def test_bpe_pieces_encode_to_the_same_ids_as_the_whole_text(spacy_bpe, text, size):
    """Cutting long text after a newline between printable characters changes no id (GPT-2's regex
    splits there anyway), so parallel encoding equals encoding the whole text at once."""
    pieces = tk._pieces(text, "bpe", size)
    assert "".join(pieces) == text
    in_pieces = [i for p in pieces for i in spacy_bpe.hf.encode(p, add_special_tokens=False).ids]
    assert in_pieces == spacy_bpe.hf.encode(text, add_special_tokens=False).ids


def test_encoding_a_long_text_equals_encoding_it_whole(bpe, char):
    """Above one piece (64 Ki characters) encode still returns exactly the whole-text ids."""
    text = CORPUS * 40
    assert len(tk._pieces(text, "bpe")) > 1
    for tok in (bpe, char):
        assert tok.encode(text) == tok.hf.encode(text, add_special_tokens=False).ids


def test_encode_rejects_non_text(bpe):
    """encode takes a str; bytes are refused rather than guessed at."""
    with pytest.raises(TypeError, match="str"):
        bpe.encode(b"abc")
    assert bpe.encode("") == []


# ---------------------------------------------------------------------------- char

def test_char_ids_are_the_sorted_order_of_the_distinct_characters():
    """As nanoGPT: vocab = sorted(set(text)), id = index in that order, newline and space included."""
    text = "hello, World!\nzebra é"
    tok = train_char(text)
    chars = sorted(set(text))
    assert tok.kind == "char" and tok.vocab_size == len(chars) and tok.eos_id is None
    assert tok.encode(text) == [chars.index(c) for c in text]
    assert tok.decode(tok.encode(text)) == text


# The 65 distinct characters of tiny Shakespeare, as nanoGPT's shakespeare_char/prepare.py lists them.
TINY_SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_char_vocab_of_tiny_shakespeare_characters_is_nanogpts():
    """With tiny Shakespeare's 65 characters: '\\n' = 0, ' ' = 1, 'A' = 13, 'a' = 39 (nanoGPT's meta.pkl)."""
    text = "".join(reversed(TINY_SHAKESPEARE_CHARS)) * 3          # order of appearance must not matter
    tok = train_char(text)
    assert tok.vocab_size == 65
    assert tok.encode("\n A a") == [0, 1, 13, 1, 39]


@given(data=st.data())
def test_char_round_trips_any_text_over_its_vocabulary(data):
    """decode(encode(x)) == x, one token per character, for text drawn from the training characters."""
    vocab_text = data.draw(st.text(min_size=1, max_size=30), label="training text")
    text = data.draw(st.text(alphabet=st.sampled_from(sorted(set(vocab_text))), max_size=100))
    tok = train_char(vocab_text)
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text


def test_char_rejects_an_unknown_character_naming_it(char):
    """A character outside the vocabulary is an error that names it and its position (no silent <unk>)."""
    with pytest.raises(TokenizerError, match=r"character 'é' \(U\+00E9\) at position 4 .*whole corpus"):
        char.encode("All é ~")


# ---------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("name", ["bpe", "char"])
def test_save_then_load_gives_identical_encodings(name, bpe, char, tmp_path):
    """A saved tokenizer.json loads back as the same kind, size and EOS, encoding text identically."""
    tok = {"bpe": bpe, "char": char}[name]
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    back = Tokenizer.load(path)
    assert (back.kind, back.vocab_size, back.eos_id) == (tok.kind, tok.vocab_size, tok.eos_id)
    sample = CORPUS[:500]
    assert back.encode(sample) == tok.encode(sample)
    assert Tokenizer.load(tmp_path).encode(sample) == tok.encode(sample)          # a folder holding it
    assert tokenizers.Tokenizer.from_file(str(path)).encode(sample).ids == tok.encode(sample)  # HF loads it


def test_load_accepts_any_hugging_face_tokenizer_json(tmp_path):
    """A tokenizer.json that minimmf did not make loads as kind "hf" and encodes as the library does."""
    hf = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = tokenizers.normalizers.Lowercase()
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf.decoder = tokenizers.decoders.WordPiece()
    hf.train_from_iterator([CORPUS], tokenizers.trainers.WordPieceTrainer(
        vocab_size=60, special_tokens=["[UNK]", "</s>"], show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert tok.kind == "hf" and tok.eos_id == hf.token_to_id("</s>")
    assert tok.vocab_size == hf.get_vocab_size()
    assert tok.encode("Speak, speak.") == hf.encode("Speak, speak.", add_special_tokens=False).ids


def test_load_rejects_a_missing_file(tmp_path):
    """A path that does not exist is a clear error naming it."""
    with pytest.raises(TokenizerError, match="tokenizer file not found: .*nope.json"):
        Tokenizer.load(tmp_path / "nope.json")
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer.load(tmp_path)                                   # a folder without tokenizer.json


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"version": "1.0"}', b"\xff\xfe\x00binary"])
def test_load_rejects_a_corrupt_file(bpe, tmp_path, content):
    """Empty, truncated, incomplete or binary tokenizer.json files are refused with the file named."""
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        Tokenizer.load(path)


def test_load_rejects_a_truncated_save(bpe, tmp_path):
    """A tokenizer.json cut in half (a crash of some other writer) is refused, not half-loaded."""
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(TokenizerError, match="truncated or corrupt"):
        Tokenizer.load(path)


def test_save_is_atomic(bpe, char, tmp_path, monkeypatch):
    """A save that fails midway leaves the previous tokenizer.json intact and no temporary file."""
    path = tmp_path / "tokenizer.json"
    char.save(path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(tk.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        bpe.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


def test_decode_rejects_ids_outside_the_vocabulary(bpe):
    """An id < 0 or >= vocab_size is an error, not silently dropped text."""
    for bad in (-1, bpe.vocab_size):
        with pytest.raises(TokenizerError, match=rf"token id {bad} is outside"):
            bpe.decode([5, bad])


# ---------------------------------------------------------------------------- bits per character

def test_chars_per_token_converts_nats_per_token_to_bits_per_char(bpe, char):
    """A char tokenizer has 1 char/token; BPE packs more, and bits/char = nats/token / ln 2 / chars/token."""
    text = CORPUS[:400]
    assert chars_per_token(char, text) == 1.0
    cpt = chars_per_token(bpe, text)
    assert cpt == len(text) / len(bpe.encode(text)) and cpt > 1.5
    nats_per_token = 2.0
    assert math.isclose(nats_per_token / math.log(2) / cpt, nats_per_token * len(bpe.encode(text))
                        / (len(text) * math.log(2)))
    with pytest.raises(TokenizerError):
        chars_per_token(bpe, "")
