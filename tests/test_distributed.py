"""ZeRO-1 over MPI: 1, 2 and 3 ranks (oversubscribed on a 2-core machine) against one process
stepping on the averaged gradients; errors that must reach every rank; checkpoints across
world sizes. The ranks run tests/zero_worker.py under ``mpiexec``, bounded by a timeout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from zero_cases import (
    BFLOAT16_CASES,
    CHECKPOINT_CASE,
    INT8_CASE,
    INT8_SHAPES,
    SHAPES,
    STEP_CASES,
    STEPS,
    make_params,
    mean_gradients,
    split_groups,
)

import fastopt
from fastopt._shards import shard_layout
from fastopt.distributed import ZeroRedundancyOptimizer
from fastopt.precision import BFLOAT16

WORKER = Path(__file__).with_name("zero_worker.py")
# A hung collective (a rank left waiting) ends the test instead of the CI run.
TIMEOUT = 300


def _mpiexec() -> str:
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return found


def run_ranks(world: int, *args: object) -> None:
    command = [_mpiexec(), "-n", str(world), sys.executable, str(WORKER), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def single_process(cls, kwargs, dtype, shapes, case: int, world: int, steps: int, first=0):
    """One optimizer over all parameters, stepping on the mean of the ranks' gradients."""
    params = make_params(shapes, dtype, case)
    opt = cls(split_groups(params, kwargs), max_norm=1.0, **kwargs)
    if hasattr(opt, "train"):
        opt.train()
    for step in range(first, first + steps):
        opt.step(mean_gradients(shapes, dtype, case, step, world))
    return opt


