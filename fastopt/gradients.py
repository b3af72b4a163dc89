r"""Gradient checks and clipping fused into the optimizer step: one read pass, then the update.

Every rule's kernel multiplies the gradient by a scalar before using it and then clamps it to
``[-clip_value, clip_value]``. Unscaling by a loss scale :math:`S` and clipping by global norm
both fold into that scalar, so a step with every option on makes two passes over memory:

1. **Read pass** (:func:`prestep`): one parallel pass over all gradients computes the global
   norm of the order asked for, and with it whether every element is finite.
2. **Update pass**: the rule's kernel with ``grad_scale = clip_coef / S`` and ``clip_value``.

torch's equivalent (``GradScaler.unscale_``, ``clip_grad_norm_``, ``optimizer.step``) reads
the gradients three times and writes them twice before the update reads them again.

With :math:`g` the gradients as given, :math:`\hat g = g / S` (unscaling),
:math:`\|\hat g\|` their global norm (2-norm or max-norm over all parameters together, as
``torch.nn.utils.clip_grad_norm_`` computes it) and :math:`c` = ``max_norm``:

.. math::

    \text{clip\_coef} = \min\!\left(1, \frac{c}{\|\hat g\| + 10^{-6}}\right) \qquad
    g_{\text{used}} = \operatorname{clamp}\!\left(\text{clip\_coef}\cdot\hat g,\
        -\text{clip\_value},\ \text{clip\_value}\right)

that is unscale, then clip by norm, then clip by value (optax:
``chain(clip_by_global_norm(c), clip(v))`` except for torch's :math:`10^{-6}`). Clipping by
value is element-wise, so it lives in every rule's kernel: two comparisons on the scaled
gradient, free in a memory-bound loop. In the read pass it would have to write the gradients
back (a third pass, and the caller's gradients changed).

Non-finite gradients follow the optimizer's ``nonfinite`` policy:

``"propagate"`` (default)
    No check; NaN and Inf flow into the parameters, as in torch.optim without a GradScaler.
    With clipping on, the norm is NaN or Inf and the coefficient follows torch's arithmetic.
``"skip"``
    The step is skipped: parameters, every state array and the step counts stay bit-identical
    (the behavior of ``torch.amp.GradScaler.step``). :attr:`StepStats.applied` is False.
``"raise"``
    ``FloatingPointError`` naming the parameter and the flat index of its first non-finite
    element; nothing is modified.

Precision: the 2-norm accumulates squares in float64 for float32 and float64 gradients alike
(torch accumulates float32 gradients in float32), in fixed blocks of ``2**14`` elements whose
partial sums are added exactly (``math.fsum``): the norm is the same to the last bit whatever
the number of threads, and within a few float64 ulps of the exact value. The max-norm is exact.
An optimizer stepping a :class:`~fastopt.FlatParams` reads its gradient buffer in one launch
over blocks cut from each parameter's segment (:class:`FlatGradients`): the same blocks as
separate arrays, so flat and per-array steps give the same bits.
float64 gradients whose squares overflow (:math:`|g| > 10^{154}`) are summed again with
scaling on the host, so the norm stays finite when it is.

Examples
--------
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.SGD(w, lr=1.0, max_norm=1.0, nonfinite="skip")
>>> opt.step(np.array([3.0, 4.0]) * 8, loss_scale=8.0)  # unscaled norm 5: clipped to 1
>>> w.round(6), opt.last_step.grad_norm
(array([-0.6, -0.8]), 5.0)
>>> opt.step(np.array([np.nan, 0.0]))  # skipped: nothing changes, no step is counted
>>> opt.last_step.applied, opt.step_count, w.round(6)
(False, 1, array([-0.6, -0.8]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypedDict

import numpy as np

from fastopt._checks import PARAM_DTYPES, check_choice, check_real
from fastopt._reduce import (
    BLOCK,
    block_count,
    block_max_abs_bits,
    block_sums_of_squares,
    block_table,
    magnitude_bits,
    table_sums_of_squares,
)

__all__ = [
    "GRADIENT_OPTIONS",
    "NONFINITE_POLICIES",
    "PLAIN_STEP",
    "FlatGradients",
    "GradientOptions",
    "NonfiniteGradientError",
    "NonfinitePolicy",
    "Prestep",
    "StepStats",
    "check_gradient_options",
    "check_loss_scale",
    "find_nonfinite",
    "global_norm",
    "kernel_gradient_terms",
    "prestep",
    "step_outcome",
]

#: The values of an optimizer's ``nonfinite`` option (the policies above).
NonfinitePolicy: TypeAlias = Literal["propagate", "skip", "raise"]
#: The same values as a tuple, for validation.
NONFINITE_POLICIES: tuple[str, ...] = ("propagate", "skip", "raise")

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
_NORM_EPSILON = 1e-6


class GradientOptions(TypedDict, total=False):
    """The gradient options of an optimizer, as keyword arguments (see
    :class:`~fastopt.Optimizer`); the rule classes pass them on unchanged."""

    nonfinite: NonfinitePolicy
    max_norm: float | None
    norm_type: float
    clip_value: float | None


#: The names of the gradient options, the keywords :class:`GradientOptions` describes.
GRADIENT_OPTIONS: frozenset[str] = (
    GradientOptions.__required_keys__ | GradientOptions.__optional_keys__
)


@dataclass(frozen=True)
class StepStats:
    """What the read pass of a step found.

    Attributes
    ----------
    grad_norm : float or None
        Global norm (of the optimizer's ``norm_type``) of the unscaled gradients before
        clipping; NaN or Inf when they are not finite. ``None`` when no read pass ran
        (``nonfinite="propagate"`` and no ``max_norm``).
    clip_coef : float
        The factor clipping by norm applied (1.0 when it did not clip).
    finite : bool or None
        Whether every gradient element was finite; ``None`` when not checked.
    applied : bool
        False when the step was skipped (``nonfinite="skip"`` and a non-finite gradient).
    """

    grad_norm: float | None
    clip_coef: float
    finite: bool | None
    applied: bool


class NonfiniteGradientError(FloatingPointError):
    """A step with ``nonfinite="raise"`` met a NaN or Inf gradient; nothing was changed.

    Attributes
    ----------
    stats : StepStats
        What the read pass found (``finite`` and ``applied`` False); the optimizer's
        ``last_step`` is set to it too.
    """

    def __init__(self, message: str, stats: StepStats) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass(frozen=True)
class Prestep:
    """The outcome of the read pass: the kernel's gradient scalars and the statistics."""

    grad_scale: float
    clip_value: float
    stats: StepStats


@dataclass(frozen=True)
class FlatGradients:
    """Gradients that are segments of one buffer (a :class:`~fastopt.FlatParams`' buffer).

    The 2-norm reads all of them in one launch over a table of blocks cut from each segment
    on its own: the same blocks, hence the same bits, as the arrays passed separately.

    Attributes
    ----------
    buffer : ndarray
        The 1-D gradient buffer.
    views : tuple of ndarray
        The 1-D gradient of each parameter read, a view of ``buffer``.
    params : tuple of int
        The optimizer's index of each parameter in ``views``.
    offsets : ndarray
        Where each view starts in ``buffer``.
    blocks : tuple of ndarray
        ``(starts, stops, view)`` per block, from :func:`fastopt._reduce.block_table`.
    """

    buffer: np.ndarray
    views: tuple[np.ndarray, ...]
    params: tuple[int, ...]
    offsets: np.ndarray
    blocks: tuple[np.ndarray, ...]

    @classmethod
    def of(
        cls, buffer: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, params: Sequence[int]
    ) -> FlatGradients:
        """The segments ``[offsets[i], offsets[i] + sizes[i])`` of ``buffer``, parameter
        ``params[i]`` each."""
        offsets = np.asarray(offsets, dtype=np.int64)
        sizes = np.asarray(sizes, dtype=np.int64)
        views = tuple(buffer[lo : lo + n] for lo, n in zip(offsets.tolist(), sizes.tolist()))
        table = block_table(offsets, sizes)
        return cls(buffer, views, tuple(int(p) for p in params), offsets, table)


#: The outcome of a step with every gradient option off: no read pass, nothing to scale.
PLAIN_STEP = Prestep(1.0, math.inf, StepStats(None, 1.0, None, True))


def _check_norm_type(norm_type: object) -> float:
    if isinstance(norm_type, str):
        if norm_type == "inf":
            return math.inf
        raise TypeError(
            f"norm_type must be a real number (2.0 or math.inf) or the str 'inf', got {norm_type!r}"
        )
    value = check_real("norm_type", norm_type)
    if value not in (2.0, math.inf):
        raise ValueError(f"Invalid norm_type: {norm_type!r} (must be 2.0, math.inf or 'inf')")
    return value


def check_gradient_options(
    nonfinite: object, max_norm: object, norm_type: object, clip_value: object
) -> tuple[NonfinitePolicy, float | None, float, float | None]:
    """Validate the gradient options of an optimizer; return them normalized.

    Raises
    ------
    TypeError
        If an option has the wrong type.
    ValueError
        If ``nonfinite`` is not a policy, ``max_norm`` or ``clip_value`` is negative or NaN
        (``math.inf`` is allowed: it reports the norm without clipping), or ``norm_type`` is
        neither 2 nor inf.
    """
    nonfinite = check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
    checked = []
    for name, value in (("max_norm", max_norm), ("clip_value", clip_value)):
        if value is not None:
            value = check_real(name, value)
            if not value >= 0.0:
                raise ValueError(f"Invalid {name}: {value} (must be >= 0)")
        checked.append(value)
    return nonfinite, checked[0], _check_norm_type(norm_type), checked[1]  # type: ignore[return-value]


def check_loss_scale(loss_scale: object) -> float:
    """A finite loss scale ``> 0``."""
    value = check_real("loss_scale", loss_scale)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"Invalid loss_scale: {value} (must be finite and > 0)")
    return value


