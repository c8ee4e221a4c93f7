"""Run every chapter as a test: its ```python blocks execute top to bottom in one namespace.

Sybil reports a failing block by its Markdown line. Two names are put into every chapter's namespace:

- ``FIGURES``: a scratch directory (temporary, or $MINIMMF_FIGURES if set) for files a chapter makes
  but does not commit (runs, checkpoints, traces).
- ``save_figure(fig, name)``: the chapter's committed figures. Each figure is drawn by the chapter's
  own code; ``save_figure`` renders it and checks it against ``chapters/figures/<name>.png``, the
  picture embedded in the Markdown. The check allows a small RMS pixel difference (tolerance
  ``FIGURE_TOLERANCE``), so a newer font renderer does not fail the course while a changed curve,
  bar or label does. ``MINIMMF_WRITE_FIGURES=1 python -m pytest chapters`` writes the figures instead
  (after a deliberate change to a chapter's drawing code).
"""
import os
import tempfile
from pathlib import Path

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "chapters" / "figures"
FIGURE_TOLERANCE = 2.0     # RMS difference on 0-255 pixel values that matplotlib.testing.compare allows


def save_figure(fig, name: str) -> Path:
    """Render ``fig`` as ``chapters/figures/<name>.png``: write it (MINIMMF_WRITE_FIGURES=1) or check it."""
    import matplotlib.pyplot as plt
    from matplotlib.testing.compare import compare_images

    committed = COMMITTED / f"{name}.png"
    options = dict(dpi=100, metadata={"Software": None})      # no version string: same code, same bytes
    if os.environ.get("MINIMMF_WRITE_FIGURES") == "1":
        committed.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(committed, **options)
        plt.close(fig)
        return committed
    if not committed.exists():
        plt.close(fig)
        raise AssertionError(f"{committed} is missing: run MINIMMF_WRITE_FIGURES=1 python -m pytest chapters "
                             "to draw it, then commit it")
    fresh = Path(tempfile.mkdtemp(prefix="minimmf-figure-")) / f"{name}.png"
    fig.savefig(fresh, **options)
    plt.close(fig)
    diff = compare_images(str(committed), str(fresh), tol=FIGURE_TOLERANCE)
    if diff is not None:
        raise AssertionError(f"the chapter's code no longer draws {committed.name}: {diff}\n"
                             "If the change is deliberate, redraw with MINIMMF_WRITE_FIGURES=1 and commit the PNG.")
    return committed


def _setup(namespace):
    import matplotlib
    matplotlib.use("Agg")
    figures = Path(os.environ.get("MINIMMF_FIGURES") or tempfile.mkdtemp(prefix="minimmf-figures-"))
    figures.mkdir(parents=True, exist_ok=True)
    namespace["FIGURES"] = figures
    namespace["save_figure"] = save_figure
    os.chdir(REPO)                     # chapters open repository files relative to the repo root


pytest_collect_file = Sybil(parsers=[PythonCodeBlockParser()], patterns=["*.md"],
                            setup=_setup, excludes=["README.md"]).pytest()
