"""Training text: load a corpus, split it, tokenize it, and cut it into batches.

    load_corpus(path | None) -> Corpus          a UTF-8 file, a folder of them, or the default corpus
    split_text(text, 0.1)    -> (train, val)    the last 10% of characters for validation (nanoGPT's split)
    encode_split(tok, ...)   -> Split           int32 token ids of both parts
    sample_batch(ids, B, T, rng) -> (B, T+1)    random windows for training
    eval_windows(ids, T)     -> (B, T+1), ...   non-overlapping windows covering the split, for validation

The default corpus (``path=None``) is fetched and cached by ``corpus.py``.

Every bad input is a ``CorpusError`` (a ``ValueError``) whose message names the file and the fix.

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # data -> tokenizer only for the type; tokenizer.py never imports this module
    from .tokenizer import Tokenizer


class CorpusError(ValueError):
    """A corpus minimmf cannot train on; the message names the file and says how to fix it."""


# ---------------------------------------------------------------------------- reading text files

_SAMPLE = 1 << 16          # characters inspected by the "mostly non-text" test
_NON_TEXT_LIMIT = 0.30     # more than 30% control or undecodable characters -> binary


def _looks_binary(data: bytes) -> bool:
    """True when over 30% of the first 64 Ki characters are control codes or not UTF-8 at all."""
    sample = data[:4 * _SAMPLE].decode("utf-8", errors="replace")[:_SAMPLE]
    bad = sum(1 for c in sample
              if c == "\ufffd" or c == "\x7f" or (c < " " and c not in "\t\n\r\f\v\x1b"))
    return bad > _NON_TEXT_LIMIT * max(len(sample), 1)


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 text of one file (a leading byte-order mark dropped), or a CorpusError saying why not."""
    if b"\x00" in data:
        raise CorpusError(f"{path} looks like a binary file (a NUL byte at offset {data.index(0)}): "
                          f"pass a UTF-8 text file with --data")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if _looks_binary(data):
            raise CorpusError(f"{path} looks like a binary file (mostly bytes that are not text): "
                              f"pass a UTF-8 text file with --data") from None
        raise CorpusError(f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                          f"({e.reason}). Convert it first, e.g. `iconv -f latin1 -t utf-8 {path} > "
                          f"{path.stem}.utf8.txt`") from None
    if _looks_binary(data):
        raise CorpusError(f"{path} looks like a binary file (mostly control characters): "
                          f"pass a UTF-8 text file with --data")
    return text.removeprefix("\ufeff")


def _read_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from None
    return _decode(data, path)


def _text_files(root: Path) -> list[Path]:
    """Regular files under ``root``, recursively, hidden files and folders skipped, sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]     # prune hidden folders
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def _read_corpus(path: Path) -> tuple[str, int]:
    """(text, number of files joined) for a file or a folder; see ``load_text``."""
    if not path.exists():
        raise CorpusError(f"corpus not found: {path} does not exist; pass an existing UTF-8 text file "
                          f"or folder with --data")
    if path.is_file():
        text = _read_file(path)
        if not text.strip():
            raise CorpusError(f"corpus file {path} is empty (or only whitespace): pass a file with text in it")
        return text, 1
    if not path.is_dir():
        raise CorpusError(f"{path} is neither a regular file nor a folder: pass a UTF-8 text file or a folder")
    files = _text_files(path)
    if not files:
        raise CorpusError(f"folder {path} has no text files (hidden files and folders are skipped): put "
                          f"UTF-8 .txt files in it, or pass a file with --data")
    texts = [t for t in (_read_file(f) for f in files) if t.strip()]   # empty files add nothing
    if not texts:
        raise CorpusError(f"folder {path} has no text: its {len(files)} file(s) are all empty")
    return "\n\n".join(texts), len(texts)


def load_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, or of every file in a folder joined with a blank line.

    A folder is read recursively: all regular files, sorted by path relative to the folder, hidden files
    and folders (names starting with ".") skipped, empty files skipped. Text is used exactly as stored
    (line endings unchanged) except that a leading UTF-8 byte-order mark is dropped.
    Raises CorpusError for a missing path, an empty corpus, a binary or non-UTF-8 file (with the byte
    offset), or a folder without text files.
    """
    return _read_corpus(Path(path))[0]


# ---------------------------------------------------------------------------- corpus and split

@dataclass(frozen=True)
class Corpus:
    """A training text and where it came from."""
    text: str = field(repr=False)
    source: str                     # e.g. "file data/input.txt", "folder texts/ (12 files)"

    @property
    def n_chars(self) -> int:
        return len(self.text)


