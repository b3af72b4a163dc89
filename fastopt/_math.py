"""Element-wise helpers for the rules' updates, with torch's arithmetic.

Compiled like the updates that call them (inlined, fastopt's numba options); plain Python in
numba's CUDA simulator, device functions on a GPU.
"""

from __future__ import annotations

from fastopt._jit import elementwise

__all__ = ["lerp", "maximum", "weight_decayed"]


@elementwise
def lerp(start, end, weight):
    """``torch.lerp(start, end, weight)``: ``start + weight * (end - start)`` for a weight
    under 0.5, ``end - (end - start) * (1 - weight)`` otherwise (exact at both ends)."""
    if weight < 0.5:
        return start + weight * (end - start)
    # type(weight)(1.0): a 1 of the weight's type (an integer 1 would promote float32).
    return end - (end - start) * (type(weight)(1.0) - weight)


@elementwise
def weight_decayed(p, g, h):
    """torch's weight decay of the Adam family, from the row's ``weight_decay``, ``decoupled``
    and ``decay_factor`` (``1 - lr * weight_decay``): the parameter and the gradient after it,
    ``p * decay_factor`` (decoupled, AdamW) or ``g + weight_decay * p`` (L2)."""
    if h.weight_decay != 0:
        if h.decoupled:
            p = p * h.decay_factor
        else:
            g = g + h.weight_decay * p
    return p, g


@elementwise
def maximum(a, b):
    """``torch.maximum``: the larger of ``a`` and ``b``, NaN if either is NaN."""
    if a != a:  # a is NaN (a comparison, which vectorizes)
        return a
    return a if a > b else b