def kernel_gradient_terms(loss_scale: object, clip_value: object) -> tuple[float, float]:
    """A functional step's ``(grad_scale, clip_value)`` kernel entries, validated.

    The kernel multiplies the gradient by ``1 / loss_scale``, then clamps it to
    ``[-clip_value, clip_value]`` (``inf`` when ``clip_value`` is None), as an optimizer's
    step with the same options does.
    """
    scale = check_loss_scale(loss_scale)
    clip = check_gradient_options("propagate", None, 2.0, clip_value)[3]
    return 1.0 / scale, math.inf if clip is None else clip


def _flat(grads: Sequence[np.ndarray | None]) -> list[tuple[int, np.ndarray]]:
    return [(index, grad.reshape(-1)) for index, grad in enumerate(grads) if grad is not None]


def _first_nonfinite_in_block(flat: np.ndarray, block: int) -> int:
    lo = block * BLOCK
    return lo + int(np.argmin(np.isfinite(flat[lo : lo + BLOCK])))


def _scaled_two_norm(flats: Sequence[np.ndarray]) -> float:
    # Only when squares overflow float64 (finite |g| > 1e154): divide by the largest
    # magnitude first. Slow and single-threaded, but deterministic, and never on a normal step.
    largest = max(float(np.max(np.abs(flat), initial=0.0)) for flat in flats)
    total = math.fsum(float(np.sum(np.square(flat / largest))) for flat in flats)
    return largest * math.sqrt(total)


