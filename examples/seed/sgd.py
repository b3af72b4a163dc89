"""Stochastic gradient descent on y = 2x, one sample per update (the seed tutorial, part 2).

The model is ``prediction = w * x + b`` with the squared error ``(prediction - y)² / 2``, so the
gradient of one sample is ``(error * x, error)``. ``wb`` holds (w, b) in one array.
"""

import numpy as np

import fastopt


def run(epochs: int = 10) -> list[tuple[float, float]]:
    X = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 4.0, 6.0, 8.0])
    wb = np.zeros(2)
    opt = fastopt.SGD(wb, lr=0.01)
    trajectory = []
    for i in range(epochs):
        for j in range(len(X)):
            error = wb[0] * X[j] + wb[1] - y[j]
            opt.step(np.array([error * X[j], error]))
            trajectory.append((float(wb[0]), float(wb[1])))
            print(f"Iteration {i + 1}, Sample {j + 1}: weights = {wb[0]}, bias = {wb[1]}")
    return trajectory


if __name__ == "__main__":
    run()
