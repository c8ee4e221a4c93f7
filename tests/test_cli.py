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
