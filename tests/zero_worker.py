"""One rank of the ZeRO tests: ``mpiexec -n K python zero_worker.py SCENARIO OUT_DIR``.

Scenarios (see tests/test_distributed.py, which compares what rank 0 writes with one
process stepping on the averaged gradients):

- ``steps``: every rule in float32 and float64, uneven sizes (an empty one too), two groups,
  clipping by global norm, STEPS steps; each case run twice (bitwise equal reruns).
- ``errors``: a wrong gradient on one rank, a NaN on one rank, disagreeing constructors.
- ``save``/``resume``: checkpoints, whole and sharded, across world sizes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from mpi4py import MPI
from zero_cases import (
    BFLOAT16_CASES,
    CHECKPOINT_CASE,
    INT8_CASE,
    INT8_SHAPES,
    STEP_CASES,
    STEPS,
    gradients,
    make_params,
    split_groups,
)

import fastopt
from fastopt.distributed import ZeroRedundancyOptimizer
from fastopt.precision import BFLOAT16

COMM = MPI.COMM_WORLD
RANK, WORLD = COMM.Get_rank(), COMM.Get_size()


def run_case(cls, kwargs, dtype, shapes, steps, case, opt=None, first=0):
    params = make_params(shapes, dtype, case) if opt is None else opt.params
    if opt is None:
        opt = ZeroRedundancyOptimizer(split_groups(params, kwargs), cls, max_norm=1.0, **kwargs)
        if hasattr(opt.optim, "train"):
            opt.train()
    for step in range(first, first + steps):
        opt.step(gradients(shapes, dtype, case, step, RANK))
    return opt


def _same_on_every_rank(opt, key: str) -> None:
    """Every rank's parameters hold the same bits (the all-gather reached them all)."""
    gathered = COMM.gather([p.tobytes() for p in opt.params], root=0)
    if RANK == 0:
        assert all(theirs == gathered[0] for theirs in gathered), f"{key}: ranks differ"


def steps(out: Path) -> None:
    results, memory = {}, {}
    for case, (name, cls, kwargs, shapes) in enumerate(STEP_CASES):
        for dtype in (np.float32, np.float64):
            key = f"{name}/{np.dtype(dtype).name}"
            first = run_case(cls, kwargs, dtype, shapes, STEPS, case)
            again = run_case(cls, kwargs, dtype, shapes, STEPS, case)
            for i, (a, b) in enumerate(zip(first.params, again.params, strict=True)):
                assert a.tobytes() == b.tobytes(), f"{key}: rerun differs in parameter {i}"
                results[f"{key}/{i}"] = a.copy()
            if hasattr(first.optim, "eval"):  # Schedule-Free: x into every rank's parameters
                first.eval()
                results.update((f"{key}/eval/{i}", p.copy()) for i, p in enumerate(first.params))
            _same_on_every_rank(first, key)
            memory[key] = COMM.gather(first.state_nbytes(), root=0)
    for name, cls, kwargs, shapes in BFLOAT16_CASES:
        opt = run_case(cls, kwargs, BFLOAT16, shapes, STEPS, 0)
        _same_on_every_rank(opt, name)
        for i, param in enumerate(opt.params):
            results[f"{name}/{i}"] = param.view(np.uint16)  # npz keeps no bfloat16
    if RANK == 0:
        np.savez(out / f"steps-{WORLD}.npz", **results)
        (out / f"memory-{WORLD}.json").write_text(json.dumps(memory))


