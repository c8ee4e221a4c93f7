"""SPEC.md, the specification inside the repository: every "SPEC §n" reference names a section of it."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCANNED = ["minimmf", "fpga_model", "tests", "chapters", "benchmarks", "examples", "README.md", "SPEC.md"]
SUFFIXES = {".py", ".md", ".txt", ".toml", ".json"}

# "SPEC §3", "SPEC §3-§5", "SPEC §3–5", "SPEC §3, §4": the numbers after one "SPEC".
REFERENCE = re.compile(r"SPEC\s*§\s*(\d+)((?:\s*(?:[-–,]|and)\s*§?\s*\d+)*)")
HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)


def spec_sections() -> list[int]:
    return [int(n) for n in HEADING.findall((REPO / "SPEC.md").read_text(encoding="utf-8"))]


def referenced_sections(text: str) -> list[int]:
    """Every section number a text cites as SPEC §n (a range cites both ends)."""
    out = []
    for m in REFERENCE.finditer(text):
        out.append(int(m.group(1)))
        out += [int(n) for n in re.findall(r"\d+", m.group(2))]
    return out


def scanned_files():
    for name in SCANNED:
        path = REPO / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        yield from (f for f in files if f.suffix in SUFFIXES and "__pycache__" not in f.parts)


def all_references() -> list[tuple[str, int, int]]:
    """(file, line, section) for every SPEC reference in the scanned files."""
    refs = []
    for f in scanned_files():
        for lineno, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            refs += [(str(f.relative_to(REPO)), lineno, n) for n in referenced_sections(line)]
    return refs


def test_spec_sections_are_numbered_one_to_eight_in_order():
    """SPEC.md's sections are §1 (quantizers) to §8 (numerical traps), in order, each once."""
    assert spec_sections() == list(range(1, 9))


def test_reference_parser_reads_single_sections_ranges_and_lists():
    """'SPEC §n', 'SPEC §a-§b', 'SPEC §a–b' and 'SPEC §a, §b' all cite their numbers; a bare '§n' does not."""
    s = "SPEC "
    assert referenced_sections(f"see {s}§2.") == [2]
    assert referenced_sections(f"({s}§3-§5)") == [3, 5]
    assert referenced_sections(f"{s}§3–5 and {s}§7") == [3, 5, 7]
    assert referenced_sections(f"{s}§1, §6") == [1, 6]
    assert referenced_sections("paper §4") == []


def test_every_spec_reference_in_the_repository_names_a_section_of_spec_md():
    """Every "SPEC §n" in the code, tests, chapters, benchmarks, examples and README resolves to SPEC.md."""
    refs = all_references()
    assert len(refs) >= 30, f"only {len(refs)} references found: is the scan broken?"
    sections = set(spec_sections())
    dangling = [f"{f}:{line}: SPEC §{n}" for f, line, n in refs if n not in sections]
    assert not dangling, "references to sections SPEC.md does not have:\n" + "\n".join(dangling)


def test_the_readme_says_where_spec_references_point():
    """The README tells a reader that "SPEC §n" means section n of SPEC.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert any("SPEC §n" in line and "SPEC.md" in line for line in readme.splitlines()), \
        "README.md does not say what 'SPEC §n' refers to"
