"""Muon (a rule with a matrix step): against torch.optim.Muon, the NumPy reference, every
path, and its 2-D-only contract.

torch runs the Newton-Schulz iterations in bfloat16, fastopt in the parameters' dtype: the
tight comparisons replace torch's iteration by the same one in the parameters' dtype
(everything else is torch's code), and one comparison with torch as it is bounds the
difference bfloat16 makes.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba.core import config
from rule_cases import assert_close, newton_schulz_in_dtype

import fastopt
from fastopt import reference

# Wide, tall and square (the iterations run on the wide orientation), one larger than the
# parallel threshold.
SHAPES = [(7, 5), (4, 9), (16, 16), (300, 230)]
STEPS = 5
OPTIONS = [
    {},
    {"lr": 0.02, "nesterov": False, "momentum": 0.9},
    {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0},
    {"lr": 0.01, "adjust_lr_fn": "original", "ns_steps": 3, "eps": 1e-5},
]
option_sets = pytest.mark.parametrize(
    "options", OPTIONS, ids=[",".join(f"{k}={v}" for k, v in o.items()) for o in OPTIONS]
)
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def problem(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in shapes] for _ in range(STEPS)]
    return params, grads


def run_reference(params, grads, options):
    params = [p.copy() for p in params]
    buffers = [np.zeros_like(p) for p in params]
    for step_grads in grads:
        for param, grad, buffer in zip(params, step_grads, buffers, strict=True):
            reference.muon_step(param, grad, buffer, **options)
    return params, buffers


@dtypes
@option_sets
def test_class_functional_and_flat_paths_match_the_reference(dtype, options):
    params, grads = problem(dtype)
    expected, expected_buffers = run_reference(params, grads, options)
    arrays = [p.copy() for p in params]
    opt = fastopt.Muon(arrays, **options)
    functional = [p.copy() for p in params]
    buffers = [np.zeros_like(p) for p in params]
    flat = fastopt.FlatParams.from_arrays(params)
    flat_opt = fastopt.Muon(flat.params, **options)
    for step_grads in grads:
        opt.step(step_grads)
        for param, grad, buffer in zip(functional, step_grads, buffers, strict=True):
            fastopt.muon_step(param, grad, buffer, **options)
        for view, grad in zip(flat.grads, step_grads, strict=True):
            view[...] = grad
        flat_opt.step()
    for index, want in enumerate(expected):
        assert_close(arrays[index], want, err_msg=f"param {index}")
        assert_close(opt.state[index]["momentum_buffer"], expected_buffers[index])
        np.testing.assert_array_equal(functional[index], arrays[index])
        # The flat path: the same element-wise passes and the same matrix products.
        np.testing.assert_array_equal(flat.params[index], arrays[index])
        np.testing.assert_array_equal(
            flat_opt.state[index]["momentum_buffer"], opt.state[index]["momentum_buffer"]
        )


def test_two_groups_in_one_flat_launch():
    params, grads = problem(np.float32)
    flat = fastopt.FlatParams.from_arrays(params)
    opt = fastopt.Muon(
        [{"params": list(flat.params[:2]), "lr": 0.05}, {"params": list(flat.params[2:])}]
    )
    plain_arrays = [p.copy() for p in params]
    plain = fastopt.Muon([{"params": plain_arrays[:2], "lr": 0.05}, {"params": plain_arrays[2:]}])
    for step_grads in grads:
        for view, grad in zip(flat.grads, step_grads, strict=True):
            view[...] = grad
        opt.step()
        plain.step(step_grads)
    for view, array in zip(flat.params, plain_arrays, strict=True):
        np.testing.assert_array_equal(view, array)


try:
    import torch

    import fastopt.torch as ft
except ImportError:  # the tests that compare with torch skip
    torch = ft = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@pytest.fixture
def iteration_in_the_parameters_dtype(monkeypatch):
    """torch.optim.Muon with its Newton-Schulz iteration in the parameters' dtype."""
    import torch.optim._muon as muon_module

    monkeypatch.setattr(muon_module, "_zeropower_via_newtonschulz", newton_schulz_in_dtype)


def run_torch(params, grads, options, cls=None):
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = (cls or torch.optim.Muon)(tensors, **options)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads, strict=True):
            tensor.grad = torch.from_numpy(grad.copy())
        opt.step()
    return tensors, opt


@needs_torch
@dtypes
@option_sets
def test_both_apis_match_torch_iterating_in_the_same_dtype(
    dtype, options, iteration_in_the_parameters_dtype
):
    params, grads = problem(dtype, seed=1)
    expected, expected_opt = run_torch(params, grads, options)
    arrays = [p.copy() for p in params]
    opt = fastopt.Muon(arrays, **options)
    for step_grads in grads:
        opt.step(step_grads)
    ours, adapter = run_torch(params, grads, options, cls=ft.Muon)
    for index, want in enumerate(expected):
        want_buffer = expected_opt.state[want]["momentum_buffer"].numpy()
        assert_close(arrays[index], want.detach().numpy(), err_msg=f"param {index}")
        assert_close(opt.state[index]["momentum_buffer"], want_buffer)
        assert_close(ours[index].detach().numpy(), want.detach().numpy())
        assert_close(adapter.state[ours[index]]["momentum_buffer"].numpy(), want_buffer)