def errors(out: Path) -> None:
    shapes = [(5, 3), (7,)]
    report = {}
    opt = ZeroRedundancyOptimizer(make_params(shapes, np.float64, 0), fastopt.Adam, lr=0.1)
    before = [p.copy() for p in opt.params]
    grads = gradients(shapes, np.float64, 0, 0, RANK)
    if RANK == 1:
        grads[1] = np.zeros(8)
    try:
        opt.step(grads)
    except ValueError as error:
        report["shape"] = str(error)
    report["unchanged"] = all(np.array_equal(a, b) for a, b in zip(before, opt.params))
    grads = gradients(shapes, np.float64, 0, 0, RANK)
    if RANK == WORLD - 1:
        grads[1][4] = np.nan  # elements 1.. of grads[1] are rank 1's (15 + 1 on rank 0)
    opt.nonfinite = "skip"
    opt.step(grads)
    report["skipped"] = (not opt.last_step.applied) and opt.step_count == 0
    opt.nonfinite = "raise"
    try:
        opt.step(grads)
    except FloatingPointError as error:
        report["raise"] = str(error)
    report["unchanged_after_nan"] = all(np.array_equal(a, b) for a, b in zip(before, opt.params))
    opt.nonfinite = "propagate"
    grads = gradients(shapes, np.float64, 0, 0, RANK)
    if RANK == 1:
        grads[0] = None
    try:
        opt.step(grads)
    except ValueError as error:
        report["none"] = str(error)
    opt.max_norm = 1.0 if RANK == 0 else None
    try:
        opt.step(gradients(shapes, np.float64, 0, 0, RANK))
    except ValueError as error:
        report["options"] = str(error)
    opt.max_norm = None
    opt.param_groups[0]["lr"] = -1.0 if RANK == 2 else 0.1
    try:
        opt.step(gradients(shapes, np.float64, 0, 0, RANK))
    except ValueError as error:
        report["edited"] = str(error)
    report["unchanged_at_the_end"] = opt.step_count == 0 and all(
        np.array_equal(a, b) for a, b in zip(before, opt.params)
    )
    try:
        ZeroRedundancyOptimizer(make_params(shapes, np.float64, 0), fastopt.Adam, lr=0.1 + RANK)
    except ValueError as error:
        report["disagree"] = str(error)
    try:
        ZeroRedundancyOptimizer(
            make_params(shapes, np.float64, 0), fastopt.Adam, lr=-1.0 if RANK == 1 else 0.1
        )
    except ValueError as error:
        report["invalid"] = str(error)
    reports = COMM.gather(report, root=0)
    if RANK == 0:
        (out / f"errors-{WORLD}.json").write_text(json.dumps(reports))


def int8(out: Path) -> None:
    """INT8_CASE: the parameters and the whole state (codes and scales) after 6 steps; and
    an optimizer sharded by elements refuses int8 state set after it was made."""
    _name, cls, kwargs = INT8_CASE
    opt = run_case(cls, kwargs, np.float32, INT8_SHAPES, 6, 0)
    _same_on_every_rank(opt, "int8")
    whole = opt.state_dict()
    report = {}
    plain = ZeroRedundancyOptimizer(make_params([(5000,)], np.float32, 1), cls, lr=0.01)
    plain.param_groups[0]["state_dtype"] = "int8"
    try:
        plain.step(gradients([(5000,)], np.float32, 1, 0, RANK))
    except ValueError as error:
        report["late"] = str(error)
    if RANK == 0:
        arrays = {f"param/{i}": p for i, p in enumerate(opt.params)}
        for index, entry in whole["state"].items():
            arrays.update((f"{index}/{k}", v) for k, v in entry.items() if k != "step")
        np.savez(out / f"int8-{WORLD}.npz", **arrays)
        (out / f"int8-{WORLD}.json").write_text(json.dumps(report))


def save(out: Path) -> None:
    """CHECKPOINT_CASE for 5 steps, then both kinds of checkpoint."""
    _name, cls, kwargs, shapes = CHECKPOINT_CASE
    opt = run_case(cls, kwargs, np.float32, shapes, 5, 0)
    fastopt.save(out / f"whole-{WORLD}.ckpt", opt)
    fastopt.save(out / f"sharded-{WORLD}", opt, sharded=True)
    fastopt.save(out / f"sharded-{WORLD}", opt, sharded=True)  # replaces the first
    if RANK == 0:
        np.savez(out / f"saved-{WORLD}.npz", *opt.params)


def resume(out: Path, source: str, steps_done: int) -> None:
    """Load ``source`` (written by another world size), step on, save again (sharded)."""
    _name, cls, kwargs, shapes = CHECKPOINT_CASE
    params = make_params(shapes, np.float32, 99)  # overwritten by the checkpoint
    opt = ZeroRedundancyOptimizer(split_groups(params, kwargs), cls, max_norm=1.0, **kwargs)
    fastopt.load(out / source).restore(opt)
    assert opt.step_count == steps_done, opt.step_count
    run_case(cls, kwargs, np.float32, shapes, 5, 0, opt=opt, first=steps_done)
    fastopt.save(out / f"sharded-{WORLD}", opt, sharded=True)
    if RANK == 0:
        np.savez(out / f"resumed-{WORLD}.npz", *opt.params)


if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    if scenario == "steps":
        steps(out)
    elif scenario == "errors":
        errors(out)
    elif scenario == "save":
        save(out)
    elif scenario == "int8":
        int8(out)
    else:
        resume(out, sys.argv[3], int(sys.argv[4]))
