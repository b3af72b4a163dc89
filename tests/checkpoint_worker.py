"""Training runs shared by the checkpoint tests and the processes they start.

``python checkpoint_worker.py resume DIR START STOP`` rebuilds every case's optimizer, restores
``DIR/case<i>.ckpt``, runs steps ``START..STOP-1`` and saves the result in place.
``python checkpoint_worker.py killed PATH WHERE`` saves a checkpoint after one step, then
starts saving the second and blocks at ``WHERE`` (``"array"``: after the first array member;
``"rename"``: with the temporary file complete, just before the rename) for the parent to kill.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from rule_cases import CASES

import fastopt
from fastopt import checkpoint

SHAPES = [(3, 7), (1000,), (2,)]
BAD_EVERY = 17  # steps whose gradients hold a NaN, to exercise skipping across a resume


def build(index: int) -> tuple[fastopt.Optimizer, fastopt.LossScaler]:
    """Case ``index`` of the rule table on fresh parameters, with every robustness option."""
    _, cls, kwargs = CASES[index]
    rng = np.random.default_rng(1000 + index)
    params = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES[:2]]
    params.append(rng.standard_normal(SHAPES[2]))  # float64 beside float32
    base_lr = kwargs["lr"]
    options = dict(kwargs, lr=lambda t: base_lr * 0.98**t)  # a schedule that must resume
    opt = cls(params, nonfinite="skip", max_norm=1.0, clip_value=0.5, **options)
    scaler = fastopt.LossScaler(init_scale=2.0**8, growth_interval=5)
    opt.attach("scaler", scaler)
    return opt, scaler


def gradients(index: int, step: int, scale: float) -> list[np.ndarray]:
    rng = np.random.default_rng([index, step])
    grads = [(rng.standard_normal(p) * scale).astype(np.float32) for p in SHAPES[:2]]
    grads.append(rng.standard_normal(SHAPES[2]) * scale)
    if step % BAD_EVERY == BAD_EVERY - 1:
        grads[1][step % 1000] = np.nan
    return grads


def train(
    opt: fastopt.Optimizer, scaler: fastopt.LossScaler, index: int, start: int, stop: int
) -> None:
    for step in range(start, stop):
        scaler.step(opt, gradients(index, step, scaler.get_scale()))
        scaler.update()


def _resume(directory: str, start: int, stop: int) -> None:
    for index in range(len(CASES)):
        path = os.path.join(directory, f"case{index}.ckpt")
        opt, scaler = build(index)
        for param in opt.params:
            param[...] = 0.0  # the checkpoint must bring the values back
        fastopt.load(path).restore(opt)
        train(opt, scaler, index, start, stop)
        fastopt.save(path, opt)


def _killed(path: str, where: str) -> None:
    opt, scaler = build(0)
    train(opt, scaler, 0, 0, 1)
    fastopt.save(path, opt)
    train(opt, scaler, 0, 1, 2)

    def block() -> None:
        print("blocked", flush=True)
        time.sleep(600)

    if where == "array":
        write_array = checkpoint._write_array

        def write_then_block(archive, name, array):
            write_array(archive, name, array)
            block()

        checkpoint._write_array = write_then_block
    else:
        os.replace = lambda *args: block()
    fastopt.save(path, opt)


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        _resume(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        _killed(sys.argv[2], sys.argv[3])
