"""The same training code on host arrays and on device arrays.

``train`` builds an optimizer (two parameter groups, a schedule), steps it, saves a checkpoint
and resumes from it. Nothing in it knows where the arrays live: ``main`` runs it once on NumPy
arrays and once on numba device arrays, and checks that both runs agree. CuPy arrays and
torch CUDA tensors work the same way (fastopt takes them without copies).

    python examples/same_script_cpu_gpu.py                         # GPU, if one is usable
    NUMBA_ENABLE_CUDASIM=1 python examples/same_script_cpu_gpu.py  # numba's CUDA simulator
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import fastopt


def noisy_gradient(weights: np.ndarray, target: np.ndarray, rng: np.random.Generator):
    """Stand-in for a model's backward pass: the gradient of 0.5 |w - t|^2, plus noise."""
    return (weights - target + 0.1 * rng.standard_normal(weights.shape)).astype(weights.dtype)


def train(
    place: Callable[[np.ndarray], object],
    fetch: Callable[[object], np.ndarray],
    size: int = 1000,
    steps: int = 50,
) -> np.ndarray:
    """Fit ``weights`` and ``bias`` with AdamW; arrays live wherever ``place`` puts them.

    ``place`` moves a host array to where training runs and ``fetch`` brings one back (the
    gradient comes from the host here; in a real program your framework computes it where
    the parameters are).
    """
    rng = np.random.default_rng(0)
    target = rng.standard_normal(size).astype(np.float32)
    weights = place(np.zeros(size, np.float32))
    bias = place(np.zeros(8, np.float32))

    def lr(step: int) -> float:
        return 0.05 * 0.5 ** (step / steps)

    def make_optimizer() -> fastopt.AdamW:
        groups = [{"params": [weights]}, {"params": [bias], "weight_decay": 0.0}]
        return fastopt.AdamW(groups, lr=lr, weight_decay=0.01)

    opt = make_optimizer()
    for step in range(steps):
        if step == steps // 2:  # checkpoint and resume, as after a restart
            checkpoint = opt.state_dict()
            opt = make_optimizer()
            opt.load_state_dict(checkpoint)
        grad_weights = noisy_gradient(fetch(weights), target, rng)
        grad_bias = noisy_gradient(fetch(bias), np.ones(8, np.float32), rng)
        opt.step([place(grad_weights), place(grad_bias)])
    return fetch(weights)


def main(size: int = 1000, steps: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Train on the host, then on the device; return both final weights."""
    import fastopt.cuda

    on_host = train(np.copy, np.copy, size, steps)
    usable, reason = fastopt.cuda.availability()
    if not usable:
        raise SystemExit(f"host run done; no device run: {reason}")
    from numba import cuda

    on_device = train(cuda.to_device, lambda array: array.copy_to_host(), size, steps)
    # Same math; the GPU fuses multiply-adds, so agreement is to float32 rounding.
    np.testing.assert_allclose(on_device, on_host, rtol=1e-4, atol=1e-5)
    return on_host, on_device


if __name__ == "__main__":
    host, device = main()
    print(f"host and device agree: max |difference| = {np.max(np.abs(host - device)):.2e}")