def _survey(
    grads: Sequence[np.ndarray | None] | FlatGradients, norm_type: float
) -> tuple[float, tuple[int, int] | None]:
    """One read pass: the global norm and the first non-finite element, as (parameter index,
    flat position in it); parameters are numbered by position in ``grads`` or by
    :attr:`FlatGradients.params`."""
    if isinstance(grads, FlatGradients):
        flats = list(zip(grads.params, grads.views, strict=True))
    else:
        flats = _flat(grads)
    first_bad: tuple[int, int] | None = None
    if norm_type == math.inf:
        maxima = []
        for index, flat in flats:
            bits, _, infinity = magnitude_bits(flat.dtype)
            out = np.empty(block_count(flat.size), dtype=bits)
            block_max_abs_bits(flat, out)
            if out.size:
                largest_bits = out.max()
                maxima.append(float(largest_bits.view(flat.dtype)))
                if largest_bits >= infinity:
                    position = _first_nonfinite_in_block(flat, int(np.argmax(out >= infinity)))
                    first_bad = min(first_bad or (index, position), (index, position))  # type: ignore[type-var]
        # NaN patterns sort above every number within an array; across arrays NaN wins too.
        if any(math.isnan(value) for value in maxima):
            return math.nan, first_bad
        return max(maxima, default=0.0), first_bad
    if isinstance(grads, FlatGradients):
        starts, stops, view_of_block = grads.blocks
        partials = np.empty(starts.size)
        table_sums_of_squares(grads.buffer, starts, stops, partials)
    else:
        counts = [block_count(flat.size) for _, flat in flats]
        view_of_block = np.repeat(np.arange(len(flats)), counts)
        partials = np.empty(view_of_block.size)
        lo = 0
        for (_, flat), count in zip(flats, counts, strict=True):
            block_sums_of_squares(flat, partials[lo : lo + count])
            lo += count
    values = partials.tolist()
    try:
        # Exactly rounded, hence independent of the order of the partial sums.
        total = math.fsum(values)
    except OverflowError:  # finite partial sums beyond float64 (float64 gradients)
        total = math.inf
    if math.isfinite(total):
        return math.sqrt(total), None
    # Rare path. A non-finite partial sum means a NaN or Inf element, or (float64 only)
    # squares beyond the float64 range: only a rescan of those arrays can tell.
    for view in np.unique(view_of_block[~np.isfinite(partials)]).tolist():
        index, flat = flats[view]
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:
            position = (index, int(bad[0]))
            first_bad = position if first_bad is None else min(first_bad, position)
    if first_bad is not None:
        return (math.nan if any(map(math.isnan, values)) else math.inf), first_bad
    return _scaled_two_norm([flat for _, flat in flats]), None


