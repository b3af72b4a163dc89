"""Adam on f(x) = x², x0 = 10, lr 0.1, betas (0.9, 0.999), eps 1e-8 (the seed tutorial, part 6)."""

import numpy as np

import fastopt


def run(iterations: int = 10) -> list[float]:
    x = np.array([10.0])
    opt = fastopt.Adam(x, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    trajectory = []
    for i in range(iterations):
        opt.step(2 * x)
        trajectory.append(float(x[0]))
        print(f"Iteration {i + 1}: x = {x[0]}, f(x) = {x[0] ** 2}")
    return trajectory


if __name__ == "__main__":
    run()