def load_corpus(path: str | os.PathLike | None = None) -> Corpus:
    """The corpus at ``path`` (file or folder, see ``load_text``), or the default corpus when None."""
    if path is None:
        from .corpus import SHAKESPEARE, default_corpus_path    # corpus.py reads its text with _decode
        p = default_corpus_path()
        return Corpus(load_text(p), f"default corpus: {SHAKESPEARE.description}, cached at {p}")
    p = Path(path)
    text, n_files = _read_corpus(p)
    return Corpus(text, f"folder {p} ({n_files} files)" if p.is_dir() else f"file {p}")


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, val): the first int(N * (1 - val_fraction)) characters and the rest, as nanoGPT does.

    Deterministic; tiny Shakespeare (N = 1,115,394) gives 1,003,854 / 111,540 characters.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    n = len(text)
    n_train = int(n * (1 - val_fraction))
    if n_train < 1 or n - n_train < 1:
        raise CorpusError(f"a corpus of {n} characters is too small to split into train and validation "
                          f"(val_fraction={val_fraction}): use a larger corpus")
    return text[:n_train], text[n_train:]


@dataclass(frozen=True, eq=False)
class Split:
    """Token ids of the train and validation text, with their lengths in characters (for bits/char)."""
    train: np.ndarray       # (N_train,) int32
    val: np.ndarray         # (N_val,) int32
    train_chars: int
    val_chars: int


def encode_split(tokenizer: "Tokenizer", train_text: str, val_text: str) -> Split:
    """Both parts encoded separately with ``tokenizer.encode`` (no special tokens) as int32 arrays.

    Fast on megabytes: Tokenizer.encode cuts long text where its pre-tokenizer must split anyway and
    encodes the pieces in parallel, so the ids equal those of encoding the whole text at once.
    """
    arrays = []
    for name, text in (("train", train_text), ("validation", val_text)):
        if not text:
            raise CorpusError(f"the {name} text is empty: use a larger corpus")
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        assert ids.ndim == 1 and ids.size > 0 and 0 <= ids.min() and ids.max() < 2**31
        arrays.append(ids.astype(np.int32))
    return Split(train=arrays[0], val=arrays[1], train_chars=len(train_text), val_chars=len(val_text))


# ---------------------------------------------------------------------------- batches

def _check_ids(ids: np.ndarray, seq_len: int, what: str) -> None:
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be a 1-D integer array, got {type(ids).__name__} "
                         f"{getattr(ids, 'shape', '')} {getattr(ids, 'dtype', '')}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if len(ids) < seq_len + 1:
        raise CorpusError(f"corpus smaller than one batch: the {what} split has {len(ids)} tokens, a window "
                          f"needs seq_len + 1 = {seq_len + 1}; use a smaller --seq-len or a larger corpus")


def sample_batch(ids: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """B windows of seq_len + 1 consecutive tokens at uniformly random starts (inputs = [:, :-1],
    targets = [:, 1:]). One ``rng.integers`` call per batch, so a seeded rng gives a repeatable stream.

    Shapes: ids (N,) int -> (B, T+1) int64
    """
    _check_ids(ids, seq_len, "training")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    starts = rng.integers(0, len(ids) - seq_len, size=batch_size)            # (B,), last start N-T-1
    return ids[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)   # (B, T+1)


def eval_windows(ids: np.ndarray, seq_len: int, max_windows: int | None = None, *,
                 batch_size: int = 16) -> Iterator[np.ndarray]:
    """Batches of the non-overlapping windows ids[k*T : k*T + T + 1], k = 0 .. (N-1)//T - 1: every
    target token is scored exactly once (the last < T tokens are dropped). With ``max_windows`` smaller
    than that count, the windows k = floor(j * count / max_windows) are taken, evenly spread over the
    split. Deterministic; the last batch may be smaller than ``batch_size``.

    Shapes: ids (N,) int -> yields (b, T+1) int64, b <= batch_size
    """
    _check_ids(ids, seq_len, "validation")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, (int, np.integer))
                                    or max_windows < 1):
        raise ValueError(f"max_windows must be a positive integer or None, got {max_windows!r}")
    count = (len(ids) - 1) // seq_len
    k = np.arange(count)
    if max_windows is not None and max_windows < count:
        k = np.arange(max_windows) * count // max_windows
    starts = k * seq_len                                                     # (W,)

    def batches() -> Iterator[np.ndarray]:
        for i in range(0, len(starts), batch_size):
            s = starts[i:i + batch_size]
            yield ids[s[:, None] + np.arange(seq_len + 1)].astype(np.int64)  # (b, T+1)
    return batches()
