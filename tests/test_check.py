"""minimmf.check: the exercise's checker passes the reference solution and pinpoints what is wrong in others."""
import subprocess
import sys
from pathlib import Path

import pytest

from minimmf import check

REPO = Path(__file__).resolve().parent.parent
SOLUTION = REPO / "chapters" / "solutions" / "my_model.py"


def broken(tmp_path, old: str, new: str, name: str = "my_model.py") -> Path:
    """The reference solution with one piece of text replaced (the replaced text must be there)."""
    text = SOLUTION.read_text()
    assert old in text, old
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def run(step, path):
    lines = []
    ok = check.check_step(step, path, out=lines.append)
    return ok, "\n".join(lines)


@pytest.mark.parametrize("step", check.STEP_NAMES)
def test_the_reference_solution_matches_the_released_code_at_every_step(step):
    """chapters/solutions/my_model.py (plain NumPy, no minimmf) passes every step with a 'matches' line."""
    ok, text = run(step, SOLUTION)
    assert ok, text
    assert f"PASS  {step}: matches the released code to" in text


def test_a_missing_clip_is_named_as_codes_out_of_range(tmp_path):
    """Weight codes outside {-1, 0, 1} fail the quant step, which suggests the missing clip."""
    path = broken(tmp_path, "q = np.clip(round_half_away(W * s), -1, 1).astype(np.int8)",
                  "q = round_half_away(W * s).astype(np.int8)")
    ok, text = run("quant", path)
    assert not ok and "weight_quant: codes range over" in text and "missing clip" in text


def test_a_wrong_sign_in_the_forget_gate_names_the_gate_and_the_index(tmp_path):
    """f = lb + (1 - lb) sigmoid(-z) fails at the forget gate of layer 0, with both values and the index."""
    path = broken(tmp_path, "return lower_bound + (1 - lower_bound) * sigmoid(z_f)",
                  "return lower_bound + (1 - lower_bound) * sigmoid(-z_f)")
    ok, text = run("mlgru", path)
    assert not ok
    fail = text.splitlines()[-1]
    assert fail.startswith("FAIL  model.layers.0.attn: forget gate f differs: at index (")
    assert "yours is" in fail and "the released code's" in fail and "entries are off" in fail


def test_a_wrong_shape_is_reported_with_both_shapes(tmp_path):
    """A GLU that forgets to split [gate, up] fails with the shape it returned and the one expected."""
    path = broken(tmp_path, "gate, up = np.split(_bl(x, params, \"gate_proj\"), 2, axis=-1)",
                  "gate = up = _bl(x, params, \"gate_proj\")")
    ok, text = run("glu", path)
    assert not ok and "glu on layer 0 raised ValueError" in text


def test_a_result_of_the_wrong_shape_names_both_shapes(tmp_path):
    """A BitLinear returning the transposed result fails with 'your shape is ..., the released code's is ...'."""
    path = broken(tmp_path, "return y_int / (s_x * s_w)", "return (y_int / (s_x * s_w)).T")
    ok, text = run("bitlinear", path)
    assert not ok and "your shape is (64, 16, 2), the released code's is (2, 16, 64)" in text


def test_a_missing_function_is_named_with_the_signature_to_write(tmp_path):
    """A file without `glu` fails the glu step telling the reader which function to write."""
    path = broken(tmp_path, "def glu(x, params):", "def my_glu(x, params):")
    ok, text = run("glu", path)
    assert not ok and "has no function `glu`: write `def glu(x, params)`" in text


def test_a_wrong_gradient_names_the_parameter(tmp_path):
    """Dropping the (1 - f) factor of the candidate's gradient fails at a named gradient tensor."""
    path = broken(tmp_path, "dz_i = di * (1 - f) * _silu_grad(z_i)", "dz_i = di * _silu_grad(z_i)")
    ok, text = run("backward", path)
    assert not ok and "FAIL  grad model.layers." in text and "i_proj" in text


def test_a_loss_that_forgets_the_shift_fails_on_the_loss(tmp_path):
    """Scoring position t against labels[t] instead of labels[t+1] fails with the loss's difference."""
    path = broken(tmp_path, "target[:, :-1] = labels[:, 1:]", "target[:, :] = labels")
    ok, text = run("loss", path)
    assert not ok and text.splitlines()[-1].startswith("FAIL  loss differs")


def test_an_error_while_importing_the_file_is_reported_not_raised(tmp_path):
    """A syntax or import error in the reader's file becomes a FAIL line naming the file."""
    path = tmp_path / "my_model.py"
    path.write_text("import numpy as np\nraise RuntimeError('half written')\n")
    ok, text = run("quant", path)
    assert not ok and f"importing {path} raised RuntimeError: half written" in text


def test_the_command_line_lists_the_steps_with_their_functions():
    """`python -m minimmf.check --help` lists every step and the functions it imports."""
    help_text = subprocess.run([sys.executable, "-m", "minimmf.check", "--help"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout
    for step in check.STEPS:
        assert step.name in help_text and all(f in help_text for f in step.functions)


def test_an_unknown_step_or_a_missing_file_exits_2_naming_it(tmp_path, capsys):
    """A usage error names the bad argument and what was expected, with exit status 2."""
    with pytest.raises(SystemExit) as e:
        check.main(["attention", str(SOLUTION)])
    assert e.value.code == 2 and "step: 'attention' is not one of quant" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        check.main(["quant", str(tmp_path / "nope.py")])
    assert e.value.code == 2 and "nope.py does not exist" in capsys.readouterr().err


def test_the_exit_status_is_1_on_a_mismatch_and_0_on_a_match(tmp_path, capsys):
    """main() returns 1 when the step differs and 0 when it matches, so a script can tell."""
    path = broken(tmp_path, "s = np.float32(127.0)", "s = np.float32(100.0)")
    assert check.main(["quant", str(path)]) == 1
    assert "activation_quant: q / s differs" in capsys.readouterr().out
    assert check.main(["all", str(SOLUTION)]) == 0
    assert capsys.readouterr().out.count("PASS") == len(check.STEPS)
