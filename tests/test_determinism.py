"""Bit-identical results whatever the thread count and launch path; concurrent optimizers."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt._jit import PARALLEL_THRESHOLD

TESTS = Path(__file__).parent


def _run_worker(tmp_path, name, **env):
    out = tmp_path / f"{name}.npz"
    subprocess.run(
        [sys.executable, str(TESTS / "determinism_worker.py"), str(out)],
        check=True,
        env={**os.environ, **env},
    )
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.slow
def test_thread_counts_and_serial_path_give_identical_bits(tmp_path):
    runs = {
        "1 thread": _run_worker(tmp_path, "t1", NUMBA_NUM_THREADS="1"),
        "2 threads": _run_worker(tmp_path, "t2", NUMBA_NUM_THREADS="2"),
        "3 threads": _run_worker(tmp_path, "t3", NUMBA_NUM_THREADS="3"),
        "serial": _run_worker(tmp_path, "serial", FASTOPT_PARALLEL_THRESHOLD=str(1 << 40)),
    }
    assert PARALLEL_THRESHOLD < 2 * 2**16 + 13, "the worker's arrays must take the parallel path"
    reference = runs.pop("1 thread")
    assert len(reference) > 100
    for name, results in runs.items():
        assert results.keys() == reference.keys()
        for key, value in reference.items():
            assert value.dtype == results[key].dtype, key
            assert value.tobytes() == results[key].tobytes(), f"{key} differs with {name}"


def _train(cls, kwargs, seed, steps, size):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(size).astype(np.float32), rng.standard_normal(size // 3)]
    opt = cls(params, max_norm=1.0, nonfinite="skip", **kwargs)
    for _ in range(steps):
        opt.step([rng.standard_normal(p.size).astype(p.dtype) for p in params])
    return params, opt


CONCURRENT = [
    (fastopt.Adam, {"lr": 1e-3, "amsgrad": True}, 1),
    (fastopt.SGD, {"lr": 1e-2, "momentum": 0.9}, 2),
    (fastopt.RMSprop, {"lr": 1e-3, "centered": True}, 3),
]


def _concurrently(size, steps):
    results = [None] * len(CONCURRENT)
    errors = []

    def work(number, cls, kwargs, seed):
        try:
            results[number] = _train(cls, kwargs, seed, steps, size)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=work, args=(number, *spec))
        for number, spec in enumerate(CONCURRENT)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_optimizers_stepped_from_several_threads_at_once_are_correct():
    size = 2 * PARALLEL_THRESHOLD + 7
    concurrent = _concurrently(size, steps=20)
    for (cls, kwargs, seed), (params, opt) in zip(CONCURRENT, concurrent, strict=True):
        expected, expected_opt = _train(cls, kwargs, seed, 20, size)
        for got, want in zip(params, expected, strict=True):
            assert got.tobytes() == want.tobytes()
        assert opt.step_count == expected_opt.step_count == 20


CONCURRENT_SCRIPT = f"""
import sys, numba
sys.path.insert(0, {str(TESTS)!r})
import test_determinism as t
t.test_optimizers_stepped_from_several_threads_at_once_are_correct()
print(numba.threading_layer())
"""


@pytest.mark.slow
def test_workqueue_layer_is_serialized_instead_of_aborting():
    # Numba's workqueue layer aborts the process on concurrent parallel launches; fastopt
    # detects it and serializes them.
    done = subprocess.run(
        [sys.executable, "-c", CONCURRENT_SCRIPT],
        env={**os.environ, "NUMBA_THREADING_LAYER": "workqueue"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("workqueue")
