"""The machine's ceiling for an update: a streaming kernel that moves the same bytes.

An optimizer update reads the parameter, the gradient and ``k`` state arrays and writes back
the parameter and the state arrays. :func:`stream_step` does exactly that memory traffic
with one addition per array (``x += g``) instead of the rule's arithmetic. It is a declared
rule like the others (:data:`STREAM`), so its kernels are generated the same way: the same
drivers (serial below ``PARALLEL_THRESHOLD``, one contiguous chunk per thread above), the
same gradient preamble and numba options. Its time is what a perfect kernel for the rule
could reach on this machine: an update's time divided by it is the fraction of the
memory-bandwidth roofline the update reaches.
"""

from __future__ import annotations

import numpy as np

from fastopt._checks import check_bool
from fastopt._declared import row_of
from fastopt._launch import launch, single_segment
from fastopt.rule import Hyperparameter, Rule, State, build

__all__ = ["MAX_STATE", "STREAM", "STREAM_KERNELS", "STREAM_ROWS", "stream_step"]

#: Most state arrays a rule reads and writes (Adan: 4; AMSGrad, AdEMAMix: 3).
MAX_STATE = 4

_NAMES = ("first", "second", "third", "fourth")


def stream_update(p, g, first, second, third, fourth, h):
    """Read every value, add the gradient, write back all but the gradient."""
    if first is not None:
        first = first + g
    if second is not None:
        second = second + g
    if third is not None:
        third = third + g
    if fourth is not None:
        fourth = fourth + g
    return p + g, first, second, third, fourth


def _present(name: str):
    return lambda group: group[f"with_{name}"]


STREAM = Rule(
    name="Stream",
    update=stream_update,
    fields=(),
    row=lambda group, step, created, scalars: (),
    hyperparameters=tuple(Hyperparameter(f"with_{name}", False, check_bool) for name in _NAMES),
    state=tuple(State(name, present=_present(name)) for name in _NAMES),
    maximize=None,
    counts_steps=False,
)
STREAM_KERNELS = build(STREAM).kernels

#: The kernel row for ``k`` state arrays, by ``k``: the gradient's own scale (a tiny factor
#: could make denormal products, which are slow) and no clip value.
STREAM_ROWS = [
    np.array([row_of(STREAM, {f"with_{name}": True for name in _NAMES[:count]}, 1, False)])
    for count in range(MAX_STATE + 1)
]


def stream_step(param: np.ndarray, grad: np.ndarray, *state: np.ndarray) -> None:
    """Read ``param``, ``grad`` and each ``state`` array and write back all but ``grad``.

    The arrays must be 1-D, C-contiguous, of one dtype and size (the benchmarks make them;
    nothing is checked here): float32 or float64, or a 16-bit format as the kernels see it
    (:func:`fastopt._storage.kernel_view`, made once by the caller: the bits of bfloat16 as
    ``uint16``, each value rounded to nearest when stored). Up to :data:`MAX_STATE` state
    arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.bench.ceiling import stream_step
    >>> p, g, m = np.zeros(4), np.ones(4), np.zeros(4)
    >>> stream_step(p, g, m)
    >>> bool(np.all(p == 1) and np.all(m == 1))
    True
    """
    if len(state) > MAX_STATE:
        raise ValueError(f"stream_step takes at most {MAX_STATE} state arrays, got {len(state)}")
    padded = (*state, *(None,) * (MAX_STATE - len(state)))
    launch(
        STREAM_KERNELS, single_segment(param.size), STREAM_ROWS[len(state)], param, grad, *padded
    )