def global_norm(grads: Sequence[np.ndarray | None], norm_type: float | str = 2.0) -> float:
    """The norm of all gradients taken together, as ``torch.nn.utils.clip_grad_norm_`` returns.

    Parameters
    ----------
    grads
        1-D or N-D C-contiguous float32/float64 arrays (``None`` entries are ignored).
    norm_type
        2.0 (Euclidean) or ``math.inf`` / ``"inf"`` (largest magnitude).

    Returns
    -------
    float
        NaN if any element is NaN, Inf if any is infinite; accumulated in float64 with a
        fixed block order, bit-identical whatever the number of threads.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.gradients import global_norm
    >>> global_norm([np.array([3.0]), np.array([[4.0]])])
    5.0
    """
    _check_arrays(grads)
    return _survey(grads, _check_norm_type(norm_type))[0]


def find_nonfinite(grads: Sequence[np.ndarray | None]) -> tuple[int, int] | None:
    """``(array index, flat element index)`` of the first NaN or Inf, or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt.gradients import find_nonfinite
    >>> find_nonfinite([np.zeros(3), np.array([1.0, np.inf])])
    (1, 1)
    """
    _check_arrays(grads)
    return _survey(grads, 2.0)[1]


def _check_arrays(grads: object) -> None:
    if isinstance(grads, np.ndarray) or not isinstance(grads, Sequence):
        raise TypeError(f"grads must be a list of ndarrays, got {type(grads).__name__}")
    for index, grad in enumerate(grads):
        if grad is None:
            continue
        if not isinstance(grad, np.ndarray):
            raise TypeError(f"grads[{index}] must be a numpy.ndarray, got {type(grad).__name__}")
        if grad.dtype not in PARAM_DTYPES:
            raise TypeError(
                f"grads[{index}] must have dtype float32, float64, bfloat16 or float16, got "
                f"{grad.dtype}"
            )
        if not grad.flags.c_contiguous:
            raise ValueError(f"grads[{index}] must be C-contiguous (use numpy.ascontiguousarray)")


