r"""Optimizer state sharded across processes (ZeRO stage 1) over MPI.

In data-parallel training every process holds the whole model and computes gradients on its
own batch. :class:`ZeroRedundancyOptimizer` makes each of the ``world`` processes (*ranks*)
hold only ``1 / world`` of the optimizer state and step only that share of the parameters
(Rajbhandari et al., 2020, stage 1). One step on every rank:

1. **Reduce-scatter.** The gradients are copied into one flat buffer, padded to a multiple of
   the world size, and summed across ranks with ``MPI.Reduce_scatter_block``: each rank
   receives the sum over its shard only. The mean (:math:`1/\text{world}`) is folded into the
   kernel's gradient scale, not a pass of its own.
2. **Read pass, agreed.** The gradient options (``max_norm``, ``nonfinite``) need the norm of
   the summed gradients over all ranks: each rank surveys its shard and one ``allgather`` of a
   few scalars combines them (with whether any rank's gradients were invalid, so that a bad
   gradient raises on every rank and nothing is written anywhere).
3. **Step.** The local optimizer (:attr:`~ZeroRedundancyOptimizer.optim`, any fastopt rule)
   steps the pieces of the parameters in the shard with its fused kernel, parameter groups
   and schedules included.
4. **All-gather.** Each rank's updated shard goes to every rank (``MPI.Allgather``, in the
   parameters' dtype: bfloat16 parameters as their bits), and into the parameter arrays.

The bytes each rank sends per step are those of an all-reduce of the gradients (the
reduce-scatter and the all-gather each move :math:`(\text{world}-1)/\text{world}` of the
parameters), and the optimizer state per rank is :math:`1/\text{world}` of a single process's
(the shards are equal up to a multiple of 16 elements).

Rules whose update reads a whole tensor (LAMB's and LARS's per-tensor norms, Muon's
orthogonalized matrices) shard by whole parameters instead: each parameter is stepped by one
rank (as ``torch.distributed.optim.ZeroRedundancyOptimizer`` does for every rule), runs of
consecutive parameters whose largest is as small as their sizes allow; the collectives are then
``Reduce_scatter`` and ``Allgatherv`` with each rank's count (no padding). With 16-bit
parameters the gradients travel as float32 and the parameters in their 16 bits.

The agreement covers what a step, the construction, ``state_dict`` and ``load_state_dict``
check; an error after it (memory running out while a state array is made) still leaves the
other ranks in the next collective, as in any MPI program. Checkpoints need a file system
every rank sees.

MPI comes from ``mpi4py`` (``pip install "fastopt[mpi]"`` installs it with the ``mpich``
wheel); run the script under ``mpiexec -n 4 python train.py``. For torch, the fastopt.torch
optimizers serve as the ``optimizer_class`` of ``torch.distributed.optim.ZeroRedundancyOptimizer``.
"""

from __future__ import annotations

import builtins
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastopt._backend import HOST, is_device_array
from fastopt._checks import LOW_PRECISION_DTYPES, check_bool, check_grad, check_param, plural
from fastopt._shards import Piece, ShardLayout, assemble, shard_layout, slice_entry
from fastopt._state_dict import read_state_dict
from fastopt.checkpoint import SHARD_INDEX, load_shards, shard_name, write_checkpoint
from fastopt.gradients import (
    PLAIN_STEP,
    NonfiniteGradientError,
    NonfinitePolicy,
    Prestep,
    StepStats,
    _survey,
    check_gradient_options,
    check_loss_scale,
    step_outcome,
)
from fastopt.optimizer import (
    GradsT,
    Optimizer,
    ParamsT,
    _as_groups,
    _is_fixed,
    _overlapping_pair,
)

__all__ = ["SHARD_INDEX", "ZeroRedundancyOptimizer", "load_shards", "save_collectively"]


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            'fastopt.distributed needs mpi4py: pip install "fastopt[mpi]" (mpi4py with the '
            "mpich wheel), or mpi4py built against your cluster's MPI"
        ) from error
    return MPI


