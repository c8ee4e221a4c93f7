"""The command line demo runs end to end and learns."""
from minimmf.__main__ import main
from minimmf.demo import run_demo


def test_demo_loss_falls_and_it_generates(capsys):
    """A short demo run lowers the loss well below log(256) and prints a sample."""
    r = run_demo(steps=60, batch=4, seq=32, new_tokens=20, log=print)
    assert r["first_loss"] > 5.0 and r["last_loss"] < 3.6
    assert "--- sample" in capsys.readouterr().out


def test_cli_refuses_nonpositive_steps(capsys):
    """`minimmf demo --steps 0` exits with a usage error, not a traceback."""
    import pytest
    with pytest.raises(SystemExit) as e:
        main(["demo", "--steps", "0"])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err
