"""Runs every rule with every step option on arrays past the parallel threshold.

``python determinism_worker.py OUT.npz`` writes every parameter and state array and the
norms it saw; the determinism tests run it under different thread counts and launch paths
and compare the files bit for bit.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from rule_cases import CASES

import fastopt
from fastopt._reduce import BLOCK

# Past the default parallel threshold (2**16), not a multiple of the block or of any thread
# count's chunk. Fixed: the serial run raises the threshold through the environment.
SIZES = [2 * 2**16 + 13, BLOCK + 5]
STEPS = 4


def run() -> dict[str, np.ndarray]:
    results = {}
    for index, (_, cls, kwargs) in enumerate(CASES):
        rng = np.random.default_rng(index)
        params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
        params.append(rng.standard_normal(SIZES[0]))
        opt = cls(params, nonfinite="skip", max_norm=10.0, clip_value=0.02, **kwargs)
        for step in range(STEPS):
            grads = [(rng.standard_normal(p.size) * 64).astype(p.dtype) for p in params]
            if step == 2:
                grads[0][-1] = np.inf  # a skipped step
            opt.step(grads, loss_scale=64.0)
            results[f"case{index}/norm{step}"] = np.array(opt.last_step.grad_norm)
        for number, param in enumerate(params):
            results[f"case{index}/param{number}"] = param
            for name, value in opt.state[number].items():
                results[f"case{index}/state{number}/{name}"] = np.asarray(value)
        for norm_type in (2.0, math.inf):
            results[f"case{index}/global_norm/{norm_type}"] = np.array(
                fastopt.global_norm(params, norm_type)
            )
    return results


if __name__ == "__main__":
    np.savez(sys.argv[1], **run())
