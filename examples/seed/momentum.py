"""Momentum on f(x) = x², x0 = 10, lr 0.1, momentum 0.9 (the seed tutorial, part 3).

The tutorial writes ``v = 0.9 v - lr * g; x += v``; torch's (and fastopt's) SGD momentum,
``b = 0.9 b + g; x -= lr * b``, is the same trajectory while lr is constant.
"""

import numpy as np

import fastopt


def run(iterations: int = 10) -> list[float]:
    x = np.array([10.0])
    opt = fastopt.SGD(x, lr=0.1, momentum=0.9)
    trajectory = []
    for i in range(iterations):
        opt.step(2 * x)
        trajectory.append(float(x[0]))
        print(f"Iteration {i + 1}: x = {x[0]}, f(x) = {x[0] ** 2}")
    return trajectory


if __name__ == "__main__":
    run()
