"""Adafactor: the class, the functional step and the FlatParams path against the NumPy
reference and torch.optim.Adafactor; its factored (non-parameter-shaped) state in
state_dicts both ways; bit-identical results across thread counts and on CUDA device arrays
(numba's simulator: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_adafactor.py -k
cuda``); refused options.

Adafactor is not in tests/rule_cases.py: the generic tests there assume state arrays shaped
like the parameters (flat buffers, one launch per FlatParams, 16-bit state), which its row
and column factors are not; this file covers what they cover for it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba.core import config

import fastopt
from fastopt import reference
from fastopt._jit import PARALLEL_THRESHOLD

SHAPES = [(), (0,), (1,), (7,), (5, 3), (2, 3, 4), (1, 6), (300, 400)]
OPTIONS = [
    {},
    {"lr": 0.1, "weight_decay": 0.1},
    {"lr": 0.05, "maximize": True, "d": 2.0},
    {"eps": (1e-30, 1e-2), "beta2_decay": -0.5},
    {"eps": (1e-3, 0.0), "beta2_decay": 0.0, "weight_decay": 0.5},
]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
STEPS = 4


def state_of(shape, dtype):
    """The reference's state arrays of a parameter of ``shape``."""
    if len(shape) >= 2:
        return {
            "row_var": np.zeros((*shape[:-1], 1), dtype),
            "col_var": np.zeros((*shape[:-2], 1, shape[-1]), dtype),
        }
    return {"variance": np.zeros(shape, dtype)}


def close(actual, expected, dtype):
    # Relative to the array's scale: a parameter element that a step takes near zero has a
    # large relative error from the rounding of the step itself.
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


def problem(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(STEPS)]
    return param, grads


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_class_and_functional_step_match_the_reference(dtype, shape, options):
    if np.prod(shape) > PARALLEL_THRESHOLD and options != OPTIONS[1]:
        pytest.skip("one option set for the large matrix")
    param, grads = problem(shape, dtype)
    expected, state = param.copy(), state_of(shape, dtype)
    ours = param.copy()
    opt = fastopt.Adafactor(ours, **options)
    functional, functional_state = param.copy(), state_of(shape, dtype)
    for step, grad in enumerate(grads, start=1):
        reference.adafactor_step(expected, grad, **state, step=step, **options)
        opt.step(grad)
        fastopt.adafactor_step(functional, grad, **functional_state, step=step, **options)
    close(ours, expected, dtype)
    assert functional.tobytes() == ours.tobytes()
    entry = opt.state[0]
    assert entry["step"] == STEPS
    assert sorted(entry) == sorted([*state, "step"])
    for name, value in state.items():
        assert entry[name].shape == value.shape and entry[name].dtype == dtype
        close(entry[name], value, dtype)
        assert functional_state[name].tobytes() == entry[name].tobytes()


def test_flat_params_step_in_one_launch_as_arrays_do(monkeypatch):
    import fastopt._flatstep

    launches = []
    real_launch = fastopt._flatstep.launch
    monkeypatch.setattr(
        fastopt._flatstep, "launch", lambda *a, **k: launches.append(1) or real_launch(*a, **k)
    )
    shapes = [(5, 3), (7,), (2, 3, 4), (), (0, 4), (300, 400)]
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    flat = fastopt.FlatParams.from_arrays([a.copy() for a in arrays])
    groups = [{"params": list(flat.params[:2]), "lr": 0.1}, {"params": list(flat.params[2:])}]
    flat_opt = fastopt.Adafactor(groups, weight_decay=0.01)
    separate = [a.copy() for a in arrays]
    opt = fastopt.Adafactor(
        [{"params": separate[:2], "lr": 0.1}, {"params": separate[2:]}], weight_decay=0.01
    )

    def step(flat_step):
        grads = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        flat_step()
        opt.step(grads)

    def check():
        for ours, expected in zip(flat.params, separate, strict=True):
            assert ours.tobytes() == expected.tobytes()
        padding = np.ones(flat.buffer.size, bool)
        for offset, length in flat.segments.tolist():
            padding[offset : offset + length] = False
        assert padding.any() and not flat.buffer[padding].any(), "the padding moved"
        for index in range(len(shapes)):
            assert sorted(flat_opt.state[index]) == sorted(opt.state[index])
            for name, value in opt.state[index].items():
                if name != "step":
                    assert flat_opt.state[index][name].tobytes() == value.tobytes(), name

    for _ in range(3):
        step(flat_opt.step)
    assert len(launches) == 3  # every group in one launch per step
    check()
    # A per-array step (its own gradients), then flat steps again, then a checkpoint loaded
    # into a fresh optimizer over the same FlatParams: the flat steps go on from that state.
    step(lambda: flat_opt.step([g.copy() for g in flat.grads]))
    step(flat_opt.step)
    check()
    resumed = fastopt.Adafactor(
        [{"params": list(flat.params[:2]), "lr": 0.1}, {"params": list(flat.params[2:])}],
        weight_decay=0.01,
    )
    resumed.load_state_dict(flat_opt.state_dict())
    flat_opt = resumed
    step(flat_opt.step)
    check()