@pytest.fixture(scope="module")
def stepped(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    # Compiled here first: the ranks then load the kernels from the cache.
    for case, (_, cls, kwargs, shapes) in enumerate(STEP_CASES):
        single_process(cls, kwargs, np.float32, shapes, case, 1, 1)
        single_process(cls, kwargs, np.float64, shapes, case, 1, 1)
    for _, cls, kwargs, shapes in BFLOAT16_CASES:
        single_process(cls, kwargs, BFLOAT16, shapes, 0, 1, 1)
    for world in (1, 2, 3):
        run_ranks(world, "steps", out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("case", "rule"), list(enumerate(name for name, *_ in STEP_CASES)), ids=lambda v: str(v)
)
def test_sharded_steps_match_one_process_on_the_mean_gradient(stepped, world, dtype, case, rule):
    name, cls, kwargs, shapes = STEP_CASES[case]
    results = np.load(stepped / f"steps-{world}.npz")
    expected = single_process(cls, kwargs, dtype, shapes, case, world, STEPS)
    for i, param in enumerate(expected.params):
        actual = results[f"{name}/{np.dtype(dtype).name}/{i}"]
        assert actual.dtype == dtype and actual.shape == param.shape
        _assert_close(actual, param, dtype, f"{i}")
    if hasattr(expected, "eval"):  # Schedule-Free: x, all-gathered after the switch
        expected.eval()
        for i, param in enumerate(expected.params):
            _assert_close(results[f"{name}/{np.dtype(dtype).name}/eval/{i}"], param, dtype, i)


def _assert_close(actual, desired, dtype, what) -> None:
    if dtype == np.float64:
        np.testing.assert_allclose(actual, desired, rtol=1e-12, atol=1e-12, err_msg=str(what))
    else:
        np.testing.assert_allclose(actual, desired, rtol=2e-5, atol=2e-6, err_msg=str(what))


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("case", [name for name, *_ in BFLOAT16_CASES])
def test_bfloat16_parameters_match_one_process(stepped, world, case):
    """The all-gather moves the bfloat16 bits. With a master copy the masters agree to
    float32 rounding, so the parameters rounded from them agree but for a rare tie (one unit
    apart). With stochastic rounding each piece draws its own random bits: one rank keys them
    as one process does (the same bits), more ranks otherwise (a few units apart)."""
    name, cls, kwargs, shapes = next(c for c in BFLOAT16_CASES if c[0] == case)
    results = np.load(stepped / f"steps-{world}.npz")
    params = make_params(shapes, BFLOAT16, 0)
    opt = cls(split_groups(params, kwargs), max_norm=1.0, **kwargs)
    for step in range(STEPS):
        opt.step(mean_gradients(shapes, np.float32, 0, step, world))
    stochastic = kwargs.get("stochastic_rounding", False)
    units = 8 if stochastic and world > 1 else 1
    moved = 0
    for i, param in enumerate(params):
        actual = results[f"{name}/{i}"].view(BFLOAT16).astype(np.float64)
        desired = param.astype(np.float64)
        if stochastic and world == 1:
            np.testing.assert_array_equal(actual, desired)
        unit = np.abs(np.spacing(param.astype(np.float32))) * 2**16  # bfloat16's spacing
        assert np.all(np.abs(actual - desired) <= units * unit), i
        if not stochastic:
            assert actual.size == 0 or np.mean(actual == desired) > 0.9, i
        moved += np.count_nonzero(desired != make_params(shapes, BFLOAT16, 0)[i])
    assert moved > 50  # the updates did reach the bfloat16 parameters


@pytest.mark.slow
def test_state_per_rank_is_a_share_of_one_process_state(stepped):
    memory = {w: json.loads((stepped / f"memory-{w}.json").read_text()) for w in (1, 2, 3)}
    shapes_of = {name: shapes for name, _, _, shapes in STEP_CASES}
    for key, (whole,) in memory[1].items():
        name, dtype = key.rsplit("/", 1)
        sizes = [int(np.prod(shape)) for shape in shapes_of[name]]
        for world in (2, 3):
            shares = memory[world][key]
            assert len(shares) == world
            # All together, the whole; each rank its shard's share (aligned up).
            assert sum(shares) == whole, key
            if name == "Adafactor":  # row and column factors: no multiple of the sizes
                continue
            itemsize = np.dtype(dtype).itemsize
            arrays = whole // (sum(sizes) * itemsize)
            layout = shard_layout(sizes, world, whole=name.startswith(("Lamb", "LARS", "Muon")))
            assert max(shares) <= arrays * max(layout.counts) * itemsize, key


@pytest.mark.slow
def test_a_bad_gradient_on_one_rank_raises_on_every_rank(tmp_path):
    run_ranks(3, "errors", tmp_path)
    reports = json.loads((tmp_path / "errors-3.json").read_text())
    for rank, report in enumerate(reports):
        if rank == 1:
            assert "grads[1] must have the parameter's shape (7,), got (8,)" in report["shape"]
        else:
            assert report["shape"].startswith("rank 1 could not step: grads[1] must have")
        assert report["unchanged"] and report["skipped"] and report["unchanged_after_nan"]
        assert report["raise"].startswith("grads[1] summed over the 3 ranks is not finite at")
        assert "flat index 4" in report["raise"]  # rank 1's piece starts at element 1
        assert "disagree on which parameters have a gradient (None)" in report["none"]
        assert "disagree on the options" in report["options"]
        if rank == 2:
            assert "lr" in report["edited"] or "learning rate" in report["edited"]
        else:
            assert report["edited"].startswith("rank 2 could not step")
        assert report["unchanged_at_the_end"]
        assert "rank 1 built its optimizer with other" in report["disagree"] or (
            "rank 0 built its optimizer with other" in report["disagree"]
        )
        assert "Invalid learning rate" in report["invalid"] or "lr" in report["invalid"]
        if rank != 1:
            assert report["invalid"].startswith("rank 1 could not build its optimizer")


@pytest.mark.slow
def test_checkpoints_resume_across_world_sizes(tmp_path):
    _name, cls, kwargs, shapes = CHECKPOINT_CASE
    run_ranks(2, "save", tmp_path)
    # 2 -> 3 ranks from the sharded checkpoint, 5 more steps, saved sharded again.
    run_ranks(3, "resume", tmp_path, "sharded-2", 5)
    # 3 -> 1 rank, 5 more.
    run_ranks(1, "resume", tmp_path, "sharded-3", 10)
    # The ranks' gradients are the same functions of (step, rank) whatever the world: the
    # uninterrupted run averages over the world of each stretch.
    params = make_params(shapes, np.float32, 0)
    opt = cls(split_groups(params, kwargs), max_norm=1.0, **kwargs)
    for step, world in zip(range(15), [2] * 5 + [3] * 5 + [1] * 5, strict=True):
        opt.step(mean_gradients(shapes, np.float32, 0, step, world))
        if step == 4:
            saved = np.load(tmp_path / "saved-2.npz")
            for i, p in enumerate(opt.params):
                np.testing.assert_allclose(saved[f"arr_{i}"], p, rtol=2e-5, atol=2e-6)
            # The whole checkpoint of 2 ranks is an ordinary one: a plain optimizer loads it.
            plain = cls(split_groups(make_params(shapes, np.float32, 7), kwargs), **kwargs)
            fastopt.load(tmp_path / "whole-2.ckpt").restore(plain)
            for i, p in enumerate(opt.params):
                np.testing.assert_allclose(plain.params[i], p, rtol=2e-5, atol=2e-6)
                for key, value in opt.state[i].items():
                    np.testing.assert_allclose(plain.state[i][key], value, rtol=2e-5, atol=2e-6)
            # And so is the sharded one, put together.
            whole = fastopt.load(tmp_path / "sharded-2")
            for i in range(len(opt.params)):
                np.testing.assert_array_equal(whole.params[i], plain.params[i])
                for key, value in plain.state[i].items():
                    np.testing.assert_array_equal(whole.state_dict["state"][i][key], value)
    resumed = np.load(tmp_path / "resumed-1.npz")
    for i, p in enumerate(opt.params):
        np.testing.assert_allclose(resumed[f"arr_{i}"], p, rtol=5e-5, atol=5e-6)
    # The save of 2 ranks wrote twice into its directory: the second replaced the first.
    names = sorted(f.name for f in (tmp_path / "sharded-2").iterdir())
    assert len(names) == 3 and names[0] == "index.ckpt", names
    assert names[1].endswith("-00000-of-00002.ckpt") and names[2].endswith("-00001-of-00002.ckpt")


def test_one_rank_without_mpiexec_is_a_plain_optimizer():
    params = make_params(SHAPES, np.float64, 3)
    plain = [p.copy() for p in params]
    opt = ZeroRedundancyOptimizer(params, fastopt.Adam, lr=0.1, max_norm=0.5)
    ref = fastopt.Adam(plain, lr=0.1, max_norm=0.5)
    for step in range(3):
        grads = mean_gradients(SHAPES, np.float64, 3, step, 1)
        opt.step(grads)
        ref.step(grads)
    for a, b in zip(opt.params, ref.params, strict=True):
        np.testing.assert_array_equal(a, b)
    assert opt.last_step == ref.last_step


@pytest.mark.slow
def test_a_plain_optimizers_checkpoint_resumes_on_three_ranks(tmp_path):
    """One process saves; three ranks restore its checkpoint, each taking its pieces, and
    continue as the one process does."""
    _name, cls, kwargs, shapes = CHECKPOINT_CASE
    opt = cls(split_groups(make_params(shapes, np.float32, 0), kwargs), max_norm=1.0, **kwargs)
    for step in range(15):
        if step == 5:
            fastopt.save(tmp_path / "plain.ckpt", opt)
            run_ranks(3, "resume", tmp_path, "plain.ckpt", 5)
        opt.step(mean_gradients(shapes, np.float32, 0, step, 1 if step < 5 else 3))
        if step == 9:
            resumed = np.load(tmp_path / "resumed-3.npz")
            for i, p in enumerate(opt.params):
                np.testing.assert_allclose(resumed[f"arr_{i}"], p, rtol=5e-5, atol=5e-6)


def test_a_communicator_that_is_not_one_is_refused():
    with pytest.raises(TypeError, match="comm must be an mpi4py intracommunicator"):
        ZeroRedundancyOptimizer([np.zeros(3)], fastopt.Adam, comm="world", lr=0.1)
    with pytest.raises(TypeError, match="optimizer_class must be a fastopt optimizer class"):
        ZeroRedundancyOptimizer([np.zeros(3)], object, lr=0.1)
    with pytest.raises(TypeError, match="to must be an int"):
        ZeroRedundancyOptimizer([np.zeros(3)], fastopt.Adam, lr=0.1).state_dict(to=0.0)


@pytest.mark.slow
def test_the_benchmark_prints_its_parts():
    bench = Path(__file__).parent.parent / "benches" / "bench_zero.py"
    command = [_mpiexec(), "-n", "2", sys.executable, str(bench), "--size", "2^12"]
    command += ["--rounds", "1", "--repeats", "1", "--parameters", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    for part in ("| step |", "| reduce-scatter |", "| local step |", "| all-gather |", "| rest |"):
        assert part in done.stdout
    assert done.stdout.startswith("world 2, 4096 float32 elements in 3 arrays")


def test_a_dequantized_state_dict_loads_into_a_float32_optimizer():
    """bfloat16 state, gathered dequantized: float32 arrays and ``state_dtype`` None, which a
    plain float32-state optimizer loads; the sharded one loads its own form back."""
    kwargs = {"lr": 0.01, "state_dtype": "bfloat16"}
    params = make_params(SHAPES, np.float32, 5)
    opt = ZeroRedundancyOptimizer(split_groups(params, kwargs), fastopt.Adam, **kwargs)
    for step in range(3):
        opt.step(mean_gradients(SHAPES, np.float32, 5, step, 1))
    whole = opt.state_dict(dequantize=True)
    assert all(group["state_dtype"] is None for group in whole["param_groups"])
    assert whole["state"][0]["exp_avg"].dtype == np.float32
    plain = fastopt.Adam(split_groups([p.copy() for p in params], {"lr": 0.01}), lr=0.01)
    plain.load_state_dict(whole)
    np.testing.assert_array_equal(
        plain.state[0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"].astype(np.float32)
    )
    again = ZeroRedundancyOptimizer(split_groups(params, kwargs), fastopt.Adam, **kwargs)
    again.load_state_dict(opt.state_dict())
    assert again.step_count == 3
    assert again.state_dict()["state"][0]["exp_avg"].dtype == BFLOAT16


@pytest.mark.parametrize("world", [1, 2])
def test_int8_state_shards_whole_parameters_and_matches_one_process(tmp_path, world):
    """8-bit state: shards of whole parameters (its blocks are each parameter's), the
    parameters and every code and scale of the gathered state as one process's on the mean
    gradient (exact: gradients in 1/64ths, two ranks); int8 set on an optimizer sharded by
    elements is refused on every rank."""
    run_ranks(world, "int8", tmp_path)
    results = np.load(tmp_path / f"int8-{world}.npz")
    _name, cls, kwargs = INT8_CASE
    expected = single_process(cls, kwargs, np.float32, INT8_SHAPES, 0, world, 6)
    for i, param in enumerate(expected.params):
        np.testing.assert_array_equal(results[f"param/{i}"], param)
    for index, entry in expected.state.items():
        for name, value in entry.items():
            if name != "step":
                np.testing.assert_array_equal(results[f"{index}/{name}"], value, err_msg=name)
    assert expected.state[0]["exp_avg"].dtype == np.uint8
    report = json.loads((tmp_path / f"int8-{world}.json").read_text())
    assert "give it when the optimizer is made" in report["late"]
