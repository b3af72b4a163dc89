r"""The contract of a rule whose update needs per-tensor norms, on a toy rule declared here.

A :class:`fastopt.rule.Norms` adds a read pass before the update: ``measure`` gives, per
element, the values whose L2 norms over each tensor are taken; ``finish`` turns the norms (and
the tensor's number of dimensions) into row fields; the update reads them. The toy rule,
``ToyTrust``, is momentum descent with a LAMB-like trust ratio on tensors of two or more
dimensions:

.. math::

    m &\leftarrow \beta m + (1 - \beta) g \\
    p &\leftarrow p - \eta\, s\, m, \qquad
        s = \frac{\lVert p \rVert + 1}{\lVert m \rVert + \epsilon}
        \text{ (ndim} \ge 2\text{), else } 1

Its NumPy reference takes the norms exactly as the kernels do (float64 squares, fixed blocks
of ``fastopt._reduce.BLOCK`` elements, each summed in ``LANES`` lanes in order), so every
path is checked bit for bit: the NumPy class, the functional step, the FlatParams path (one
read pass per launch, not one per tensor), thread counts, the torch adapter, the CUDA
simulator and checkpoints. Then LAMB's and LARS's own per-tensor behaviour.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from numba.core import config

import fastopt
import fastopt._launch
from fastopt._checks import check_beta, check_nonnegative
from fastopt._declared import PREAMBLE_WIDTH
from fastopt._jit import PARALLEL_THRESHOLD
from fastopt._reduce import BLOCK, LANES
from fastopt.rule import Hyperparameter, Norms, Rule, State, build


def toy_measure(p, g, exp_avg, h):
    """The parameter and the new momentum, whose norms the trust ratio takes."""
    return p, exp_avg * h.decay + h.one_minus_decay * g


def toy_update(p, g, exp_avg, h):
    m = exp_avg * h.decay + h.one_minus_decay * g
    return p + h.neg_step * m, m


def toy_row(group, step, created, scalars):
    return (group["decay"], 1.0 - group["decay"], group["eps"], -group["lr"])


def toy_finish(h, norms, ndim):
    scale = (norms["param"] + 1.0) / (norms["momentum"] + h.eps)
    return (np.where(ndim > 1, h.neg_lr * scale, h.neg_lr),)


RULE = Rule(
    name="ToyTrust",
    update=toy_update,
    fields=("decay", "one_minus_decay", "eps", "neg_lr"),
    row=toy_row,
    norms=Norms(
        measure=toy_measure,
        names=("param", "momentum"),
        fields=("neg_step",),
        finish=toy_finish,
    ),
    hyperparameters=(
        Hyperparameter("lr", 0.01, check_nonnegative, scheduled=True),
        Hyperparameter("decay", 0.9, check_beta),
        Hyperparameter("eps", 1e-3, check_nonnegative),
    ),
    state=(State("exp_avg"),),
    maximize=None,
    counts_steps=False,
    doc="ToyTrust: momentum descent with a per-tensor trust ratio (see the test module).",
)

BUILT = build(RULE)
ToyTrust = BUILT.optimizer
toy_trust_step = BUILT.step
DEFAULTS = {h.name: h.default for h in RULE.hyperparameters}


def exact_norm(x: np.ndarray) -> float:
    """The L2 norm as the kernels take it: float64 squares; blocks of BLOCK elements; in a
    block, lane j sums elements j, j + LANES, ... in order, then the lanes are added in order;
    then the blocks, in order."""
    flat = x.reshape(-1).astype(np.float64)
    total = 0.0
    for lo in range(0, flat.size, BLOCK):
        block = flat[lo : lo + BLOCK]
        padded = np.zeros(-(-block.size // LANES) * LANES)
        padded[: block.size] = block * block
        lanes = np.cumsum(padded.reshape(-1, LANES), axis=0)[-1]  # sequential, per lane
        block_total = 0.0
        for value in lanes.tolist():
            block_total += value
        total += block_total
    return math.sqrt(total)


def reference_step(param, grad, state, group):
    """One ToyTrust update in NumPy, in place (``state``: the optimizer's entry)."""
    dtype = param.dtype.type
    exp_avg = state.setdefault("exp_avg", np.zeros_like(param))
    m = exp_avg * dtype(group["decay"]) + dtype(1.0 - group["decay"]) * grad
    neg_step = -group["lr"]
    if param.ndim > 1:
        neg_step = neg_step * ((exact_norm(param) + 1.0) / (exact_norm(m) + group["eps"]))
    param[...] = param + dtype(neg_step) * m
    exp_avg[...] = m


def assert_same(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), what
    assert actual.tobytes() == expected.tobytes(), what


DTYPES = [np.float32, np.float64]
# Empty, one element, odd, a matrix; several blocks above the parallel threshold, as a vector
# and as a matrix.
SHAPES = [(0,), (1,), (7,), (1, 1), (7, 3), (4 * BLOCK + 5,), (5, 13109)]
STEPS = 3
OPTIONS = {"lr": 0.05, "decay": 0.8}

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)