# What the optimizer calls on its communicator.
_COLLECTIVES = (
    "Get_rank",
    "Get_size",
    "allgather",
    "gather",
    "bcast",
    "Reduce_scatter_block",
    "Reduce_scatter",
    "Allgather",
    "Allgatherv",
)


def _needs_whole_tensors(optimizer_class: type[Optimizer], quantized: bool = False) -> bool:
    """Whether a rule reads whole tensors in its update (norms, matrix steps), or its state
    is quantized in blocks of each whole parameter (``state_dtype="int8"``): its shards then
    hold whole parameters. Rules not declared with :class:`fastopt.rule.Rule` too."""
    rule = getattr(optimizer_class, "_rule", None)
    return quantized or rule is None or rule.norms is not None or rule.matrix is not None


def _described(error: BaseException | None) -> tuple[str, str] | None:
    return None if error is None else (type(error).__name__, str(error))


def _raise_agreed(
    failure: BaseException | None, reports: Sequence[tuple[str, str] | None], what: str
) -> None:
    """Raise on every rank if one failed: a rank's own error as it is, the others' naming
    the first rank that failed."""
    if failure is not None:
        raise failure
    for rank, report in enumerate(reports):
        if report is not None:
            kind = getattr(builtins, report[0], None)
            if not (
                isinstance(kind, type) and issubclass(kind, (TypeError, OSError, RuntimeError))
            ):
                kind = ValueError
            raise kind(f"rank {rank} could not {what}: {report[1]}")


def _combined_norm(norms: Sequence[float], norm_type: float) -> float:
    """The global norm from each rank's norm of its shard."""
    if any(math.isnan(n) for n in norms):
        return math.nan
    largest = max(norms, default=0.0)
    if norm_type == math.inf or largest in (0.0, math.inf):
        return largest
    return largest * math.sqrt(math.fsum((n / largest) ** 2 for n in norms))


def _signature(groups: Sequence[Mapping[str, Any]], dtype: np.dtype, name: str) -> tuple:
    """What every rank must agree on: the rule, the dtype, each group's shapes and its
    hyperparameters' values (a scheduled one's at the current step: the schedules themselves
    cannot be compared across processes)."""
    return (
        name,
        str(dtype),
        tuple(
            (
                tuple(tuple(p.shape) for p in group["params"]),
                tuple(
                    (key, repr(value) if _is_fixed(value) else "schedule")
                    for key, value in sorted(group.items())
                    if key not in ("params", "schedules")
                ),
            )
            for group in groups
        ),
    )


