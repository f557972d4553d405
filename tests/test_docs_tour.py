"""docs/tour.md stays true: every file it names exists, and every function, class or method it
names is defined in a file named by its step or by an earlier one (read with `ast`, nothing
imported)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "docs" / "tour.md"
FILE = re.compile(r"^(?:ps_trainer|examples|tests|protos|benchmarks|cluster)/[\w/.-]+\.\w+$")
NAME = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)(?:\(\))?$")  # `f`, `f()`, `C.m`, `C.m()`
# Backticked words that are prose, not code names: the four calls of a client, outcomes, `None`.
PROSE = {"None", "pull", "push", "results", "retire"}
DATA = (".parquet", ".md", ".yaml", ".json", ".png")  # a run's files, named in prose


def steps() -> list[tuple[str, str]]:
    """(heading, text) of each `### n.` step."""
    parts = re.split(r"^### (.+)$", TOUR.read_text(), flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def defined(path: Path) -> set[str]:
    """Top-level functions, classes and assignments, and `Class.method` / `Class.attr`."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(f"{node.name}.{item.name}")
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        if isinstance(node, ast.FunctionDef):  # the example's `worker()` is a nested-free def
            names.add(node.name)
    return names


def test_the_tour_has_its_steps_in_order():
    heads = [h for h, _ in steps()]
    assert [int(h.split(".")[0]) for h in heads] == list(range(1, len(heads) + 1))
    assert len(heads) >= 12


def files_of(heading: str, text: str) -> list[str]:
    return [t for t in re.findall(r"`([^`\n]+)`", heading + "\n" + text) if FILE.match(t)]


STEPS = steps()


@pytest.mark.parametrize("k", range(len(STEPS)), ids=[h.split(".")[0] for h, _ in STEPS])
def test_every_file_and_name_of_a_step_exists(k):
    heading, text = STEPS[k]
    files = files_of(heading, text)
    assert files, f"step {heading!r} names no file"
    for f in files:
        assert (ROOT / f).exists(), f"step {heading!r}: {f} does not exist"
    so_far = {f for h, t in STEPS[:k + 1] for f in files_of(h, t) if f.endswith(".py")}
    known = set().union(*(defined(ROOT / f) for f in so_far))
    for t in re.findall(r"`([^`\n]+)`", heading + "\n" + text):
        m = NAME.match(t)
        if not m or t in PROSE or FILE.match(t) or t.endswith(DATA):
            continue
        assert m[1] in known, f"step {heading!r}: `{t}` is defined in none of {sorted(so_far)}"


def test_links_of_the_tour_resolve():
    for link in re.findall(r"\]\(([^)#]+)\)", TOUR.read_text()):
        assert (TOUR.parent / link).resolve().exists(), link