def problem(shape, dtype, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(shape).astype(dtype)
    return param, [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]


@pytest.fixture
def read_passes(monkeypatch):
    """Counts the read passes (one per launch of a rule with norms)."""
    calls = []
    measure = fastopt._launch.measure_norms

    def counting(norms, bounds, *args):
        calls.append(bounds.size - 1)
        measure(norms, bounds, *args)

    monkeypatch.setattr(fastopt._launch, "measure_norms", counting)
    return calls


# ---------------------------------------------------------------------- the toy rule


@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_class_and_functional_step_match_the_reference(dtype, shape, read_passes):
    param, grads = problem(shape, dtype)
    expected, state = param.copy(), {}
    functional, exp_avg = param.copy(), np.zeros_like(param)
    opt = ToyTrust(param, **OPTIONS)
    for grad in grads:
        opt.step(grad)
        toy_trust_step(functional, grad, exp_avg, **OPTIONS)
        reference_step(expected, grad, state, {**DEFAULTS, **OPTIONS})
    assert_same(param, expected, "param, class")
    assert_same(opt.state[0]["exp_avg"], state["exp_avg"], "exp_avg, class")
    assert_same(functional, expected, "param, functional")
    assert_same(exp_avg, state["exp_avg"], "exp_avg, functional")
    assert read_passes == [1] * (2 * STEPS)
    if len(shape) > 1 and param.size:
        # The trust ratio acted: plain momentum descent would land elsewhere.
        plain, plain_state = problem(shape, dtype)[0], {}
        for grad in grads:
            reference_step(
                plain.reshape(-1), grad.reshape(-1), plain_state, {**DEFAULTS, **OPTIONS}
            )
        assert not np.array_equal(plain.reshape(shape), param)


def run_flat(dtype, shapes, *, threads=None):
    """Two groups (different lr) over one FlatParams, stepped without grads."""
    flat = fastopt.FlatParams(shapes, dtype=dtype)
    params, grads = zip(*(problem(shape, dtype, seed=k) for k, shape in enumerate(shapes)))
    for view, value in zip(flat.params, params, strict=True):
        view[...] = value
    half = len(shapes) // 2
    opt = ToyTrust(
        [{"params": list(flat.params[:half])}, {"params": list(flat.params[half:]), "lr": 0.02}],
        **OPTIONS,
    )
    previous = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        for step in range(STEPS):
            for view, grad in zip(flat.grads, grads, strict=True):
                view[...] = grad[step]
            opt.step()
    finally:
        numba.set_num_threads(previous)
    return flat, opt, params, grads


@dtypes
def test_flat_path_is_the_per_array_path_with_one_read_pass(dtype, read_passes):
    shapes = SHAPES * 3
    flat, opt, params, grads = run_flat(dtype, shapes)
    # One launch, hence one read pass, per step for all the tensors of both groups.
    assert len(read_passes) == STEPS and read_passes[0] >= len(shapes)
    arrays = [p.copy() for p in params]
    half = len(shapes) // 2
    plain = ToyTrust([{"params": arrays[:half]}, {"params": arrays[half:], "lr": 0.02}], **OPTIONS)
    for step in range(STEPS):
        plain.step([grad[step] for grad in grads])
    for index, (view, array) in enumerate(zip(flat.params, arrays, strict=True)):
        assert_same(view, array, f"param {index}")
        assert_same(opt.state[index]["exp_avg"], plain.state[index]["exp_avg"], f"state {index}")


def test_results_do_not_depend_on_the_thread_count():
    shapes = [(5, 13109), (4 * BLOCK + 5,), (7, 3)]
    one = run_flat(np.float32, shapes, threads=1)[0]
    every = run_flat(np.float32, shapes)[0]
    assert_same(one.buffer, every.buffer)


def test_serial_and_parallel_read_passes_agree(monkeypatch):
    param, grads = problem((5, 13109), np.float32)
    results = []
    for threshold in (PARALLEL_THRESHOLD, param.size + 1):
        monkeypatch.setattr(fastopt._launch, "PARALLEL_THRESHOLD", threshold)
        array = param.copy()
        opt = ToyTrust(array, **OPTIONS)
        for grad in grads:
            opt.step(grad)
        results.append(array)
    assert_same(*results)


def test_torch_adapter_matches_the_numpy_class():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import fastopt.torch as ft

    adapter = ft._declared_adapter(ToyTrust)
    shapes = [(7, 3), (5,), (3, 4, 2)]
    params, grads = zip(*(problem(shape, np.float32, seed=k) for k, shape in enumerate(shapes)))
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = adapter(tensors, **OPTIONS)
    arrays = [p.copy() for p in params]
    plain = ToyTrust(arrays, **OPTIONS)
    for step in range(STEPS):
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = torch.from_numpy(grad[step].copy())
        opt.step()
        plain.step([grad[step] for grad in grads])
    for tensor, array in zip(tensors, arrays, strict=True):
        assert_same(tensor.detach().numpy(), array)


def test_checkpoint_round_trip_resumes_bit_for_bit(tmp_path):
    param, grads = problem((7, 3), np.float64, steps=4)
    first = param.copy()
    opt = ToyTrust(first, **OPTIONS)
    for grad in grads[:2]:
        opt.step(grad)
    fastopt.save(tmp_path / "toy.fopt", opt)
    resumed_param = first.copy()
    resumed = ToyTrust(resumed_param, **OPTIONS)
    fastopt.load(tmp_path / "toy.fopt").restore(resumed)
    for grad in grads[2:]:
        opt.step(grad)
        resumed.step(grad)
    assert_same(resumed_param, first)


@pytest.mark.skipif(
    not config.ENABLE_CUDASIM,
    reason="needs numba's CUDA simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest "
    "tests/test_rule_norms.py",
)
@dtypes
@pytest.mark.parametrize("shape", [(0,), (7,), (7, 3), (2, 150)], ids=str)
def test_cuda_class_matches_the_reference(dtype, shape, monkeypatch):
    from numba import cuda

    from fastopt.cuda import _kernels

    monkeypatch.setattr(_kernels, "THREADS_PER_BLOCK", 16)
    param, grads = problem(shape, dtype)
    expected, state = param.copy(), {}
    device = cuda.to_device(param)
    opt = ToyTrust(device, **OPTIONS)
    for grad in grads:
        opt.step(cuda.to_device(grad))
        reference_step(expected, grad, state, {**DEFAULTS, **OPTIONS})
    np.testing.assert_allclose(
        device.copy_to_host(), expected, rtol=1e-6 if dtype == np.float32 else 1e-13
    )
    np.testing.assert_allclose(
        opt.state_dict()["state"][0]["exp_avg"], state["exp_avg"], rtol=1e-5, atol=1e-7
    )


def test_a_measure_that_does_not_take_the_update_arguments_is_refused():
    with pytest.raises(ValueError, match="measure must take"):
        Rule(
            name="Broken",
            update=toy_update,
            fields=RULE.fields,
            row=toy_row,
            norms=Norms(lambda p, g, h: (p,), ("param",), ("neg_step",), toy_finish),
            hyperparameters=RULE.hyperparameters,
            state=RULE.state,
            maximize=None,
        )


def test_the_row_type_has_the_norm_fields_last():
    assert RULE.row_type._fields == (*RULE.fields, "neg_step")
    assert ToyTrust._hyper_width == PREAMBLE_WIDTH + len(RULE.fields) + 1


# ---------------------------------------------------------------------- LAMB and LARS


def test_lars_scales_matrices_and_leaves_vectors_alone():
    """pytorch_optimizer's LARS: tensors of 2+ dimensions get the trust ratio and the weight
    decay, vectors plain momentum SGD; the same values as a vector and as a matrix differ."""
    rng = np.random.default_rng(0)
    values, grad = rng.standard_normal(12), rng.standard_normal(12)
    options = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.1, "trust_coefficient": 0.02}
    vector, matrix = values.copy(), values.reshape(3, 4).copy()
    fastopt.LARS([vector, matrix], **options).step([grad, grad.reshape(3, 4)])
    np.testing.assert_allclose(vector, values - 0.1 * grad, rtol=1e-15)
    pn, gn = np.linalg.norm(values), np.linalg.norm(grad)
    trust = 0.02 * pn / (gn + 0.1 * pn)
    expected = values - 0.1 * trust * (grad + 0.1 * values)
    np.testing.assert_allclose(matrix.reshape(-1), expected, rtol=1e-13)


