"""The command line: train, generate, info and export work end to end; mistakes give one-line errors."""
import pytest

from minimmf.__main__ import main
from minimmf.demo import own_source_bytes

COMMON = ["--tokenizer", "char", "--hidden-size", "16", "--layers", "1", "--seq-len", "16",
          "--batch-size", "4", "--steps", "6", "--eval-every", "3", "--threads", "1", "--no-progress",
          "--sample-tokens", "10"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "text.txt"
    path.write_bytes(own_source_bytes().tobytes()[:20_000])
    return path


@pytest.mark.parametrize("arch", ["mmfree", "transformer++"])
def test_train_then_generate_and_info(tmp_path, corpus, capsys, arch):
    """`minimmf train` saves a run that `generate` continues and `info` describes, for both architectures."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), "--architecture", arch] + COMMON) == 0
    printed = capsys.readouterr().out
    assert "done: 6 steps" in printed and "--- sample ---" in printed
    assert main(["generate", "--checkpoint", str(out), "--prompt", "def ", "--max-tokens", "12",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "parameters:" in info and "step 6" in info
    assert ("ternary codes" in info) == (arch == "mmfree")
    if arch == "transformer++":                       # export writes the released MMfreeLM layout only
        assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "hf")]) == 2
        assert "Transformer++ run" in capsys.readouterr().err


def test_export_writes_a_released_directory_that_generate_reads(tmp_path, corpus, capsys):
    """`minimmf export --format hf` output is a released-layout directory usable by `generate`."""
    out = tmp_path / "run"
    main(["train", "--data", str(corpus), "--out", str(out)] + COMMON)
    assert main(["export", "--format", "hf", "--checkpoint", str(out), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists() and (tmp_path / "hf" / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "hf"), "--max-tokens", "5"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["generate", "--checkpoint", "/nonexistent/run"], "nonexistent"),
    (["info", "/nonexistent/run"], "nonexistent"),
    (["train", "--data", "/nonexistent/corpus.txt", "--steps", "1"], "nonexistent"),
])
def test_mistakes_give_a_one_line_error_not_a_traceback(argv, message, capsys):
    """A missing checkpoint or corpus exits with status 2 and one `minimmf: error:` line naming it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("minimmf: error:") and message in err and err.count("\n") == 1


def test_bad_option_values_are_usage_errors(capsys):
    """Non-positive sizes are refused by the argument parser (exit status 2) with the option named."""
    with pytest.raises(SystemExit) as e:
        main(["train", "--steps", "0"])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--dtype", "bfloat16"], ["--max-shard-mb", "0.02"]])
def test_info_reads_minimmf_own_exports(tmp_path, corpus, capsys, extra):
    """`info` reads what `export` writes (bf16 weights, sharded weights), as `generate` does."""
    out = tmp_path / "run"
    main(["train", "--data", str(corpus), "--out", str(out)] + COMMON)
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "hf")] + extra) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "hf")]) == 0
    assert "ternary codes" in capsys.readouterr().out


def test_an_export_killed_between_its_renames_is_recovered(tmp_path, corpus, capsys):
    """OUT moved aside (`.OUT.old-*`) and never replaced is put back by the next reader or export."""
    out = tmp_path / "run"
    main(["train", "--data", str(corpus), "--out", str(out)] + COMMON)
    hf = tmp_path / "hf"
    main(["export", "--checkpoint", str(out), "--out", str(hf)])
    hf.rename(tmp_path / ".hf.old-abc123")                    # the state after rename 1, before rename 2
    capsys.readouterr()
    assert main(["info", str(hf)]) == 0 and hf.is_dir()
    assert not list(tmp_path.glob(".hf.old-*"))


BAD = [  # (argv, words the one error line must contain)
    (["train", "--vocab-size", "1000000000", "--steps", "1"], "--vocab-size"),
    (["train", "--vocab-size", str(10**20)], "--vocab-size"),
    (["train", "--hidden-size", str(10**9)], "--hidden-size"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--minutes", "inf"], "--minutes"),
    (["train", "--steps", "x"], "--steps"),
    (["train", "--resume", "--out", "/nonexistent/run"], "/nonexistent/run"),
    (["generate", "--checkpoint", "/nonexistent/x"], "/nonexistent/x"),
    (["generate", "--checkpoint", "x", "--temperature", "nan"], "--temperature"),
    (["generate", "--checkpoint", "x", "--temperature", "inf"], "--temperature"),
    (["generate", "--checkpoint", "x", "--top-p", "2"], "--top-p"),
    (["export", "--checkpoint", "/nonexistent/x", "--out", "/tmp/y"], "/nonexistent/x"),
    (["info", "/nonexistent/x"], "/nonexistent/x"),
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--seed", "-1"], "--seed"),
    (["compare"], "--out"),
    (["bogus"], "invalid choice"),
]


def run_in_process(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:                        # the argument parser exits itself
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, words", BAD)
def test_every_user_error_is_one_line_with_status_2(argv, words, capsys):
    """The CLI contract: status 2, one stderr line `minimmf: error: ...` naming the flag or file, no traceback."""
    code, err = run_in_process(argv, capsys)
    assert code == 2, err
    assert err.startswith("minimmf: error: ") and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [BAD[0], BAD[3], BAD[8], BAD[12], BAD[13], BAD[15], BAD[16]])
def test_the_contract_holds_in_a_real_process(argv, words):
    """One bad input per subcommand, run as `python -m minimmf`: exit status 2, one line, no traceback."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "minimmf"] + argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("minimmf: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_the_traceback_and_internal_errors_ask_for_a_report(capsys, monkeypatch):
    """--debug adds the traceback; an unexpected exception exits 1 with a hint to report it."""
    assert main(["--debug", "info", "/nonexistent/x"]) == 2
    assert "Traceback" in capsys.readouterr().err
    import minimmf.__main__ as cli
    monkeypatch.setitem(cli.COMMANDS, "info", lambda args: 1 / 0)
    assert main(["info", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minimmf: internal error: ZeroDivisionError") and "report" in err


def test_export_refuses_to_overwrite_its_own_source(tmp_path, corpus, capsys):
    """`export --out RUN --overwrite` of RUN itself would destroy the run: refused."""
    out = tmp_path / "run"
    main(["train", "--data", str(corpus), "--out", str(out)] + COMMON)
    assert main(["export", "--checkpoint", str(out), "--out", str(out), "--overwrite"]) == 2
    assert "being exported" in capsys.readouterr().err
    assert (out / "metrics.jsonl").exists()
