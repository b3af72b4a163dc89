"""Handwritten digits: one MLP trained twice with fastopt, in NumPy and in PyTorch.

The data is scikit-learn's bundled copy of the UCI digits (1797 images of 8x8 pixels, no
download). The model is 64 -> 64 (tanh) -> 10 with a softmax cross-entropy loss.

1. NumPy: the four weight arrays live in one :class:`fastopt.FlatParams`; the backward pass
   is written by hand, each batch is split into micro-batches whose gradients are added with
   ``flat.accumulate`` (the step applies their mean), and ``fastopt.AdamW`` updates both
   parameter groups (weights with weight decay, biases without) in one launch per step.
2. PyTorch: the same model, initial weights and batches as ``torch.nn.Sequential``, trained
   by ``fastopt.torch.AdamW`` with the same groups (autograd accumulates the micro-batches).

Both runs compute the same thing in a different order, so their loss curves coincide to
rounding; they are plotted into one PNG with the test accuracy of each.

Run from the repository root (needs scikit-learn and matplotlib; the PyTorch run is left out
when torch is not installed)::

    PYTHONPATH=. python examples/digits_mlp.py --epochs 30 --out digits_mlp.png
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

import fastopt

HIDDEN = 64
CLASSES = 10


def load_data(dtype: type, seed: int = 0):
    """Pixels scaled to [0, 1] and labels, shuffled, split 1500 / 297."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x = (digits.data[order] / 16.0).astype(dtype)
    y = digits.target[order]
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def initial_weights(dtype: type, seed: int = 1) -> dict[str, np.ndarray]:
    """torch.nn.Linear's initialization: uniform in +-1/sqrt(fan_in); weights are (out, in)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, fan_out, fan_in in (("1", HIDDEN, 64), ("2", CLASSES, HIDDEN)):
        bound = 1.0 / np.sqrt(fan_in)
        weights["W" + name] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype)
        weights["b" + name] = rng.uniform(-bound, bound, fan_out).astype(dtype)
    return weights


def batches(count: int, size: int, epochs: int, seed: int = 2) -> list[list[np.ndarray]]:
    """Per epoch, the sample indices of each batch (shared by both runs)."""
    rng = np.random.default_rng(seed)
    return [np.array_split(rng.permutation(count), count // size) for _ in range(epochs)]


# ---------------------------------------------------------------------- NumPy
def forward_backward(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray):
    """Mean cross-entropy of a batch and its gradients (torch.nn.Linear's layout)."""
    hidden = np.tanh(x @ params["W1"].T + params["b1"])
    logits = hidden @ params["W2"].T + params["b2"]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].mean()
    d_logits = np.exp(log_probs)
    d_logits[np.arange(len(y)), y] -= 1
    d_logits /= len(y)
    d_pre = (d_logits @ params["W2"]) * (1 - hidden * hidden)
    grads = {
        "W1": d_pre.T @ x,
        "b1": d_pre.sum(axis=0),
        "W2": d_logits.T @ hidden,
        "b2": d_logits.sum(axis=0),
    }
    return float(loss), grads


def accuracy_numpy(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    hidden = np.tanh(x @ params["W1"].T + params["b1"])
    return float(np.mean((hidden @ params["W2"].T + params["b2"]).argmax(axis=1) == y))


def train_numpy(data, weights, plan, lr, micro_batches) -> dict[str, Any]:
    (x, y), (x_test, y_test) = data
    flat = fastopt.FlatParams.from_arrays(weights)
    params = dict(zip(flat.names, flat.params, strict=True))
    opt = fastopt.AdamW(
        [
            {"params": [params["W1"], params["W2"]]},
            {"params": [params["b1"], params["b2"]], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    curve = []
    for epoch in plan:
        losses = []
        for batch in epoch:
            flat.zero_grad()
            for part in np.array_split(batch, micro_batches):
                loss, grads = forward_backward(params, x[part], y[part])
                flat.accumulate([grads[name] for name in flat.names])
                losses.append(loss)
            opt.step()  # the mean of the micro-batch gradients, one launch
        curve.append(float(np.mean(losses)))
    return {"loss": curve, "accuracy": accuracy_numpy(params, x_test, y_test)}


# ---------------------------------------------------------------------- PyTorch
def train_torch(data, weights, plan, lr, micro_batches) -> dict[str, Any]:
    import torch

    import fastopt.torch

    (x, y), (x_test, y_test) = data
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    dtype = x.dtype
    model = torch.nn.Sequential(
        torch.nn.Linear(64, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, CLASSES)
    ).to(dtype)
    with torch.no_grad():
        for layer, name in ((model[0], "1"), (model[2], "2")):
            layer.weight.copy_(torch.from_numpy(weights["W" + name]))
            layer.bias.copy_(torch.from_numpy(weights["b" + name]))
    opt = fastopt.torch.AdamW(
        [
            {"params": [model[0].weight, model[2].weight]},
            {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    curve = []
    for epoch in plan:
        losses = []
        for batch in epoch:
            opt.zero_grad()
            for part in np.array_split(batch, micro_batches):
                rows = torch.from_numpy(part)
                loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
                (loss / micro_batches).backward()
                losses.append(loss.item())
            opt.step()
        curve.append(float(np.mean(losses)))
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    return {"loss": curve, "accuracy": float(np.mean(predicted == y_test))}


# ---------------------------------------------------------------------- plot and main
def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "numpy": ("NumPy + fastopt.AdamW (FlatParams)", "-", 3.0),
        "torch": ("PyTorch + fastopt.torch.AdamW", "--", 1.5),
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, result in results.items():
        label, style, width = styles[key]
        epochs = np.arange(1, len(result["loss"]) + 1)
        label = f"{label}: test accuracy {result['accuracy']:.3f}"
        ax.plot(epochs, result["loss"], style, linewidth=width, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title("Digits (scikit-learn), MLP 64-64-10")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--out", default="digits_mlp.png", help="the PNG to write ('' for none)")
    args = parser.parse_args(argv)

    dtype = np.dtype(args.dtype).type
    data = load_data(dtype)
    weights = initial_weights(dtype)
    plan = batches(len(data[0][1]), args.batch, args.epochs)
    results = {"numpy": train_numpy(data, weights, plan, args.lr, args.micro_batches)}
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch is not installed: the PyTorch run is left out")
    else:
        results["torch"] = train_torch(data, weights, plan, args.lr, args.micro_batches)
    for key, result in results.items():
        print(
            f"{key:>5}: loss {result['loss'][0]:.4f} -> {result['loss'][-1]:.4f}, "
            f"test accuracy {result['accuracy']:.3f}"
        )
    if args.out:
        plot(results, args.out)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