@pytest.mark.parametrize("cls", [fastopt.Lamb, fastopt.LARS], ids=lambda c: c.__name__)
def test_two_hundred_tensors_take_one_read_pass_per_step(cls, read_passes):
    shapes = [(64, 80) if k % 2 else (80,) for k in range(200)]
    flat = fastopt.FlatParams(shapes, dtype=np.float32)
    rng = np.random.default_rng(1)
    flat.buffer[...] = rng.standard_normal(flat.buffer.size)
    opt = cls(flat.params, lr=0.01)
    arrays = [view.copy() for view in flat.params]
    plain = cls(arrays, lr=0.01)
    for _ in range(2):
        flat.grad_buffer[...] = rng.standard_normal(flat.grad_buffer.size)
        opt.step()
        plain.step([grad.copy() for grad in flat.grads])
    assert len([n for n in read_passes if n >= 200]) == 2  # the flat steps: one each
    for view, array in zip(flat.params, arrays, strict=True):
        assert_same(view, array)


@pytest.mark.parametrize("cls", [fastopt.Lamb, fastopt.LARS], ids=lambda c: c.__name__)
def test_zero_parameters_and_gradients_keep_a_trust_ratio_of_one(cls):
    """Norms of 0 take the reference's ratio of 1 (no division by zero, nothing NaN)."""
    param = np.zeros((3, 3))
    with np.errstate(all="raise"):
        opt = cls(param, lr=0.1)
        opt.step(np.zeros((3, 3)))
        opt.step(np.ones((3, 3)))
    assert np.all(np.isfinite(param)) and np.all(param < 0)


def test_lars_skips_the_read_pass_when_no_tensor_is_a_matrix(monkeypatch):
    """Vectors take plain momentum SGD: a launch of vectors only reads nothing twice."""
    import fastopt._norms

    runs = []
    original = fastopt._norms.read_pass
    monkeypatch.setattr(
        fastopt._norms, "read_pass", lambda *args: runs.append(1) or original(*args)
    )
    vectors = [np.ones(5), np.ones(7)]
    fastopt.LARS(vectors, lr=0.1).step([np.ones(5), np.ones(7)])
    assert runs == []
    fastopt.LARS([np.ones(5), np.ones((2, 3))], lr=0.1).step([np.ones(5), np.ones((2, 3))])
    assert runs == [1]  # the matrix's launch
