"""The layers of DESIGN.md as a contract: imports point down (cli > harness > trainer > worker >
transport > core), models/data/settings import nothing that trains, and no package's modules
import each other in a cycle. The contracts are in pyproject.toml; `lint-imports` checks them."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=root, env={"PYTHONPATH": str(root)}, capture_output=True,
                          text=True, timeout=120)


def test_the_imports_follow_the_layers():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


def test_an_import_pointing_up_is_caught(tmp_path):
    """The contract is not vacuous: the same tree with one upward import breaks it."""
    shutil.copytree(ROOT / "ps_trainer", tmp_path / "ps_trainer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shard = tmp_path / "ps_trainer" / "transport" / "ray_shard.py"
    shard.write_text(shard.read_text() + "\nfrom ..trainer import lock  # noqa: E402\n")
    out = lint(tmp_path)
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout
