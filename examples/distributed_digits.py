"""Data-parallel training over MPI, the optimizer state sharded across the ranks (ZeRO-1).

The digits MLP of ``digits_mlp.py``: every rank holds the whole model, takes its share of each
batch, computes its gradients, and ``opt.step(grads)`` averages them over the ranks, steps
the rank's shard of the parameters with ``fastopt.AdamW`` (each rank keeps 1/world of the
moments) and gathers the updated parameters on every rank. That is the single-process run with
the batch split into ``world`` micro-batches, which rank 0 runs too and compares::

    pip install ".[mpi,examples]"
    mpiexec -n 4 python examples/distributed_digits.py --epochs 10
"""

from __future__ import annotations

import argparse

import numpy as np
from digits_mlp import accuracy_numpy, batches, forward_backward, initial_weights, load_data
from digits_mlp import train_numpy as train_one_process
from mpi4py import MPI

import fastopt
from fastopt.distributed import ZeroRedundancyOptimizer

NAMES = ("W1", "W2", "b1", "b2")


def train(comm, data, weights, plan, lr: float):
    (x, y), (x_test, y_test) = data
    params = {name: weights[name].copy() for name in NAMES}
    groups = [
        {"params": [params["W1"], params["W2"]]},
        {"params": [params["b1"], params["b2"]], "weight_decay": 0.0},
    ]
    opt = ZeroRedundancyOptimizer(groups, fastopt.AdamW, comm=comm, lr=lr)
    curve = []
    for epoch in plan:
        losses = []
        for batch in epoch:
            mine = np.array_split(batch, comm.Get_size())[comm.Get_rank()]
            loss, grads = forward_backward(params, x[mine], y[mine])
            opt.step([grads[name] for name in NAMES])  # the mean over the ranks
            losses.append(loss)
        curve.append(float(np.mean(comm.allgather(np.mean(losses)))))
    state = comm.gather(opt.state_nbytes(), root=0)
    return curve, accuracy_numpy(params, x_test, y_test), state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    data, weights = load_data(np.float64), initial_weights(np.float64)
    plan = batches(len(data[0][1]), 64, args.epochs)
    curve, accuracy, state = train(comm, data, weights, plan, args.lr)
    if comm.Get_rank() != 0:
        return
    print(f"{comm.Get_size()} ranks: final loss {curve[-1]:.6f}, test accuracy {accuracy:.3f}")
    print(f"optimizer state per rank: {state} bytes (one process: {sum(state)})")
    alone = train_one_process(data, weights, plan, args.lr, micro_batches=comm.Get_size())
    print(f"one process, {comm.Get_size()} micro-batches: final loss {alone['loss'][-1]:.6f}")
    difference = max(abs(a - b) for a, b in zip(curve, alone["loss"], strict=True))
    print(f"largest difference of the loss curves: {difference:.1e}")


if __name__ == "__main__":
    main()