def test_gradient_options_apply_to_the_gradient_the_second_moment_sees():
    param, grads = problem((4, 5), np.float64, seed=2)
    ours, expected = param.copy(), param.copy()
    state = state_of((4, 5), np.float64)
    opt = fastopt.Adafactor(ours, clip_value=0.5)
    for step, grad in enumerate(grads, start=1):
        opt.step(grad * 8.0, loss_scale=8.0)
        reference.adafactor_step(expected, np.clip(grad, -0.5, 0.5), **state, step=step)
    close(ours, expected, np.float64)
    close(opt.state[0]["row_var"], state["row_var"], np.float64)


def test_schedules_drive_the_lr():
    param, grads = problem((3, 4), np.float64, seed=3)
    ours, expected = param.copy(), param.copy()
    state = state_of((3, 4), np.float64)
    opt = fastopt.Adafactor(ours, lr=lambda step: 0.1 / (1 + step), weight_decay=0.1)
    for step, grad in enumerate(grads, start=1):
        opt.step(grad)
        reference.adafactor_step(
            expected, grad, **state, step=step, lr=0.1 / step, weight_decay=0.1
        )
    close(ours, expected, np.float64)


# ---------------------------------------------------------------------- against torch
TORCH_OPTIONS = [
    *OPTIONS,
    {"eps": (None, 1e-3), "d": 1.5, "beta2_decay": -0.3, "lr": 0.2},
]


