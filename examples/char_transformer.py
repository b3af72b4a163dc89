"""Training in fewer bytes: a character-level transformer with bfloat16 parameters and state.

The text is English documentation that ships with Python: the help topics of
``pydoc_data.topics`` (the text of ``help("assert")`` and its siblings), joined in the order of
their keys. The first ``--train-chars`` characters are the training text, the next
``HELD_OUT_CHARS`` the held-out text; the vocabulary is every character of the two. (The
topics change between Python versions, so the numbers do too.)

The model is a small GPT written in NumPy, forward and backward by hand: token and position
embeddings, pre-LayerNorm transformer blocks (causal multi-head self-attention, then an MLP
with a tanh-approximated GELU), a final LayerNorm and a separate output projection, trained on
next-character cross-entropy. By default one block, a residual stream of 32, two heads, a
context of 32 characters and 100 characters of vocabulary: 20,162 parameters. Each mode of
``examples/precision_convergence.py``'s ``MODES`` trains it with ``fastopt.AdamW`` (weight
decay on the matrices but the embeddings) from the same initial weights on the same batches;
the forward and backward passes run in float32 on the parameters' values and the gradients
are handed over in the parameters' dtype, as in that example. A mode added to ``MODES`` is
trained here too, with no other change.

The weights span more scales than the digits MLP's: LayerNorm gains start at 1, where the
bfloat16 spacing is 2^-7, the other weights near 0.02 and the biases at 0. At the default
learning rate (1e-4) Adam's updates are below half a spacing for the gains from the first step,
and rounded to nearest they are lost: the gains never move. Of the other weights, over the last
epoch the output projection changes in a fifth of its elements and the final LayerNorm's bias
in none, and what does change moves by a whole spacing, not by the update. That mode stalls
after its first epoch (mean losses 3.85, 3.51, 3.48, 3.46 by epoch), above the loss of
predicting each character by its frequency alone (3.22 nats on the default text), while float32
goes on learning (3.76, 3.10, 2.87, 2.73); a master copy, a Kahan buffer or stochastic rounding
end within 0.3% of float32's loss. At learning rates of 1e-3 and more most updates survive
rounding, and plain bfloat16 trails float32 by a few percent rather than stalling (+3.6% at
1e-3 and +1.4% at 3e-3 in runs of 500 and 1,000 steps of 16 sequences).

Run from the repository root (about 1.5 minutes on two cores)::

    PYTHONPATH=. python examples/char_transformer.py --epochs 4 --lr 1e-4
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).parent))
from precision_convergence import MODES

#: Characters of the held-out text, after the training text.
HELD_OUT_CHARS = 16_384


class Config(NamedTuple):
    """The model's shape.

    Parameters
    ----------
    vocab
        Number of distinct characters.
    context
        Characters per sequence (the positions the model sees).
    d_model
        Width of the residual stream.
    heads
        Attention heads per block; ``d_model`` must be a multiple of it.
    layers
        Transformer blocks.
    hidden
        Width of each block's MLP.
    """

    vocab: int
    context: int = 32
    d_model: int = 32
    heads: int = 2
    layers: int = 1
    hidden: int = 128


# ------------------------------------------------------------------------------ data
def load_text(train_chars: int = 131_072) -> tuple[np.ndarray, np.ndarray, str]:
    """The training and held-out texts as character ids, and the vocabulary.

    Parameters
    ----------
    train_chars
        Characters of training text; the held-out text is the ``HELD_OUT_CHARS`` after them.

    Returns
    -------
    train, held_out : ndarray of int64
        Character ids.
    vocabulary : str
        The characters, sorted: id ``i`` is ``vocabulary[i]``.
    """
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    if train_chars + HELD_OUT_CHARS > len(text):
        raise ValueError(
            f"train_chars: expected at most {len(text) - HELD_OUT_CHARS}, got {train_chars}"
        )
    text = text[: train_chars + HELD_OUT_CHARS]
    vocabulary = "".join(sorted(set(text)))
    lookup = {char: index for index, char in enumerate(vocabulary)}
    ids = np.array([lookup[char] for char in text], dtype=np.int64)
    return ids[:train_chars], ids[train_chars:], vocabulary


def batches(length: int, context: int, size: int, epochs: int, seed: int = 2):
    """Per epoch, the start of each sequence of each batch (shared by every mode).

    An epoch cuts the text into consecutive sequences of ``context + 1`` characters (inputs
    and the next characters) from a random offset, and deals them out in random order.

    Returns
    -------
    list of list of ndarray
        ``plan[epoch][step]`` holds the ``size`` start indices of that batch.
    """
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(epochs):
        offset = int(rng.integers(context))
        starts = np.arange(offset, length - context - 1, context)
        starts = rng.permutation(starts)
        plan.append([starts[i : i + size] for i in range(0, len(starts) - size + 1, size)])
    return plan


def window(ids: np.ndarray, starts: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """The input characters of the sequences starting at ``starts`` and their successors."""
    rows = ids[starts[:, None] + np.arange(context + 1)]
    return rows[:, :-1], rows[:, 1:]


# ----------------------------------------------------------------------------- model
def initial_weights(config: Config, dtype: Any = np.float32, seed: int = 1):
    """GPT-2's initialization: weights normal with standard deviation 0.02 (the projections
    into the residual stream 0.02 / sqrt(2 layers)), biases 0, LayerNorm gains 1.

    Returns
    -------
    dict of str to ndarray
        The parameters by name, in the order the gradients come back. Matrices are
        (in, out): a layer computes ``x @ W + b``.
    """
    rng = np.random.default_rng(seed)
    d, std = config.d_model, 0.02
    residual = std / np.sqrt(2 * config.layers)

    def normal(shape, scale=std):
        return rng.normal(0.0, scale, shape)

    weights = {"embed": normal((config.vocab, d)), "position": normal((config.context, d))}
    for layer in range(config.layers):
        weights |= {
            f"{layer}.ln1.gain": np.ones(d),
            f"{layer}.ln1.bias": np.zeros(d),
            f"{layer}.qkv": normal((d, 3 * d)),
            f"{layer}.qkv.bias": np.zeros(3 * d),
            f"{layer}.proj": normal((d, d), residual),
            f"{layer}.proj.bias": np.zeros(d),
            f"{layer}.ln2.gain": np.ones(d),
            f"{layer}.ln2.bias": np.zeros(d),
            f"{layer}.fc": normal((d, config.hidden)),
            f"{layer}.fc.bias": np.zeros(config.hidden),
            f"{layer}.out": normal((config.hidden, d), residual),
            f"{layer}.out.bias": np.zeros(d),
        }
    weights |= {
        "ln.gain": np.ones(d),
        "ln.bias": np.zeros(d),
        "head": normal((d, config.vocab)),
        "head.bias": np.zeros(config.vocab),
    }
    return {name: value.astype(dtype) for name, value in weights.items()}


_GELU = float(np.sqrt(2.0 / np.pi))


def _layer_norm(x, gain, bias):
    centred = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + 1e-5)
    normed = centred * rstd
    return normed * gain + bias, (normed, rstd, gain)


def _layer_norm_backward(d_out, cache):
    normed, rstd, gain = cache
    d_normed = d_out * gain
    d_x = rstd * (
        d_normed
        - d_normed.mean(axis=-1, keepdims=True)
        - normed * (d_normed * normed).mean(axis=-1, keepdims=True)
    )
    return d_x, (d_out * normed).sum(axis=(0, 1)), d_out.sum(axis=(0, 1))


def _split_heads(x, heads):
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)


def _merge_heads(x):
    batch, heads, length, width = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * width)


def forward_backward(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, config):
    """Mean next-character cross-entropy of a batch and its gradient per parameter.

    Parameters
    ----------
    params
        As :func:`initial_weights` returns them; everything is computed in their dtype.
    x, y
        (batch, context) character ids: the inputs and the characters that follow them.
    config
        The model's shape.

    Returns
    -------
    loss : float
    grads : dict of str to ndarray
        Of the parameters' names, shapes and dtype.
    """
    p = params
    batch, length = x.shape
    heads = config.heads
    scale = 1.0 / np.sqrt(config.d_model // heads)
    dtype = p["embed"].dtype
    causal = np.triu(np.ones((length, length), dtype=bool), 1)

    h = p["embed"][x] + p["position"][:length]
    caches = []
    for layer in range(config.layers):
        name = f"{layer}."
        a, ln1 = _layer_norm(h, p[name + "ln1.gain"], p[name + "ln1.bias"])
        qkv = a @ p[name + "qkv"] + p[name + "qkv.bias"]
        q, k, v = (_split_heads(part, heads) for part in np.split(qkv, 3, axis=-1))
        scores = (q @ k.transpose(0, 1, 3, 2)) * dtype.type(scale)
        scores[..., causal] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        attention = np.exp(scores)
        attention /= attention.sum(axis=-1, keepdims=True)
        mixed = _merge_heads(attention @ v)
        h = h + mixed @ p[name + "proj"] + p[name + "proj.bias"]
        m, ln2 = _layer_norm(h, p[name + "ln2.gain"], p[name + "ln2.bias"])
        pre = m @ p[name + "fc"] + p[name + "fc.bias"]
        t = np.tanh(_GELU * (pre + 0.044715 * pre**3))
        act = 0.5 * pre * (1.0 + t)
        h = h + act @ p[name + "out"] + p[name + "out.bias"]
        caches.append((a, ln1, q, k, v, attention, mixed, m, ln2, pre, t, act))
    f, ln = _layer_norm(h, p["ln.gain"], p["ln.bias"])
    logits = f @ p["head"] + p["head.bias"]

    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    rows = np.arange(batch)[:, None], np.arange(length), y
    loss = -float(log_probs[rows].mean())

    grads: dict[str, np.ndarray] = {}
    d_logits = np.exp(log_probs)
    d_logits[rows] -= 1.0
    d_logits /= dtype.type(batch * length)

    def linear_backward(d_out, inputs, weight):
        # (batch, length, in) inputs: the weight's and bias's gradients, and the inputs'.
        grads[weight] = inputs.reshape(-1, inputs.shape[-1]).T @ d_out.reshape(-1, d_out.shape[-1])
        grads[weight + ".bias"] = d_out.sum(axis=(0, 1))
        return d_out @ p[weight].T

    d_f = linear_backward(d_logits, f, "head")
    d_h, grads["ln.gain"], grads["ln.bias"] = _layer_norm_backward(d_f, ln)
    for layer in reversed(range(config.layers)):
        name = f"{layer}."
        a, ln1, q, k, v, attention, mixed, m, ln2, pre, t, act = caches[layer]
        d_act = linear_backward(d_h, act, name + "out")
        d_pre = d_act * (
            0.5 * (1.0 + t) + 0.5 * pre * (1.0 - t * t) * _GELU * (1.0 + 3 * 0.044715 * pre * pre)
        )
        d_m = linear_backward(d_pre, m, name + "fc")
        d_h2, grads[name + "ln2.gain"], grads[name + "ln2.bias"] = _layer_norm_backward(d_m, ln2)
        d_h = d_h + d_h2
        d_mixed = _split_heads(linear_backward(d_h, mixed, name + "proj"), heads)
        d_attention = d_mixed @ v.transpose(0, 1, 3, 2)
        d_v = attention.transpose(0, 1, 3, 2) @ d_mixed
        d_scores = attention * (d_attention - (d_attention * attention).sum(axis=-1, keepdims=True))
        d_scores *= dtype.type(scale)
        d_q = d_scores @ k
        d_k = d_scores.transpose(0, 1, 3, 2) @ q
        d_qkv = np.concatenate([_merge_heads(part) for part in (d_q, d_k, d_v)], axis=-1)
        d_a = linear_backward(d_qkv, a, name + "qkv")
        d_h1, grads[name + "ln1.gain"], grads[name + "ln1.bias"] = _layer_norm_backward(d_a, ln1)
        d_h = d_h + d_h1
    grads["position"] = np.zeros_like(p["position"])
    grads["position"][:length] = d_h.sum(axis=0)
    one_hot = np.zeros((batch * length, config.vocab), dtype=dtype)
    one_hot[np.arange(batch * length), x.ravel()] = 1.0
    grads["embed"] = one_hot.T @ d_h.reshape(batch * length, -1)
    return loss, {name: grads[name] for name in p}


def mean_loss(params, ids: np.ndarray, config: Config, size: int = 64) -> float:
    """Mean cross-entropy over every consecutive sequence of ``ids`` (the held-out loss)."""
    starts = np.arange(0, len(ids) - config.context - 1, config.context)
    total = 0.0
    for i in range(0, len(starts), size):
        x, y = window(ids, starts[i : i + size], config.context)
        total += forward_backward(params, x, y, config)[0] * len(x)
    return total / len(starts)


# ------------------------------------------------------------------------------ runs
def train(mode: str, data, config: Config, weights, plan, lr: float) -> dict[str, Any]:
    """One run: the mean training loss per epoch and the final held-out loss."""
    dtype, options = MODES[mode]
    train_ids, held_out = data
    params = {name: value.astype(dtype) for name, value in weights.items()}
    # Weight decay on the matrices, not on the biases, gains and embeddings (as GPT-2 does).
    embeddings = ("embed", "position")
    decayed = [name for name, value in params.items() if value.ndim == 2]
    decayed = [name for name in decayed if name not in embeddings]
    opt = fastopt.AdamW(
        [
            {"params": [params[name] for name in decayed]},
            {"params": [params[name] for name in params if name not in decayed], "weight_decay": 0},
        ],
        lr=lr,
        **options,
    )
    order = decayed + [name for name in params if name not in decayed]
    curve = []
    for epoch in plan:
        losses = []
        for starts in epoch:
            values = {name: value.astype(np.float32) for name, value in params.items()}
            loss, grads = forward_backward(
                values, *window(train_ids, starts, config.context), config
            )
            opt.step([grads[name].astype(dtype) for name in order])
            losses.append(loss)
        curve.append(float(np.mean(losses)))
    values = {name: value.astype(np.float32) for name, value in params.items()}
    return {"loss": curve, "held_out": mean_loss(values, held_out, config)}


def _one_blas_thread():
    """BLAS on one thread while the models train, where threadpoolctl (a dependency of
    scikit-learn) is installed: on matrices this small, more threads only synchronise, and
    on a busy machine they spin for cores others hold, several times slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train in each mode and print a markdown table; return each mode's results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-chars", type=int, default=131_072)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    args = parser.parse_args(argv)

    train_ids, held_out, vocabulary = load_text(args.train_chars)
    config = Config(vocab=len(vocabulary))
    weights = initial_weights(config)
    plan = batches(len(train_ids), config.context, args.batch, args.epochs)
    data = (train_ids, held_out)
    with _one_blas_thread():
        results = {mode: train(mode, data, config, weights, plan, args.lr) for mode in args.modes}
    baseline = results.get("float32")
    print("| mode | first epoch loss | final loss | vs float32 | held-out loss |")
    print("| --- | --- | --- | --- | --- |")
    for mode, result in results.items():
        relative = result["loss"][-1] / baseline["loss"][-1] - 1 if baseline else float("nan")
        print(
            f"| {mode} | {result['loss'][0]:.4f} | {result['loss'][-1]:.4f} | "
            f"{relative:+.1%} | {result['held_out']:.4f} |"
        )
    return results


if __name__ == "__main__":
    main()
