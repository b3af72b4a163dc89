"""Training in fewer bytes: the digits MLP with bfloat16 parameters, state and gradients.

The model and data are those of ``examples/digits_mlp.py`` (scikit-learn's bundled digits,
an MLP 64-64-10, the same initial weights and batches). Each mode trains it with
``fastopt.AdamW``; the forward and backward passes run in float32 on the parameters' values
and the gradients are handed over in the parameters' dtype (bfloat16 for the bfloat16
modes), as a bfloat16 training step would produce them:

- ``float32``: everything float32 (the baseline);
- ``bf16 nearest``: bfloat16 parameters and gradients, float32 state, each parameter rounded
  to nearest after every update. At a small learning rate most updates are below half a
  bfloat16 spacing of the weight they change and are lost: training stalls;
- ``bf16 + master``: the same with a float32 master copy (``master_weights=True``);
- ``bf16 + kahan``: with a bfloat16 compensation buffer (``kahan_sum=True``);
- ``bf16 + stochastic``: rounded stochastically (``stochastic_rounding=True``);
- ``bf16 + bf16 state + stochastic``: the state in bfloat16 too (14 bytes per element per
  step instead of 28);
- ``f32 + bf16 state``: float32 parameters, bfloat16 state (``state_dtype="bfloat16"``);
- ``f32 + int8 state``: float32 parameters, 8-bit block-wise state (``state_dtype="int8"``;
  only the 64 x 64 first layer has the 4,096 elements it takes, the rest stays float32).

Run from the repository root (needs scikit-learn)::

    PYTHONPATH=. python examples/precision_convergence.py --epochs 60 --lr 1e-4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).parent))
from digits_mlp import accuracy_numpy, batches, forward_backward, initial_weights, load_data

BF16 = np.dtype(ml_dtypes.bfloat16)

#: mode: (parameter and gradient dtype, AdamW's precision options)
MODES: dict[str, tuple[np.dtype, dict[str, Any]]] = {
    "float32": (np.dtype(np.float32), {}),
    "bf16 nearest": (BF16, {}),
    "bf16 + master": (BF16, {"master_weights": True}),
    "bf16 + kahan": (BF16, {"kahan_sum": True}),
    "bf16 + stochastic": (BF16, {"stochastic_rounding": True}),
    "bf16 + bf16 state + stochastic": (
        BF16,
        {"state_dtype": "bfloat16", "stochastic_rounding": True},
    ),
    "f32 + bf16 state": (np.dtype(np.float32), {"state_dtype": "bfloat16"}),
    "f32 + int8 state": (np.dtype(np.float32), {"state_dtype": "int8"}),
}


def train(mode: str, data, weights, plan, lr: float) -> dict[str, Any]:
    """One run: the mean training loss per epoch and the final test accuracy."""
    dtype, options = MODES[mode]
    (x, y), (x_test, y_test) = data
    params = {name: value.astype(dtype) for name, value in weights.items()}
    opt = fastopt.AdamW(
        [
            {"params": [params["W1"], params["W2"]]},
            {"params": [params["b1"], params["b2"]], "weight_decay": 0.0},
        ],
        lr=lr,
        **options,
    )
    order = ["W1", "W2", "b1", "b2"]
    curve = []
    for epoch in plan:
        losses = []
        for batch in epoch:
            values = {name: value.astype(np.float32) for name, value in params.items()}
            loss, grads = forward_backward(values, x[batch], y[batch])
            opt.step([grads[name].astype(dtype) for name in order])
            losses.append(loss)
        curve.append(float(np.mean(losses)))
    values = {name: value.astype(np.float32) for name, value in params.items()}
    return {"loss": curve, "accuracy": accuracy_numpy(values, x_test, y_test)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    args = parser.parse_args(argv)

    data = load_data(np.float32)
    weights = initial_weights(np.float32)
    plan = batches(len(data[0][1]), args.batch, args.epochs)
    results = {mode: train(mode, data, weights, plan, args.lr) for mode in args.modes}
    baseline = results.get("float32")
    print("| mode | first epoch loss | final loss | vs float32 | test accuracy |")
    print("| --- | --- | --- | --- | --- |")
    for mode, result in results.items():
        relative = result["loss"][-1] / baseline["loss"][-1] - 1 if baseline else float("nan")
        print(
            f"| {mode} | {result['loss'][0]:.4f} | {result['loss'][-1]:.4f} | "
            f"{relative:+.1%} | {result['accuracy']:.3f} |"
        )
    return results


if __name__ == "__main__":
    main()
