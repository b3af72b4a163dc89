"""The examples run end to end (briefly) and do what they say."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_mlp_trains_the_same_model_in_numpy_and_torch(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    digits = load("digits_mlp")
    out = tmp_path / "curves.png"
    results = digits.main(["--epochs", "3", "--out", str(out)])
    assert out.stat().st_size > 10_000
    numpy_run, torch_run = results["numpy"], results["torch"]
    assert len(numpy_run["loss"]) == 3 and numpy_run["loss"][-1] < 0.6 * numpy_run["loss"][0]
    assert numpy_run["accuracy"] > 0.7  # ten classes: chance is 0.1
    # Hand-written backward pass and autograd, same fastopt kernel: equal to float32 rounding.
    np.testing.assert_allclose(torch_run["loss"], numpy_run["loss"], rtol=1e-5)
    assert abs(torch_run["accuracy"] - numpy_run["accuracy"]) <= 2 / 297


def test_low_precision_modes_train_as_float32_does_and_rounding_to_nearest_stalls():
    """The digits MLP at a small learning rate: bfloat16 parameters with a master copy, a
    Kahan buffer or stochastic rounding (and bfloat16 state) end within 2% of float32's
    final loss; rounding each update to nearest loses most updates and barely trains."""
    pytest.importorskip("sklearn")
    convergence = load("precision_convergence")
    results = convergence.main(["--epochs", "30", "--lr", "1e-4"])
    baseline = results["float32"]["loss"][-1]
    assert baseline < 0.6 * results["float32"]["loss"][0]
    for mode in (
        "bf16 + master",
        "bf16 + kahan",
        "bf16 + stochastic",
        "bf16 + bf16 state + stochastic",
        "f32 + bf16 state",
    ):
        assert results[mode]["loss"][-1] <= 1.02 * baseline, mode
    stalled = results["bf16 nearest"]["loss"]
    assert stalled[-1] > 0.9 * stalled[0] and stalled[-1] > 1.5 * baseline


def test_distributed_digits_is_the_single_process_run_with_micro_batches():
    """Two MPI ranks, the optimizer state sharded: the loss curve of one process stepping on
    the mean of two micro-batches, and each rank holds about half the state."""
    pytest.importorskip("sklearn")
    pytest.importorskip("mpi4py")
    import re
    import shutil
    import subprocess
    import sys

    beside = Path(sys.executable).with_name("mpiexec")
    mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install mpich)")
    script = EXAMPLES / "distributed_digits.py"
    command = [mpiexec, "-n", "2", sys.executable, str(script), "--epochs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    difference = float(re.search(r"loss curves: (\S+)", done.stdout).group(1))
    assert difference < 1e-12
    shares = [int(n) for n in re.search(r"per rank: \[(.*?)\]", done.stdout).group(1).split(",")]
    assert len(shares) == 2 and max(shares) < 0.51 * sum(shares)
    assert float(re.search(r"test accuracy (\S+)", done.stdout).group(1)) > 0.7