class ZeroRedundancyOptimizer:
    r"""Any fastopt rule with its state sharded across MPI ranks (ZeRO stage 1).

    Every rank builds it with the same parameters (shapes, dtype, groups, hyperparameters)
    and calls :meth:`step` with its local gradients: the parameters then hold the rule's
    update from the *mean* gradient over the ranks, on every rank, as a single process
    stepping on the averaged gradient would.

    Parameters
    ----------
    params
        The full parameters, in any form a fastopt optimizer takes (arrays or parameter-group
        dicts); NumPy arrays of one dtype (float32, float64, bfloat16 or float16).
    optimizer_class
        The rule, a fastopt optimizer class (``fastopt.Adam``, ...).
    comm : mpi4py.MPI.Intracomm, optional
        The ranks that share the work (default ``MPI.COMM_WORLD``).
    nonfinite, max_norm, norm_type
        The gradient options (see :class:`~fastopt.Optimizer`), applied to the mean gradient
        over all ranks: the norm is global, and a NaN on any rank skips (or raises on) every
        rank.
    **defaults
        The rule's hyperparameters and the remaining options (``clip_value``, ``seed``,
        the precision options), passed to ``optimizer_class``.

    Attributes
    ----------
    optim : Optimizer
        The local optimizer over this rank's pieces of the parameters (1-D views of them, or
        whole parameters for the rules that need them): ``optim.state`` holds this shard's
        state only.
    layout : fastopt._shards.ShardLayout
        Where each parameter sits in the flat buffers and the shard size.
    comm, rank, world
        The communicator, this rank and the number of ranks.
    last_step : StepStats or None
        What the last step's read pass found (global over the ranks).

    Raises
    ------
    TypeError, ValueError
        On every rank, if any rank's arguments are invalid or the ranks' parameters or
        hyperparameters disagree.

    Notes
    -----
    Every method but the properties is collective: all ranks call it, in the same order.
    Parameter groups are fixed at construction; their hyperparameters may be edited between
    steps in :attr:`param_groups` (on every rank alike). The gradients pass through a flat
    buffer of the parameters' size (float32 for 16-bit parameters) and the parameters through
    another one, on every rank.

    Examples
    --------
    A script run with ``mpiexec -n 2 python train.py`` (with one rank, as here, it is a
    plain optimizer):

    >>> import numpy as np, fastopt
    >>> from fastopt.distributed import ZeroRedundancyOptimizer
    >>> w = np.zeros(5)
    >>> opt = ZeroRedundancyOptimizer([w], fastopt.SGD, lr=0.5)
    >>> opt.step([np.ones(5)])
    >>> w
    array([-0.5, -0.5, -0.5, -0.5, -0.5])
    """

    def __init__(
        self,
        params: ParamsT,
        optimizer_class: type[Optimizer],
        comm: Any = None,
        *,
        nonfinite: NonfinitePolicy = "propagate",
        max_norm: float | None = None,
        norm_type: float = 2.0,
        **defaults: Any,
    ) -> None:
        self.comm = _mpi().COMM_WORLD if comm is None else comm
        missing = [name for name in _COLLECTIVES if not callable(getattr(comm, name, None))]
        if comm is not None and missing:
            raise TypeError(
                "comm must be an mpi4py intracommunicator (MPI.COMM_WORLD, or one split from "
                f"it), got {type(comm).__name__} (no {missing[0]})"
            )
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()
        self.last_step: StepStats | None = None
        failure, signature = None, None
        try:
            self._build(params, optimizer_class, nonfinite, max_norm, norm_type, defaults)
            self._build_local(optimizer_class, defaults)
            signature = (
                _signature(self.param_groups, self.dtype, optimizer_class.__name__),
                repr((self.nonfinite, self.max_norm, self.norm_type)),
            )
        except (TypeError, ValueError) as error:
            failure = error
        reports = self.comm.allgather((_described(failure), signature))
        _raise_agreed(failure, [report for report, _ in reports], "build its optimizer")
        for rank, (_, theirs) in enumerate(reports):
            if theirs != signature:
                raise ValueError(
                    f"rank {rank} built its optimizer with other parameters or hyperparameters "
                    f"than rank {self.rank}: every rank must pass the same (shapes, dtype, "
                    "groups and values)"
                )

    # ------------------------------------------------------------------ construction
    def _build(
        self,
        params: ParamsT,
        optimizer_class: type[Optimizer],
        nonfinite: object,
        max_norm: object,
        norm_type: object,
        defaults: Mapping[str, Any],
    ) -> None:
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(
                "optimizer_class must be a fastopt optimizer class (fastopt.Adam, ...), got "
                f"{optimizer_class!r}"
            )
        options = check_gradient_options(nonfinite, max_norm, norm_type, None)
        self.nonfinite, self.max_norm, self.norm_type = options[:3]
        self._groups = _as_groups(params)
        self._params: list[np.ndarray] = []
        for number, group in enumerate(self._groups):
            arrays = group.get("params")
            arrays = [arrays] if isinstance(arrays, np.ndarray) else list(arrays or ())
            if not arrays:
                raise ValueError(f"param_groups[{number}] has no parameters")
            for i, array in enumerate(arrays):
                name = f"param_groups[{number}]['params'][{i}]"
                if is_device_array(array):
                    raise TypeError(
                        f"{name} is a device array: ZeroRedundancyOptimizer takes NumPy"
                    )
                check_param(name, array)
            group["params"] = arrays
            self._params.extend(arrays)
        dtypes = {p.dtype for p in self._params}
        if len(dtypes) > 1:
            raise TypeError(
                "the parameters must share one dtype (one flat buffer), got "
                f"{sorted(map(str, dtypes))}"
            )
        overlap = _overlapping_pair(self._params, HOST)
        if overlap is not None:
            raise ValueError(
                "a parameter appears twice (or two parameters share memory): positions "
                f"{overlap[0]} and {overlap[1]} of the parameter list"
            )
        self.dtype = self._params[0].dtype
        quantized = any(
            group.get("state_dtype", defaults.get("state_dtype")) == "int8"
            for group in self._groups
        )
        self._whole = _needs_whole_tensors(optimizer_class, quantized)
        self.layout: ShardLayout = shard_layout(
            [p.size for p in self._params], self.world, whole=self._whole
        )
        self._class = optimizer_class

    def _build_local(self, optimizer_class: type[Optimizer], defaults: dict[str, Any]) -> None:
        whole = self._whole
        grad_dtype = np.dtype(np.float32) if self.dtype in LOW_PRECISION_DTYPES else self.dtype
        layout, start = self.layout, self.layout.bounds[self.rank]
        self._grad_buffer = np.zeros(layout.total, grad_dtype)
        self._grad_shard = np.zeros(layout.counts[self.rank], grad_dtype)
        self._param_buffer = np.zeros(layout.total, self.dtype)
        self._pieces = layout.pieces(self.rank)
        self._elsewhere = layout.elsewhere(self.rank)
        by_param = {piece.param: piece for piece in self._pieces}
        # Local position -> (global parameter, piece), None for a group's stand-in.
        self._local: list[tuple[int, Piece] | None] = []
        self._local_grads: list[np.ndarray] = []
        local_groups, first = [], 0
        for group in self._groups:
            arrays = []
            for index in range(first, first + len(group["params"])):
                piece = by_param.get(index)
                if piece is None:
                    continue
                param = self._params[index]
                offset = layout.offsets[index] + piece.start - start
                grad = self._grad_shard[offset : offset + piece.stop - piece.start]
                if whole:
                    arrays.append(param)
                    grad = grad.reshape(param.shape)
                else:
                    arrays.append(param.reshape(-1)[piece.start : piece.stop])
                self._local.append((index, piece))
                self._local_grads.append(grad)
            if not arrays:  # no piece of this group here: an empty stand-in keeps the groups
                empty = (0,) * (optimizer_class._param_ndim or 1)
                arrays.append(np.empty(empty, self.dtype))
                self._local.append(None)
                self._local_grads.append(np.empty(empty, grad_dtype))
            first += len(group["params"])
            local_groups.append({**group, "params": arrays})
        self.optim = optimizer_class(local_groups, **defaults)
        # Each piece its own random stream (stochastic rounding), the same for every rerun at
        # this world size; with one rank, the parameters' positions, as one process keys them.
        self.optim._rounding_ids = [
            0 if where is None else where[0] * self.world + self.rank for where in self._local
        ]
        self._defaults = defaults
        # The groups as users see them: the full parameters, the local groups' values.
        self.param_groups: list[dict[str, Any]] = [
            {**local, "params": group["params"]}
            for group, local in zip(self._groups, self.optim.param_groups, strict=True)
        ]

    # ------------------------------------------------------------------ properties
    @property
    def params(self) -> list[np.ndarray]:
        """All parameters, in the order :meth:`step` expects their gradients."""
        return list(self._params)

    @property
    def rule(self) -> str:
        """The rule's class name (what a checkpoint records)."""
        return self._class.__name__

    @property
    def state(self) -> dict[int, dict[str, Any]]:
        """This rank's state: the local optimizer's, keyed by its local positions."""
        return self.optim.state

    @property
    def step_count(self) -> int:
        """Number of completed steps."""
        return self.optim.step_count

    @property
    def clip_value(self) -> float | None:
        """The local optimizer's element-wise clamp (see :class:`~fastopt.Optimizer`)."""
        return self.optim.clip_value

    @clip_value.setter
    def clip_value(self, value: float | None) -> None:
        self.optim.clip_value = value

    def state_nbytes(self) -> int:
        """Bytes of state arrays this rank holds."""
        return sum(
            value.nbytes
            for entry in self.optim.state.values()
            for value in entry.values()
            if isinstance(value, np.ndarray)
        )

    # ------------------------------------------------------------------ step
    def step(
        self,
        grads: GradsT,
        *,
        loss_scale: float = 1.0,
        nonfinite: NonfinitePolicy | None = None,
    ) -> None:
        """Update the parameters from the mean of every rank's gradients (collective).

        Parameters
        ----------
        grads
            This rank's gradients, one per parameter in the order of :attr:`params` (an
            ndarray for a single parameter); ``None`` skips a parameter, on every rank alike.
            Of the parameter's dtype, or float32 for 16-bit parameters.
        loss_scale
            The factor the loss was multiplied by (see :meth:`fastopt.Optimizer.step`).
        nonfinite
            Overrides the ``nonfinite`` policy for this step.

        Raises
        ------
        TypeError, ValueError
            On every rank, if any rank's gradients or options are invalid; nothing changed.
        NonfiniteGradientError
            With the ``"raise"`` policy and a NaN or Inf in the summed gradients, on every
            rank; nothing changed.
        """
        optim = self.optim
        failure, skipped, survey, options, settings = None, b"", None, None, ""
        try:
            if optim._ready_check is not None:
                optim._ready_check(optim.param_groups)
            self._sync_to_local()
            optim._refresh_hyperparameters()  # edited values checked before anything moves
            if not self._whole and any(g["state_dtype"] == "int8" for g in optim.param_groups):
                raise ValueError(
                    "state_dtype='int8' quantizes each parameter in blocks of its own: shards "
                    "then hold whole parameters, so give it when the optimizer is made"
                )
            paired = self._pair_grads(grads)
            scale = check_loss_scale(loss_scale)
            policy = self.nonfinite if nonfinite is None else nonfinite
            options = check_gradient_options(
                policy, self.max_norm, self.norm_type, optim.clip_value
            )
            skipped = bytes(grad is None for grad in paired)
            settings = repr((scale, options, [optim._hyper_values(g) for g in optim.param_groups]))
            self._pack(paired)
        except (TypeError, ValueError, RuntimeError) as error:
            failure = error
        if self.layout.uniform:
            self.comm.Reduce_scatter_block(self._grad_buffer, self._grad_shard, op=_mpi().SUM)
        else:  # whole parameters: shards of unequal sizes
            self.comm.Reduce_scatter(
                self._grad_buffer, self._grad_shard, self.layout.counts, op=_mpi().SUM
            )
        read = options is not None and (options[0] != "propagate" or options[1] is not None)
        if failure is None and read:
            survey = self._survey(skipped, options[2])
        reports = self.comm.allgather((_described(failure), skipped, settings, survey))
        _raise_agreed(failure, [report[0] for report in reports], "step")
        for column, what in ((1, "on which parameters have a gradient"), (2, "on the options")):
            if any(report[column] != reports[0][column] for report in reports):
                raise ValueError(
                    f"the ranks disagree {what} (loss scale, gradient options, hyperparameters): "
                    "every rank must step alike; nothing was updated"
                    if column == 2
                    else f"the ranks disagree {what} (None): every rank must skip the same "
                    "parameters; nothing was updated"
                )
        assert options is not None
        outcome = self._outcome([r[3] for r in reports] if read else None, scale, options)
        local_grads: list[np.ndarray | None] = [
            None if where is not None and skipped[where[0]] else grad
            for where, grad in zip(self._local, self._local_grads, strict=True)
        ]
        optim._apply(optim._pair_grads(local_grads), outcome)
        self.last_step = outcome.stats
        if outcome.stats.applied:
            self._gather_params()
            self._sync_from_local()

    def _pair_grads(self, grads: GradsT) -> list[np.ndarray | None]:
        count = len(self._params)
        if isinstance(grads, np.ndarray):
            grads = [grads]
        if not isinstance(grads, Sequence) or isinstance(grads, (str, bytes)):
            raise TypeError(f"grads must be an ndarray or a list of them, got {type(grads)}")
        if len(grads) != count:
            raise ValueError(
                f"grads has {plural(len(grads), 'entry', 'entries')}, expected {count} "
                "(one per parameter)"
            )
        return [
            None if grad is None else check_grad(f"grads[{i}]", grad, param, check_aliasing=False)
            for i, (grad, param) in enumerate(zip(grads, self._params, strict=True))
        ]

    def _pack(self, grads: Sequence[np.ndarray | None]) -> None:
        for grad, offset in zip(grads, self.layout.offsets, strict=True):
            if grad is not None:
                np.copyto(self._grad_buffer[offset : offset + grad.size], grad.reshape(-1))

    def _survey(self, skipped: bytes, norm_type: float) -> tuple[float, tuple | None]:
        """This shard's norm and first non-finite element ``(param, index, value)``."""
        read = [
            (where, grad.reshape(-1))
            for where, grad in zip(self._local, self._local_grads, strict=True)
            if where is not None and not skipped[where[0]]
        ]
        norm, first_bad = _survey([grad for _, grad in read], norm_type)
        if first_bad is None:
            return norm, None
        (param, piece), grad = read[first_bad[0]]
        return norm, (param, piece.start + first_bad[1], float(grad[first_bad[1]]))

    def _outcome(
        self,
        surveys: Sequence[tuple[float, tuple | None]] | None,
        loss_scale: float,
        options: tuple[NonfinitePolicy, float | None, float, float | None],
    ) -> Prestep:
        policy, max_norm, norm_type, clip_value = options
        # The sum over the ranks, unscaled and divided by their number: the mean gradient.
        divisor = loss_scale * self.world
        if surveys is None:
            clip = math.inf if clip_value is None else clip_value
            return Prestep(1.0 / divisor, clip, PLAIN_STEP.stats)
        norm = _combined_norm([norm for norm, _ in surveys], norm_type)
        bad = min((b for _, b in surveys if b is not None), default=None)
        where = None
        if bad is not None:
            where = (
                f"grads[{bad[0]}] summed over the {plural(self.world, 'rank')} is not finite "
                f"at flat index {bad[1]} (value {bad[2]})"
            )
        try:
            return step_outcome(
                norm,
                where,
                loss_scale=divisor,
                nonfinite=policy,
                max_norm=max_norm,
                clip_value=clip_value,
            )
        except NonfiniteGradientError as error:
            self.last_step = error.stats
            raise

    def _gather_params(self) -> None:
        """Every rank's shard of the parameters into every rank's parameters."""
        buffer, offsets = self._param_buffer, self.layout.offsets
        for where in self._local:
            if where is not None:
                index, piece = where
                offset = offsets[index]
                flat = self._params[index].reshape(-1)
                buffer[offset + piece.start : offset + piece.stop] = flat[piece.start : piece.stop]
        bits = buffer.view(np.uint16) if self.dtype in LOW_PRECISION_DTYPES else buffer
        if self.layout.uniform:
            self.comm.Allgather(_mpi().IN_PLACE, bits)
        else:
            counts, starts = self.layout.counts, self.layout.bounds[:-1]
            self.comm.Allgatherv(_mpi().IN_PLACE, [bits, (counts, starts)])
        for piece in self._elsewhere:
            offset = offsets[piece.param]
            flat = self._params[piece.param].reshape(-1)
            flat[piece.start : piece.stop] = buffer[offset + piece.start : offset + piece.stop]

    def _sync_to_local(self) -> None:
        """Hyperparameters edited in :attr:`param_groups` into the local groups."""
        for full, local in zip(self.param_groups, self.optim.param_groups, strict=True):
            for key in self.optim.defaults:
                if full[key] is not local[key]:
                    local[key] = full[key]

    def _sync_from_local(self) -> None:
        """What the local step changed in its groups (schedules, per-group state) back."""
        for full, local in zip(self.param_groups, self.optim.param_groups, strict=True):
            full.update((key, local[key]) for key in self.optim.defaults)

    # ------------------------------------------------------------------ modes
    def train(self) -> None:
        """The local optimizer's ``train()`` (Schedule-Free), then the all-gather."""
        self._switch("train")

    def eval(self) -> None:
        """The local optimizer's ``eval()`` (Schedule-Free), then the all-gather."""
        self._switch("eval")

    def _switch(self, mode: str) -> None:
        switch = getattr(self.optim, mode, None)
        if switch is None:
            raise AttributeError(f"{self.rule} has no {mode}() mode")
        self._sync_to_local()
        switch()
        self._gather_params()
        self._sync_from_local()

    # ------------------------------------------------------------------ checkpoints
    def shard_state_dict(self, *, dequantize: bool = False) -> dict[str, Any]:
        """This rank's part of a checkpoint (not collective): its pieces' state entries by
        parameter position, ``"pieces"`` (their ``(start, stop)`` in each parameter), and
        the groups, step count and seed (global parameter positions)."""
        local = self.optim.state_dict(dequantize=dequantize)
        state, pieces = {}, {}
        for position, where in enumerate(self._local):
            if where is None:
                continue
            index, piece = where
            pieces[index] = (piece.start, piece.stop)
            if position in local["state"]:
                state[index] = local["state"][position]
        groups, first = [], 0
        for saved, group in zip(local["param_groups"], self._groups, strict=True):
            count = len(group["params"])
            groups.append({**saved, "params": list(range(first, first + count))})
            first += count
        return {
            "state": state,
            "pieces": pieces,
            "param_groups": groups,
            "step_count": local["step_count"],
            "seed": local["seed"],
        }

    def state_dict(self, *, to: int | None = 0, dequantize: bool = False) -> dict[str, Any] | None:
        """The whole state, as a single-process optimizer's ``state_dict`` (collective; no
        attached objects: this optimizer has no ``attach``).

        Parameters
        ----------
        to
            The rank that receives it (the others get None), or None for every rank.
        dequantize
            As in :meth:`fastopt.Optimizer.state_dict`.
        """
        failure = None
        try:
            check_bool("dequantize", dequantize)
            if to is not None and type(to) is not int:
                raise TypeError(f"to must be an int (a rank) or None, got {type(to).__name__}")
            if to is not None and not 0 <= to < self.world:
                raise ValueError(f"to must be a rank in [0, {self.world}) or None, got {to}")
        except (TypeError, ValueError) as error:
            failure = error
        reports = self.comm.allgather((_described(failure), repr((to, dequantize))))
        _raise_agreed(failure, [report for report, _ in reports], "gather the state")
        if any(theirs != reports[0][1] for _, theirs in reports):
            raise ValueError("the ranks disagree on state_dict's arguments (to, dequantize)")
        mine = self.shard_state_dict(dequantize=dequantize)
        shards = self.comm.allgather(mine) if to is None else self.comm.gather(mine, root=to)
        if shards is None:
            return None
        return self.assembled(shards)

    def assembled(self, shards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """A whole ``state_dict`` from every rank's :meth:`shard_state_dict` (any world)."""
        shapes = [tuple(p.shape) for p in self._params]
        state = assemble([s["state"] for s in shards], [s["pieces"] for s in shards], shapes)
        first = shards[0]
        return {
            "state": state,
            "param_groups": first["param_groups"],
            "step_count": first["step_count"],
            "seed": first["seed"],
            "attached": {},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a whole ``state_dict`` (a single-process optimizer's, or :meth:`state_dict`'s
        of any world size), every rank taking its pieces (collective; every rank passes it).

        Raises
        ------
        TypeError, ValueError
            On every rank, if it does not fit the optimizer on any rank; nothing changed.
        """
        failure, previous = None, None
        try:
            whole = self._class(
                [
                    {**group, "params": g["params"]}
                    for group, g in zip(self.param_groups, self._groups, strict=True)
                ],
                **self._defaults,
            )
            loaded = read_state_dict(whole, state_dict)
            local = self._local_state_dict(loaded)
            previous = self.optim.state_dict()
            self.optim.load_state_dict(local)
        except (TypeError, ValueError) as error:
            failure = error
        reports = self.comm.allgather(_described(failure))
        if failure is None and any(reports):
            self.optim.load_state_dict(previous)
        _raise_agreed(failure, reports, "load the state_dict")
        self._sync_from_local()

    def _local_state_dict(self, loaded: Any) -> dict[str, Any]:
        """This rank's pieces of a checked whole state."""
        whole = self._whole
        state, groups, position = {}, [], 0
        for merged, group in zip(loaded.groups, self.optim.param_groups, strict=True):
            count = len(group["params"])
            saved = {k: v for k, v in merged.items() if k in self.optim.defaults}
            groups.append({**saved, "params": list(range(position, position + count))})
            position += count
        for position, where in enumerate(self._local):
            if where is None or where[0] not in loaded.state:
                continue
            index, piece = where
            shape = tuple(self._params[index].shape) if whole else None
            state[position] = slice_entry(loaded.state[index], piece, shape)
        return {
            "state": state,
            "param_groups": groups,
            "step_count": loaded.step_count,
            "seed": loaded.seed,
        }

    def _save_checkpoint(self, path: str, *, params: bool, extra: Any, sharded: bool) -> None:
        """What :func:`fastopt.save` calls (collective): :func:`save_collectively`."""
        save_collectively(path, self, params=params, extra=extra, sharded=sharded)

    def __repr__(self) -> str:
        return (
            f"ZeroRedundancyOptimizer({self.rule}, rank {self.rank} of {self.world}, "
            f"{plural(len(self.optim.state), 'piece')} of state here)"
        )


# ---------------------------------------------------------------------- checkpoint files
def save_collectively(
    path: str, optimizer: ZeroRedundancyOptimizer, *, params: bool, extra: Any, sharded: bool
) -> None:
    """:func:`fastopt.save` of a :class:`ZeroRedundancyOptimizer` (collective).

    One file: rank 0 gathers the whole state and writes a checkpoint any optimizer of the
    rule loads. ``sharded``: ``path`` is a directory; every rank writes its shard
    (``shard-<token>-<rank>-of-<world>.ckpt``), then rank 0 writes ``index.ckpt`` naming
    them (atomically: until it is replaced, the previous checkpoint's files are intact) and
    removes the files of earlier saves.
    """
    comm, rank = optimizer.comm, optimizer.rank
    values = optimizer.params if params else None
    if not sharded:
        state_dict = optimizer.state_dict(to=0)
        failure = None
        if rank == 0:
            try:
                write_checkpoint(path, optimizer.rule, state_dict, values, extra)  # type: ignore[arg-type]
            except (TypeError, ValueError, OSError) as error:
                failure = error
        _raise_agreed(failure, comm.allgather(_described(failure)), "save")
        return
    failure, token = None, None
    if rank == 0:
        try:
            os.makedirs(path, exist_ok=True)
            token = secrets.token_hex(6)
        except OSError as error:
            failure = error
    token = comm.bcast(token, root=0)
    _raise_agreed(failure, comm.allgather(_described(failure)), "save")
    try:
        mine = optimizer.shard_state_dict()
        mine["shard"] = {
            "rank": rank,
            "world": optimizer.world,
            "token": token,
            "shapes": [list(p.shape) for p in optimizer.params],
            "dtype": str(optimizer.dtype),
        }
        if values is not None:
            mine["param_pieces"] = {
                index: values[index].reshape(-1)[start:stop]
                for index, (start, stop) in mine["pieces"].items()
            }
        name = shard_name(token, rank, optimizer.world)
        write_checkpoint(os.path.join(path, name), optimizer.rule, mine, None, extra)
    except (TypeError, ValueError, OSError) as error:
        failure = error
    _raise_agreed(failure, comm.allgather(_described(failure)), "save its shard")
    if rank == 0:
        try:
            index = {"sharded": {"world": optimizer.world, "token": token}}
            write_checkpoint(os.path.join(path, SHARD_INDEX), optimizer.rule, index, None, None)
            keep = {shard_name(token, r, optimizer.world) for r in range(optimizer.world)}
            for stale in os.listdir(path):
                if stale.startswith("shard-") and stale.endswith(".ckpt") and stale not in keep:
                    os.unlink(os.path.join(path, stale))
        except OSError as error:
            failure = error
    _raise_agreed(failure, comm.allgather(_described(failure)), "save the shards' index")
