"""docs/ideas.md and docs/architecture.md against the code they describe.

- examples/06_figures.py --fast makes every figure, each a real PNG, and prints numbers that say
  what the figures are meant to show (staleness grows with the workers, SSP keeps its bound, ...);
- every figure docs/ideas.md shows is in docs/figures/ (the committed full-mode ones);
- every file, class, function and flag the two docs name exists, and the layer diagram of
  docs/architecture.md is exactly the package-level import graph of the source.
"""

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IDEAS, ARCHITECTURE = DOCS / "ideas.md", DOCS / "architecture.md"
FIGURES = ["a_downpour_timeline.png", "b_staleness_vs_workers.png", "c_nesterov_momentum.png",
           "d_polyak_averaging.png", "e_ssp_and_backup_workers.png", "f_staleness_aware_lr.png",
           "g_delay_compensation.png", "h_batchnorm_for_averaged_weights.png"]


# ---- (a) the figures script, in its fast mode ------------------------------------------------------
@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "06_figures.py"), "--fast",
                          "--out", str(out)], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return out, run.stdout


@pytest.mark.slow  # the figures script's fast mode, 20-50 s: in the slow set
def test_the_figures_script_writes_every_figure_as_a_real_png(fast_run):
    from PIL import Image

    out, _ = fast_run
    assert sorted(p.name for p in out.iterdir()) == sorted(FIGURES)
    for name in FIGURES:
        path = out / name
        assert path.stat().st_size > 5_000, name  # not an empty canvas
        with Image.open(path) as image:
            assert image.format == "PNG", name
            width, height = image.size
            assert 600 <= width <= 2000 and 300 <= height <= 1200, (name, image.size)
            colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colors is None or len(colors) > 100, name  # lines, text, fills: many colours


@pytest.mark.slow  # the figures script's fast mode, 20-50 s: in the slow set
def test_the_figures_script_prints_what_the_ideas_say(fast_run):
    _, text = fast_run
    number = r"([-\d.e+]+)"
    # a: staleness = the shard's version when the push arrived - the version it read
    explained = re.findall(r"\[a\] worker \d+ read v(\d+) at [\d.]+ ms, its push arrived at "
                           r"[\d.]+ ms when the shard was at v(\d+): staleness (\d+)", text)
    assert len(explained) == 2
    assert all(int(now) - int(read) == int(s) and int(s) > 0 for read, now, s in explained)
    # b: mean staleness grows with the workers, about K - 1 (0 for one worker)
    means = {int(k): float(v) for k, v in re.findall(rf"\[b\] mean staleness, K=(\d+): {number}", text)}
    assert sorted(means) == [1, 2, 4, 8]
    assert means[1] == 0 and means[1] < means[2] < means[4] < means[8]
    assert all(0.75 * (k - 1) <= means[k] <= k - 1 + 0.25 for k in (2, 4, 8)), means
    # c: the shard measures every push of 4 workers taking turns as 3 versions stale; momentum
    # 0.9 converges without staleness and diverges with it, plain SGD converges both times
    c = {(int(k), int(s), name): float(f) for k, s, name, f in re.findall(
        rf"\[c\] (\d) worker\(s\), staleness (\d+), ([^:]+): f = {number}", text)}
    assert {(k, s) for k, s, _ in c} == {(1, 0), (4, 3)}
    assert c[1, 0, "Nesterov momentum 0.9"] < 1e-4 < c[1, 0, "SGD (no momentum)"] < 1
    assert c[4, 3, "Nesterov momentum 0.9"] > 1e6 and c[4, 3, "SGD (no momentum)"] < 1
    # e: SSP keeps every pull within s = 2 pushes of the slowest worker, async does not; BSP has
    # no staleness; backup workers drop late gradients instead of waiting for them
    lead = dict(re.findall(r"\[e\] (SSP, s = 2|async): largest clock lead at a pull: (\d+)", text))
    assert int(lead["SSP, s = 2"]) <= 2 < int(lead["async"])
    policy = {name: (float(mean), int(top), [float(w) for w in waits.split(", ")], int(rejected))
              for name, mean, top, waits, rejected in re.findall(
                  rf"\[e\] ([^:]+): staleness mean {number}, max (\d+); wait per worker \(ms\) "
                  r"([\d., ]+); versions \d+; rejected (\d+)", text)}
    assert policy["BSP"][:2] == (0.0, 0) and policy["SSP, s = 2"][1] <= 3 * 5  # (K-1)(2s+1)
    assert min(policy["SSP, s = 2"][2][:3]) > 0 == policy["SSP, s = 2"][2][3]  # the fast wait
    assert policy["BSP, 1 backup"][3] > 0 and max(policy["BSP, 1 backup"][2]) < min(policy["BSP"][2][:3])
    # f: the staleness-aware policy applies less than the base lr, plain async exactly it
    lr = {name: float(value) for name, _, value in re.findall(
        rf"\[f\] 16 workers, (\w+): mean staleness {number}, mean lr applied {number}", text)}
    assert lr["async"] == 0.05 and lr["staleness_lr"] < 0.05 / 2
    # g: every DC-ASGD push was compensated
    assert re.search(r"\[g\] 16 workers, dc_asgd: .*outcomes \{'compensated': \d+\}", text)


# ---- (b) the figures the docs show are committed ------------------------------------------------------
def test_every_figure_of_the_ideas_is_in_docs_figures():
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", IDEAS.read_text())
    assert sorted({Path(s).name for s in shown}) == sorted(FIGURES)
    for link in shown:
        assert link.startswith("figures/"), link  # relative to docs/, so GitHub renders it
        path = DOCS / link
        assert path.is_file() and path.stat().st_size > 5_000, link


