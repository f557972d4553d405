"""The examples a student runs first must keep working and keep learning."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_async_sgd_in_one_process_learns_and_accounts_for_pushes():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "async_sgd_in_one_process.py")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    accs = {k: float(v) for k, v in re.findall(r"(raw|Polyak) weights: ([\d.]+)%", out.stdout)}
    assert accs["raw"] >= 93 and accs["Polyak"] >= 95, out.stdout
    pushes, staleness = re.search(r"(\d+) pushes, mean staleness ([\d.]+)", out.stdout).groups()
    assert int(pushes) == 4 * 150 * 2  # every push of every worker to every shard
    assert 0.5 < float(staleness) < 6  # four concurrent workers: about K - 1 = 3


def test_example_configs_load_and_validate():
    import yaml

    from ps_trainer.config import TrainConfig
    from ps_trainer.harness.sweep import expand, load_spec

    for path in (ROOT / "examples").glob("*.yaml"):
        if "grids" in yaml.safe_load(path.read_text()):  # a sweep: every cell must validate
            cells = expand(load_spec(path))
            if path.name == "staleness_sweep.yaml":
                assert len(cells) == 162
        else:
            TrainConfig.from_yaml(path).validate()
