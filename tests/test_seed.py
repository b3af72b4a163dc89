"""The seed tutorial's six scripts, reproduced with fastopt (examples/seed/)."""

import importlib.util
import json
import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
EXPECTED = json.loads((Path(__file__).parent / "data" / "seed_trajectories.json").read_text())
RULES = ["gradient_descent", "sgd", "momentum", "adagrad", "rmsprop", "adam"]


def load(rule: str):
    path = ROOT / "examples" / "seed" / f"{rule}.py"
    spec = importlib.util.spec_from_file_location(f"seed_{rule}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_seed_rule_has_an_example():
    assert sorted(EXPECTED) == sorted(RULES)


@pytest.mark.parametrize("rule", RULES)
def test_trajectory_matches_the_seed(rule, capsys):
    trajectory = load(rule).run()
    expected = EXPECTED[rule]
    assert len(trajectory) == len(expected)
    np.testing.assert_allclose(np.array(trajectory), np.array(expected), rtol=1e-12, atol=1e-12)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(expected)


@pytest.mark.parametrize("rule", RULES)
def test_script_runs_as_main(rule, capsys):
    runpy.run_path(str(ROOT / "examples" / "seed" / f"{rule}.py"), run_name="__main__")
    assert capsys.readouterr().out.startswith("Iteration 1")