# ---- (c) every name the docs use is in the code -----------------------------------------------------
def code_index() -> tuple[set, dict]:
    """Names defined in ps_trainer (modules, classes, functions, module constants) and each
    class's members (methods, class attributes and fields, attributes set on self)."""
    names, members = set(), {}
    for path in (ROOT / "ps_trainer").rglob("*.py"):
        names.update(p.removesuffix(".py") for p in path.relative_to(ROOT).parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            for target in getattr(node, "targets", [getattr(node, "target", None)]):
                if isinstance(target, ast.Name):
                    names.add(target.id)
            if isinstance(node, ast.ClassDef):
                own = members.setdefault(node.name, set())
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        own.add(sub.name)
                    elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                        own.add(sub.target.id)
                    elif isinstance(sub, ast.Assign):
                        own.update(t.id for t in sub.targets if isinstance(t, ast.Name))
                    elif (isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                          and isinstance(sub.value, ast.Name) and sub.value.id == "self"):
                        own.add(sub.attr)
    return names, members


def words() -> set:
    """What else a doc may put in backticks: policy names, push outcomes, table columns."""
    from ps_trainer.core.policy import OUTCOMES, POLICIES
    from ps_trainer.trainer.metrics import EVAL_SCHEMA, PUSH_SCHEMA

    return set(POLICIES) | set(OUTCOMES) | set(PUSH_SCHEMA.names) | set(EVAL_SCHEMA.names)


def flags() -> set:
    from ps_trainer.config import TrainConfig

    script = (ROOT / "examples" / "06_figures.py").read_text()
    return ({f.name.replace("_", "-") for f in TrainConfig.fields()}
            | set(re.findall(r'add_argument\("--([\w-]+)"', script)))


IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\))?")
FILE = re.compile(r"[\w./-]*(?:/|\.(?:py|md|toml|yaml|proto|png|parquet))")  # a/b/, a/b.py


def resolves(name: str, names: set, members: dict, extra: set) -> bool:
    parts = name.removesuffix("()").split(".")
    if len(parts) == 1:
        return parts[0] in names or parts[0] in extra or any(parts[0] in m for m in members.values())
    if parts[0] in ("torch", "ps_trainer"):  # a module path: import it and walk the attributes
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
                return True
            except AttributeError:
                return False
        return False
    owner = members.get(parts[0], set())
    return len(parts) == 2 and parts[1] in owner or parts[1:] == ["push", "remote"] and "push" in owner


def backticked(text: str) -> list[str]:
    """`spans` of a markdown text outside its fenced blocks."""
    return re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))


@pytest.mark.parametrize("doc", [IDEAS, ARCHITECTURE], ids=lambda p: p.name)
def test_every_file_class_function_and_flag_the_docs_name_exists(doc):
    text = doc.read_text()
    names, members = code_index()
    extra, known_flags = words(), flags()
    missing = []
    for span in backticked(text):
        if span.startswith("--"):
            if span[2:].split()[0].split("=")[0] not in known_flags:
                missing.append(span)
        elif FILE.fullmatch(span) or "/" in span and " " not in span:
            # from the repository's root, or from ps_trainer/ (`config.py`, `models/`)
            if not any((base / span.rstrip("/")).exists() for base in (ROOT, ROOT / "ps_trainer")):
                missing.append(span)
        elif IDENT.fullmatch(span) and not resolves(span, names, members, extra):
            missing.append(span)
    # paths anywhere (prose, links, diagrams) and Class.member in the diagrams
    for path in set(re.findall(r"(?<![\w/])(ps_trainer/[\w/]*\w(?:\.py)?)", text)):
        if not (ROOT / path).exists():
            missing.append(path)
    for link in re.findall(r"\]\((?!https?:)([^)#]+)", text):
        if not (doc.parent / link).exists():
            missing.append(link)
    for block in re.findall(r"```mermaid(.*?)```", text, flags=re.S):
        for name in re.findall(r"\b([A-Z]\w+\.[a-z_]\w*(?:\.\w+)?)", block):
            if not resolves(name, names, members, extra):
                missing.append(name)
    assert not missing, f"{doc.name} names what the code does not have: {sorted(set(missing))}"


def package_imports() -> set:
    """(package, package) for every import between ps_trainer's top-level packages and modules."""
    edges = set()
    for path in (ROOT / "ps_trainer").rglob("*.py"):
        parts = [p.removesuffix(".py") for p in path.relative_to(ROOT).parts]
        if parts == ["ps_trainer", "__init__"]:
            continue
        here = parts[:-1] if parts[-1] == "__init__" else parts
        package = parts[:-1]  # where relative imports start
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                module = base + (node.module.split(".") if node.module else [])
                targets = [module + [a.name] for a in node.names] if not node.module else [module]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ps_trainer"):
                targets = [node.module.split(".")]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names if a.name.startswith("ps_trainer.")]
            edges.update((here[1], t[1]) for t in targets if len(t) > 1 and t[1] != here[1])
    return edges


def test_the_layer_diagram_is_the_real_import_graph():
    block = re.search(r"```mermaid\s+flowchart(.*?)```", ARCHITECTURE.read_text(), flags=re.S)[1]
    drawn = set(re.findall(r"^\s*(\w+)\s*(?:-->|-\.->)\s*(\w+)\s*$", block, flags=re.M))
    real = package_imports()
    assert drawn == real, (f"drawn but not imported: {sorted(drawn - real)}; "
                           f"imported but not drawn: {sorted(real - drawn)}")
    nodes = set(re.findall(r"^\s*(\w+)\[", block, flags=re.M))
    assert nodes == {a for edge in real for a in edge}
