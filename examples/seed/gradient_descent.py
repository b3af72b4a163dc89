"""Gradient descent on f(x) = x², x0 = 10, lr 0.1, 10 iterations (the seed tutorial, part 1)."""

import numpy as np

import fastopt


def run(iterations: int = 10) -> list[float]:
    x = np.array([10.0])
    opt = fastopt.SGD(x, lr=0.1)
    trajectory = []
    for i in range(iterations):
        opt.step(2 * x)  # f'(x) = 2x
        trajectory.append(float(x[0]))
        print(f"Iteration {i + 1}: x = {x[0]}, f(x) = {x[0] ** 2}")
    return trajectory


if __name__ == "__main__":
    run()
