"""The exercises' tests cannot rot: each solution in examples/solutions/ is put in place (through
pytest's monkeypatch, undone after the test) and the very functions of tests/test_exercises.py
are run against it; they must pass, not skip. And while ps_trainer lacks an exercise's code, its
tests must skip, saying what to write where."""

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

import test_exercises as exercises  # tests/ is on sys.path (pytest's default "prepend" imports)

SOLUTIONS = Path(__file__).resolve().parent.parent / "examples" / "solutions"
# -k keyword of the exercise's tests -> (number, its solution, the module and name it adds)
EXERCISES = {
    "policy": (1, "ex1_policy.py", "ps_trainer.core.policy", "ExponentialStalenessLR"),
    "averaging": (2, "ex2_averaging.py", "ps_trainer.core.polyak", "PolynomialAverage"),
    "delay": (3, "ex3_delay.py", "ps_trainer.worker.delays", "lognormal"),
    "metric": (4, "ex4_metric.py", "ps_trainer.trainer.summary", "staleness_percentiles"),
    "plot": (5, "ex5_plot.py", "ps_trainer.harness.report", "staleness_over_time"),
}


def solution(key: str):
    """examples/solutions/<file> as a module (registered, so its dataclasses resolve)."""
    name = f"exercise_solution_{key}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SOLUTIONS / EXERCISES[key][1])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def exercise_tests(key: str) -> list:
    found = [f for n, f in vars(exercises).items() if n.startswith(f"test_{key}_") and callable(f)]
    assert len(found) >= 2, f"exercise {key!r} has {len(found)} tests in test_exercises.py"
    return found


def call(test, tmp_path: Path):
    """Run one test function of test_exercises.py with the fixtures it takes (only tmp_path)."""
    params = inspect.signature(test).parameters
    assert set(params) <= {"tmp_path"}, f"{test.__name__} takes {list(params)}; extend call()"
    if "tmp_path" in params:
        (tmp_path / test.__name__).mkdir()
        return test(tmp_path / test.__name__)
    return test()


@pytest.mark.parametrize("key", EXERCISES)
def test_the_solution_passes_the_exercise_tests(key, monkeypatch, tmp_path):
    solution(key).install(monkeypatch)
    for test in exercise_tests(key):
        try:
            call(test, tmp_path)
        except pytest.skip.Exception as e:
            pytest.fail(f"{test.__name__} skipped with the solution in place: {e}")


@pytest.mark.parametrize("key", EXERCISES)
def test_the_exercise_tests_skip_until_the_exercise_is_done(key, tmp_path):
    number, _, module, name = EXERCISES[key]
    if getattr(importlib.import_module(module), name, None) is not None:
        pytest.skip(f"exercise {number} is done in {module}: its tests run for real")
    where = module.replace(".", "/") + ".py"
    for test in exercise_tests(key):
        with pytest.raises(pytest.skip.Exception,
                           match=f"exercise {number} not done yet: add .*`{name}` to {where}"):
            call(test, tmp_path)
