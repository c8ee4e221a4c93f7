"""Run every chapter as a test: its ```python blocks execute top to bottom in one namespace.

Sybil reports a failing block by its Markdown line. Chapters that draw figures write them
into ``FIGURES`` (a temporary directory, or $MINIMMF_FIGURES if set), never into the repo.
"""
import os
import tempfile
from pathlib import Path

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

REPO = Path(__file__).resolve().parent.parent


def _setup(namespace):
    figures = Path(os.environ.get("MINIMMF_FIGURES") or tempfile.mkdtemp(prefix="minimmf-figures-"))
    figures.mkdir(parents=True, exist_ok=True)
    namespace["FIGURES"] = figures
    os.chdir(REPO)                     # chapters open tests/fixtures/... relative to the repo root


pytest_collect_file = Sybil(parsers=[PythonCodeBlockParser()], patterns=["*.md"],
                            setup=_setup, excludes=["README.md"]).pytest()