def prestep(
    grads: Sequence[np.ndarray | None] | FlatGradients,
    *,
    loss_scale: float,
    nonfinite: NonfinitePolicy,
    max_norm: float | None,
    norm_type: float,
    clip_value: float | None,
    gradient_factor: float = 1.0,
) -> Prestep:
    """The read pass of a step over validated gradients (options already checked).

    Parameters
    ----------
    grads
        One gradient per parameter (``None``: not updated), or a :class:`FlatGradients`.
    gradient_factor
        A multiplier the caller applies to the gradients itself (a FlatParams' mean over
        micro-batches): counted in the norm, not included in the returned ``grad_scale``.

    Raises
    ------
    NonfiniteGradientError
        With ``nonfinite="raise"``, naming the first non-finite element.
    """
    kernel_clip = math.inf if clip_value is None else clip_value
    if nonfinite == "propagate" and max_norm is None:
        return Prestep(1.0 / loss_scale, kernel_clip, PLAIN_STEP.stats)
    if not isinstance(grads, FlatGradients) and not all(
        grad is None or isinstance(grad, np.ndarray) for grad in grads
    ):
        raise TypeError(
            "max_norm and nonfinite='skip'/'raise' read the gradients on the host: they need "
            "NumPy arrays. Device arrays take loss_scale and clip_value, which the update "
            "kernel applies."
        )
    norm, first_bad = _survey(grads, norm_type)
    where = None
    if first_bad is not None:
        index, position = first_bad
        if isinstance(grads, FlatGradients):
            value = grads.views[grads.params.index(index)][position]
        else:
            value = grads[index].reshape(-1)[position]  # type: ignore[union-attr]
        where = f"grads[{index}] is not finite at flat index {position} (value {value})"
    return step_outcome(
        norm * gradient_factor,
        where,
        loss_scale=loss_scale,
        nonfinite=nonfinite,
        max_norm=max_norm,
        clip_value=clip_value,
    )


def step_outcome(
    norm: float,
    nonfinite_element: str | None,
    *,
    loss_scale: float,
    nonfinite: NonfinitePolicy,
    max_norm: float | None,
    clip_value: float | None,
) -> Prestep:
    """What a step does once its read pass is done (also when the pass was split across
    processes, see :mod:`fastopt.distributed`).

    Parameters
    ----------
    norm
        The global norm of the gradients as given (still multiplied by ``loss_scale``).
    nonfinite_element
        None when every element was finite, else where the first non-finite one is (for the
        ``"raise"`` message).

    Raises
    ------
    NonfiniteGradientError
        With ``nonfinite="raise"`` and a non-finite element.
    """
    kernel_clip = math.inf if clip_value is None else clip_value
    norm = norm / loss_scale
    if nonfinite_element is not None:
        if nonfinite == "raise":
            raise NonfiniteGradientError(
                f"{nonfinite_element}; nothing was updated (nonfinite='raise')",
                StepStats(norm, 1.0, False, False),
            )
        if nonfinite == "skip":
            return Prestep(0.0, kernel_clip, StepStats(norm, 1.0, False, False))
    clip_coef = 1.0
    if max_norm is not None:
        # torch's arithmetic, NaN included: a NaN norm gives a NaN coefficient.
        clip_coef = max_norm / (norm + _NORM_EPSILON)
        clip_coef = clip_coef if not clip_coef > 1.0 else 1.0
    return Prestep(
        clip_coef / loss_scale,
        kernel_clip,
        StepStats(norm, clip_coef, nonfinite_element is None, True),
    )