@pytest.mark.parametrize("options", TORCH_OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_numpy_class_matches_torch(dtype, options):
    torch = pytest.importorskip("torch")
    shapes = [(), (1,), (7,), (5, 3), (2, 3, 4), (64, 1100)]
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    tensors = [torch.tensor(a.copy()) for a in arrays]
    ours = [a.copy() for a in arrays]
    reference_opt = torch.optim.Adafactor(tensors, **options)
    opt = fastopt.Adafactor(ours, **options)
    for _ in range(STEPS):
        grads = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = torch.tensor(grad)
        reference_opt.step()
        opt.step(grads)
    for index, tensor in enumerate(tensors):
        close(ours[index], tensor.numpy(), dtype)
        torch_state = reference_opt.state[tensor]
        assert sorted(torch_state) == sorted(opt.state[index])
        assert float(torch_state["step"]) == opt.state[index]["step"]
        for name, value in torch_state.items():
            if name != "step":
                close(opt.state[index][name], value.numpy(), dtype)


def _model(torch, dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(
        dtype
    )


def _train(torch, model, opt, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(16, 6, generator=generator, dtype=dtype)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("options", TORCH_OPTIONS[:3], ids=str)
def test_torch_adapter_matches_torch(options):
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    reference_model, model = _model(torch, torch.float64), _model(torch, torch.float64)
    reference_opt = torch.optim.Adafactor(reference_model.parameters(), **options)
    opt = ft.Adafactor(model.parameters(), **options, foreach=False)
    _train(torch, reference_model, reference_opt, 5)
    _train(torch, model, opt, 5)
    for ours, expected in zip(model.parameters(), reference_model.parameters(), strict=True):
        close(ours.detach().numpy(), expected.detach().numpy(), np.float64)
    with pytest.raises(ValueError, match="foreach"):
        ft.Adafactor(model.parameters(), foreach=True)


@pytest.mark.parametrize("direction", ["torch_to_fastopt", "fastopt_to_torch"])
def test_state_dicts_load_both_ways_with_torch(direction):
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    first, second = _model(torch, torch.float32), _model(torch, torch.float32)
    if direction == "torch_to_fastopt":
        source = torch.optim.Adafactor(first.parameters(), lr=0.05, weight_decay=0.01)
        target_class = ft.Adafactor
    else:
        source = ft.Adafactor(first.parameters(), lr=0.05, weight_decay=0.01)
        target_class = torch.optim.Adafactor
    _train(torch, first, source, 3)
    second.load_state_dict(first.state_dict())
    target = target_class(second.parameters())
    buffer = io.BytesIO()  # as a checkpoint travels: no tensor shared with the source
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    assert target.param_groups[0]["lr"] == 0.05
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        for name, value in source.state[p].items():
            assert target.state[q][name].shape == value.shape, name
            torch.testing.assert_close(target.state[q][name], value, rtol=0, atol=0)
    _train(torch, first, source, 2, seed=1)
    _train(torch, second, target, 2, seed=1)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_numpy_state_dict_round_trip_and_mismatched_shapes_refused():
    param, grads = problem((3, 4), np.float32)
    opt = fastopt.Adafactor([param, np.ones(5, np.float32)])
    opt.step([grads[0], np.ones(5, np.float32)])
    saved = opt.state_dict()
    other = fastopt.Adafactor([param.copy(), np.ones(5, np.float32)])
    other.load_state_dict(saved)
    assert other.state[0]["col_var"].tobytes() == opt.state[0]["col_var"].tobytes()
    bad = opt.state_dict()
    bad["state"][0]["row_var"] = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"row_var.*shape \(3, 1\)"):
        other.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"][1]["row_var"] = np.zeros((5, 1), np.float32)
    with pytest.raises(ValueError, match="not kept for a parameter of shape"):
        other.load_state_dict(bad)
    bad = opt.state_dict()
    del bad["state"][0]["col_var"]
    with pytest.raises(ValueError, match="lacks"):
        other.load_state_dict(bad)


# ---------------------------------------------------------------------- determinism
_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import fastopt

    rng = np.random.default_rng(5)
    shapes = [(300, 400), (2, 150, 300), (70001,), (5, 3)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = fastopt.Adafactor(params, weight_decay=0.01, max_norm=10.0)
    for _ in range(3):
        opt.step([rng.standard_normal(s).astype(np.float32) for s in shapes])
    arrays = {f"param{i}": p for i, p in enumerate(params)}
    for i, entry in opt.state.items():
        arrays.update({f"{name}{i}": v for name, v in entry.items() if name != "step"})
    np.savez(sys.argv[1], **arrays)
    """
)


@pytest.mark.slow
def test_thread_counts_and_serial_path_give_identical_bits(tmp_path):
    assert PARALLEL_THRESHOLD < 300 * 400, "the arrays must take the parallel path"
    runs = {}
    for name, env in {
        "1 thread": {"NUMBA_NUM_THREADS": "1"},
        "3 threads": {"NUMBA_NUM_THREADS": "3"},
        "serial": {"FASTOPT_PARALLEL_THRESHOLD": str(1 << 40)},
    }.items():
        out = tmp_path / f"{name.replace(' ', '_')}.npz"
        subprocess.run(
            [sys.executable, "-c", _WORKER, str(out)], check=True, env={**os.environ, **env}
        )
        with np.load(out) as data:
            runs[name] = {key: data[key] for key in data.files}
    expected = runs.pop("1 thread")
    for name, results in runs.items():
        assert results.keys() == expected.keys()
        for key, value in expected.items():
            assert value.tobytes() == results[key].tobytes(), f"{key} differs with {name}"


# ---------------------------------------------------------------------- refused
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"beta2_decay": 0.1}, ValueError, "beta2_decay"),
        ({"eps": (-1.0, 1e-3)}, ValueError, r"eps\[0\]"),
        ({"eps": (None, -1e-3)}, ValueError, r"eps\[1\]"),
        ({"eps": 1e-3}, ValueError, "pair"),
        ({"d": 0.5}, ValueError, "d"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"maximize": 1}, TypeError, "maximize"),
        ({"state_dtype": "bfloat16"}, ValueError, "state_dtype"),
    ],
)
def test_invalid_options_are_refused_before_any_write(options, error, match):
    param = np.ones((3, 4))
    with pytest.raises(error, match=match):
        fastopt.Adafactor(param, **options)
    opt = fastopt.Adafactor(param)
    opt.param_groups[0].update(options)
    with pytest.raises(error, match=match):
        opt.step(np.ones((3, 4)))
    assert not opt.state and np.all(param == 1.0)
    if "state_dtype" not in options:
        row_var, col_var = np.zeros((3, 1)), np.zeros((1, 4))
        with pytest.raises(error, match=match):
            fastopt.adafactor_step(param, np.ones((3, 4)), row_var, col_var, step=1, **options)
        assert np.all(param == 1.0) and not row_var.any()


def test_functional_step_checks_its_state_arrays():
    param = np.ones((3, 4))
    with pytest.raises(ValueError, match="row_var is required"):
        fastopt.adafactor_step(param, param.copy(), step=1)
    with pytest.raises(ValueError, match="variance is unused"):
        fastopt.adafactor_step(
            param,
            param.copy(),
            np.zeros((3, 1)),
            np.zeros((1, 4)),
            np.zeros((3, 4)),
            step=1,
        )
    with pytest.raises(ValueError, match=r"shape \(1, 4\)"):
        fastopt.adafactor_step(param, param.copy(), np.zeros((3, 1)), np.zeros((4, 1)), step=1)
    assert np.all(param == 1.0)


def test_sixteen_bit_parameters_are_refused():
    import ml_dtypes

    with pytest.raises(TypeError, match="float32 and float64"):
        fastopt.Adafactor(np.ones(4, ml_dtypes.bfloat16))


# ---------------------------------------------------------------------- CUDA
@pytest.mark.skipif(
    not config.ENABLE_CUDASIM,
    reason="needs numba's CUDA simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest "
    "tests/test_adafactor.py -k cuda",
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_cuda_device_arrays_match_the_host_and_checkpoints_resume(dtype, monkeypatch):
    from numba import cuda

    from fastopt._backend import is_device_array
    from fastopt.cuda import _kernels

    monkeypatch.setattr(_kernels, "THREADS_PER_BLOCK", 16)
    shapes = [(5, 7), (3, 4, 6), (9,), (1, 1), (0, 3), ()]
    rng = np.random.default_rng(3)
    host = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    device = [cuda.to_device(p) for p in host]
    options = {"lr": 0.05, "weight_decay": 0.1, "clip_value": 1.5}
    on_host, on_device = fastopt.Adafactor(host, **options), fastopt.Adafactor(device, **options)
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in shapes] for _ in range(4)]
    for step_grads in grads[:2]:
        on_host.step(step_grads)
        on_device.step([cuda.to_device(g) for g in step_grads])
    # A checkpoint of the device optimizer (host copies) resumes on fresh device arrays.
    saved = on_device.state_dict()
    resumed = [cuda.to_device(p.copy_to_host()) for p in device]
    again = fastopt.Adafactor(resumed, **options)
    again.load_state_dict(saved)
    for step_grads in grads[2:]:
        on_host.step(step_grads)
        on_device.step([cuda.to_device(g) for g in step_grads])
        again.step([cuda.to_device(g) for g in step_grads])
    for index, expected in enumerate(host):
        for params in (device, resumed):
            assert params[index].copy_to_host().tobytes() == expected.tobytes()
        for optimizer in (on_device, again):
            entry = optimizer.state[index]
            assert sorted(entry) == sorted(on_host.state[index])
            for name, value in on_host.state[index].items():
                if name == "step":
                    assert entry[name] == value == 4
                    continue
                assert is_device_array(entry[name]), f"{name} is not on the device"
                assert entry[name].copy_to_host().tobytes() == value.tobytes(), name
        assert isinstance(saved["state"][index].get("row_var", np.empty(0)), np.ndarray)


@pytest.mark.skipif(
    not config.ENABLE_CUDASIM,
    reason="needs numba's CUDA simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest "
    "tests/test_adafactor.py -k cuda",
)
def test_cuda_functional_step_matches_the_host_and_checks_where_its_state_is():
    from numba import cuda

    param, grads = problem((4, 5), np.float32)
    expected, row_var, col_var = (
        param.copy(),
        np.zeros((4, 1), np.float32),
        np.zeros((1, 5), np.float32),
    )
    device = [cuda.to_device(a) for a in (param, row_var, col_var)]
    for step, grad in enumerate(grads[:2], start=1):
        fastopt.adafactor_step(expected, grad, row_var, col_var, step=step, weight_decay=0.1)
        fastopt.adafactor_step(
            device[0], cuda.to_device(grad), *device[1:], step=step, weight_decay=0.1
        )
    for array, on in zip((expected, row_var, col_var), device, strict=True):
        assert on.copy_to_host().tobytes() == array.tobytes()
    before = [on.copy_to_host() for on in device]
    with pytest.raises(TypeError, match="row_var is a ndarray in host memory"):
        fastopt.adafactor_step(device[0], cuda.to_device(grads[2]), row_var, device[2], step=3)
    with pytest.raises(ValueError, match=r"col_var must have dtype float32 and shape \(1, 5\)"):
        fastopt.adafactor_step(
            device[0], cuda.to_device(grads[2]), device[1], cuda.to_device(np.zeros((5, 1))), step=3
        )
    for array, on in zip(before, device, strict=True):
        assert on.copy_to_host().tobytes() == array.tobytes()