@needs_torch
def test_torch_as_it_is_differs_by_bfloat16_rounding_only():
    """torch's bfloat16 iteration against fastopt's float32 one: each step's update differs
    by about bfloat16's relative precision (2^-8) of the update's size, no more."""
    params, grads = problem(np.float32, seed=2)
    options = {"lr": 0.02, "weight_decay": 0.0}
    tensors, _ = run_torch(params, grads[:1], options)
    arrays = [p.copy() for p in params]
    fastopt.Muon(arrays, **options).step(grads[0])
    for start, array, tensor in zip(params, arrays, tensors, strict=True):
        ours, theirs = array - start, tensor.detach().numpy() - start
        gap = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
        assert 1e-4 < gap < 2**-5, gap


@needs_torch
def test_state_dicts_load_both_ways_with_torch(iteration_in_the_parameters_dtype):
    params, grads = problem(np.float64, seed=3)
    theirs, reference_opt = run_torch(params, grads[:3], {"lr": 0.02})
    ours, adapter = run_torch(params, grads[:3], {"lr": 0.02}, cls=ft.Muon)
    saved_ours, saved_theirs = adapter.state_dict(), reference_opt.state_dict()
    # Beyond torch's keys, fastopt's precision options.
    ours_keys = saved_ours["param_groups"][0].keys() - fastopt.precision.PRECISION_DEFAULTS.keys()
    assert ours_keys == saved_theirs["param_groups"][0].keys()
    assert [sorted(e) for e in saved_ours["state"].values()] == [
        sorted(e) for e in saved_theirs["state"].values()
    ]
    into_ours = [torch.nn.Parameter(t.detach().clone()) for t in theirs]
    into_theirs = [torch.nn.Parameter(t.detach().clone()) for t in ours]
    continued_ours, continued_theirs = ft.Muon(into_ours), torch.optim.Muon(into_theirs)
    continued_ours.load_state_dict(saved_theirs)
    continued_theirs.load_state_dict(saved_ours)
    for step_grads in grads[3:]:
        for tensors in (theirs, into_ours, into_theirs):
            for tensor, grad in zip(tensors, step_grads, strict=True):
                tensor.grad = torch.from_numpy(grad.copy())
        for opt in (reference_opt, continued_ours, continued_theirs):
            opt.step()
    for want, mine, other in zip(theirs, into_ours, into_theirs, strict=True):
        assert_close(mine.detach().numpy(), want.detach().numpy())
        assert_close(other.detach().numpy(), want.detach().numpy())


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()], ids=str)
def test_parameters_that_are_not_matrices_are_refused_before_any_write(shape):
    param = np.ones(shape)
    with pytest.raises(ValueError, match="only supports 2-D parameters"):
        fastopt.Muon([np.ones((3, 3)), param])
    with pytest.raises(ValueError, match="only supports 2-D parameters"):
        fastopt.muon_step(param, np.ones(shape), np.zeros(shape))
    np.testing.assert_array_equal(param, np.ones(shape))
    if torch is not None:
        with pytest.raises(ValueError, match="only supports 2-D parameters"):
            ft.Muon([torch.nn.Parameter(torch.ones(shape))])


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"ns_steps": 100}, ValueError, "ns_steps"),
        ({"ns_steps": 2.0}, TypeError, "ns_steps"),
        ({"ns_coefficients": (1.0, 2.0)}, ValueError, "ns_coefficients"),
        ({"ns_coefficients": (1.0, 2.0, float("nan"))}, ValueError, "ns_coefficients"),
        ({"adjust_lr_fn": "rms"}, ValueError, "adjust_lr_fn"),
        ({"momentum": -0.1}, ValueError, "momentum"),
        ({"nesterov": 1}, TypeError, "nesterov"),
    ],
)
def test_invalid_hyperparameters_are_refused(options, error, match):
    param = np.ones((3, 3))
    with pytest.raises(error, match=match):
        fastopt.Muon([param], **options)
    opt = fastopt.Muon([param])
    key, value = next(iter(options.items()))
    opt.param_groups[0][key] = value
    with pytest.raises(error, match=match):
        opt.step([np.ones((3, 3))])
    np.testing.assert_array_equal(param, np.ones((3, 3)))


@pytest.mark.skipif(
    not config.ENABLE_CUDASIM,
    reason="needs numba's CUDA simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest "
    "tests/test_muon.py",
)
def test_cuda_class_matches_the_host(monkeypatch):
    from numba import cuda

    from fastopt.cuda import _kernels

    monkeypatch.setattr(_kernels, "THREADS_PER_BLOCK", 16)
    params, grads = problem(np.float64, shapes=[(7, 5), (4, 9)])
    host = [p.copy() for p in params]
    device = [cuda.to_device(p) for p in params]
    on_host, on_device = fastopt.Muon(host, lr=0.02), fastopt.Muon(device, lr=0.02)
    for step_grads in grads:
        on_host.step(step_grads)
        on_device.step([cuda.to_device(g) for g in step_grads])
    for array, on in zip(host, device, strict=True):
        assert_close(on.copy_to_host(), array)
