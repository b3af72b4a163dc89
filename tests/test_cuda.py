"""The CUDA path against the NumPy reference: every rule and option, float32 and float64.

Runs on a usable GPU, or under numba's CUDA simulator, which must be switched on before
``numba.cuda`` is first imported, hence in its own process::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py

Anywhere else (the main test run on a machine without a GPU) the module is skipped. The
simulator runs one Python thread per GPU thread, so arrays are tiny and blocks have 16
threads: 200 elements span several blocks and every thread loops over several elements.
Tests marked ``gpu`` need real hardware and are skipped under the simulator.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id, problem, run_reference

import fastopt
import fastopt.cuda

USABLE, REASON = fastopt.cuda.availability()
if not USABLE:
    pytest.skip(
        f"{REASON}; run NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py",
        allow_module_level=True,
    )

from numba import cuda  # noqa: E402  (after the check: importing it is what the check decides)

from fastopt import reference  # noqa: E402
from fastopt._declared import row_of  # noqa: E402
from fastopt._launch import launch  # noqa: E402
from fastopt.cuda import _kernels  # noqa: E402
from fastopt.precision import BFLOAT16  # noqa: E402

ADAM_KERNELS = fastopt.Adam._kernels
SGD_KERNELS = fastopt.SGD._kernels

SIMULATOR = _kernels.SIMULATOR


def gpu(test):
    """Mark a test that needs real hardware (``-m gpu``); skipped under the simulator."""
    return pytest.mark.gpu(pytest.mark.skipif(SIMULATOR, reason="needs a real CUDA GPU")(test))


THREADS_PER_BLOCK = 16
# 0, 1, odd, and more than the simulated grid holds (4 blocks x 16 threads).
SIZES = [0, 1, 7, 200]
STEPS = 4
EXAMPLE = Path(__file__).parent.parent / "examples" / "same_script_cpu_gpu.py"


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(_kernels, "THREADS_PER_BLOCK", THREADS_PER_BLOCK)


class InterfaceArray:
    """An array exposing only ``__cuda_array_interface__``, as CuPy arrays and torch CUDA
    tensors do. On a GPU it fronts a numba device array; under the simulator, whose device
    memory is host memory, a NumPy array's buffer."""

    def __init__(self, host: np.ndarray, readonly: bool = False) -> None:
        self._owner = host.copy() if SIMULATOR else cuda.to_device(host)
        self._readonly = readonly

    @property
    def __cuda_array_interface__(self) -> dict:
        if SIMULATOR:
            interface = self._owner.__array_interface__
            interface = {key: interface[key] for key in ("shape", "typestr", "strides")}
            interface["data"] = (self._owner.ctypes.data, self._readonly)
        else:
            interface = dict(self._owner.__cuda_array_interface__)
            interface["data"] = (interface["data"][0], self._readonly)
        return {**interface, "version": 3, "stream": None}

    def host(self) -> np.ndarray:
        return self._owner.copy() if SIMULATOR else self._owner.copy_to_host()


def host(array) -> np.ndarray:
    return array.host() if isinstance(array, InterfaceArray) else array.copy_to_host()


def run_case(case, param, grads, place):
    _, cls, kwargs = case
    device_param = place(param)
    opt = cls(device_param, **kwargs)
    for grad in grads:
        opt.step(place(grad))
    return device_param, opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, size, dtype):
    rule, cls, kwargs = case
    param, grads = problem(size, dtype, STEPS)
    expected = param.copy()
    expected_state = run_reference(rule, cls, kwargs, expected, grads)

    device_param, opt = run_case(case, param, grads, cuda.to_device)

    assert_close(device_param.copy_to_host(), expected)
    state = opt.state[0]
    assert state["step"] == STEPS
    arrays = {k: v for k, v in state.items() if k != "step" and k not in expected_state.scalars}
    assert sorted(arrays) == sorted(expected_state)
    for name, value in expected_state.scalars.items():
        assert state[name] == value, name  # host numbers: the same on every device
    saved = opt.state_dict()["state"][0]
    for name, value in arrays.items():
        assert fastopt._backend.is_device_array(value), f"{name} is not on the device"
        assert isinstance(saved[name], np.ndarray), f"state_dict {name} is not a host copy"
        assert saved[name].dtype == dtype and saved[name].shape == param.shape
        assert_close(value.copy_to_host(), expected_state[name], err_msg=name)
        assert_close(saved[name], expected_state[name], err_msg=name)
    if size:
        assert not np.array_equal(device_param.copy_to_host(), param), "nothing moved"


@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_cuda_array_interface_updated_in_place(case):
    """CuPy/torch-style arrays are updated where they are: no copy in, no copy out."""
    rule, cls, kwargs = case
    param, grads = problem(200, np.float32, STEPS)
    expected = param.copy()
    expected_state = run_reference(rule, cls, kwargs, expected, grads)

    exported, opt = run_case(case, param, grads, InterfaceArray)

    assert_close(exported.host(), expected)
    for name, value in opt.state_dict()["state"][0].items():
        if name in expected_state.scalars:
            assert value == expected_state.scalars[name], name
        elif name != "step":
            assert_close(value, expected_state[name], err_msg=name)


def test_several_parameters_and_groups():
    rng = np.random.default_rng(1)
    shapes = [(3, 5), (40,), (2, 3, 4)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1, "amsgrad": True}]  # noqa: E731

    host_params = [p.copy() for p in params]
    host_opt = fastopt.Adam(groups(host_params), lr=0.01, weight_decay=0.1)
    device_params = [cuda.to_device(p) for p in params]
    device_opt = fastopt.Adam(groups(device_params), lr=0.01, weight_decay=0.1)
    for step_grads in grads:
        host_opt.step(step_grads)
        device_opt.step([cuda.to_device(g) for g in step_grads[:2]] + [None])

    # The third parameter got no gradient on the device: untouched, and no state for it.
    np.testing.assert_array_equal(device_params[2].copy_to_host(), params[2])
    assert 2 not in device_opt.state
    for index in (0, 1):
        assert device_params[index].copy_to_host().shape == shapes[index]
        assert_close(device_params[index].copy_to_host(), host_params[index])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_steps_take_device_arrays(dtype):
    param, (grad,) = problem(200, dtype, 1)
    place = cuda.to_device

    # (fused step, reference step, keyword arguments, state arrays passed: None or the range
    # of their starting values, chosen so that centered RMSprop's variance stays positive)
    small, large = (0.0, 0.1), (0.5, 1.0)
    cases = [
        (fastopt.sgd_step, reference.sgd_step, {"lr": 0.1, "step": 1}, [None]),
        (fastopt.sgd_step, reference.sgd_step, {"lr": 0.1, "momentum": 0.9, "step": 2}, [small]),
        (fastopt.adagrad_step, reference.adagrad_step, {"lr": 0.1, "step": 2}, [large]),
        (fastopt.rmsprop_step, reference.rmsprop_step, {"momentum": 0.5}, [large, small, None]),
        (fastopt.rmsprop_step, reference.rmsprop_step, {"centered": True}, [large, None, small]),
        (fastopt.adam_step, reference.adam_step, {"step": 3}, [small, large, None]),
        (
            fastopt.adam_step,
            reference.adam_step,
            {"step": 3, "amsgrad": True},
            [small, large, large],
        ),
    ]
    rng = np.random.default_rng(2)
    for step, oracle, kwargs, starts in cases:
        state = [None if r is None else rng.uniform(*r, 200).astype(dtype) for r in starts]
        expected_param = param.copy()
        expected_state = [None if s is None else s.copy() for s in state]
        oracle(expected_param, grad, *expected_state, **kwargs)

        device_param = place(param)
        device_state = [None if s is None else place(s) for s in state]
        step(device_param, place(grad), *device_state, **kwargs)

        assert_close(device_param.copy_to_host(), expected_param, err_msg=step.__name__)
        for got, want in zip(device_state, expected_state, strict=True):
            if want is not None:
                assert_close(got.copy_to_host(), want, err_msg=step.__name__)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segmented_launch_matches_cpu_drivers(dtype):
    """Several segments, one launch: an empty segment, segments across block boundaries."""
    bounds = np.array([0, 5, 5, 70, 71, 150, 200], dtype=np.int64)
    rows = [
        row_of(
            fastopt.Adam._rule,
            {
                "lr": 0.01 * (s + 1),
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 0.05 * s,
                "maximize": s == 3,
                "decoupled_weight_decay": s % 2 == 1,
            },
            s + 1,
            False,
        )
        for s in range(bounds.size - 1)
    ]
    hyper = np.array(rows)
    param, (grad,) = problem(200, dtype, 1)
    exp_avg, exp_avg_sq = np.full_like(param, 0.1), np.full_like(param, 0.2)
    arrays = [param, grad, exp_avg, exp_avg_sq]
    device = [cuda.to_device(a) for a in arrays]

    launch(ADAM_KERNELS, bounds, hyper, *arrays, None)
    launch(ADAM_KERNELS, bounds, hyper, *device, None)

    for name, got, want in zip(
        ("param", "grad", "exp_avg", "exp_avg_sq"), device, arrays, strict=True
    ):
        assert_close(got.copy_to_host(), want, err_msg=name)


def test_state_dict_round_trip_resumes_exactly():
    param, grads = problem(200, np.float32, 6)
    kwargs = {"lr": 0.01, "amsgrad": True}
    straight = cuda.to_device(param)
    opt = fastopt.Adam(straight, **kwargs)
    for grad in grads:
        opt.step(cuda.to_device(grad))

    resumed = cuda.to_device(param)
    first = fastopt.Adam(resumed, **kwargs)
    for grad in grads[:3]:
        first.step(cuda.to_device(grad))
    checkpoint = first.state_dict()
    second = fastopt.Adam(resumed, **kwargs)
    second.load_state_dict(checkpoint)
    assert all(
        fastopt._backend.is_device_array(v) for k, v in second.state[0].items() if k != "step"
    )
    for grad in grads[3:]:
        second.step(cuda.to_device(grad))

    np.testing.assert_array_equal(resumed.copy_to_host(), straight.copy_to_host())
    for name, value in second.state_dict()["state"][0].items():
        np.testing.assert_array_equal(value, opt.state_dict()["state"][0][name], err_msg=name)


# ---------------------------------------------------------------------- mixing and validation
def snapshot(*arrays):
    return [a.copy() if isinstance(a, np.ndarray) else a.copy_to_host() for a in arrays]


def assert_unchanged(before, *arrays):
    for old, array in zip(before, snapshot(*arrays), strict=True):
        np.testing.assert_array_equal(array, old)


def test_exporter_that_refuses_to_export_gets_a_clear_error():
    class RequiresGrad:  # what torch does for a tensor that requires grad
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    with pytest.raises(TypeError, match=r"tensor\.detach\(\)"):
        fastopt.SGD(RequiresGrad())


def test_host_gradient_for_device_parameter_raises_before_any_write():
    param, (grad,) = problem(20, np.float32, 1)
    device_param = cuda.to_device(param)
    opt = fastopt.Adam(device_param)
    with pytest.raises(TypeError, match=r"grads\[0\] is a ndarray in host memory .* CUDA device"):
        opt.step(grad)
    assert_unchanged([param], device_param)
    assert opt.state == {} and opt.step_count == 0


def test_device_gradient_for_host_parameter_raises():
    param, (grad,) = problem(20, np.float64, 1)
    opt = fastopt.SGD(param, lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] is .* CUDA device memory .* host memory"):
        opt.step(cuda.to_device(grad))
    assert_unchanged([problem(20, np.float64, 1)[0]], param)


def test_mixed_parameters_are_rejected():
    with pytest.raises(TypeError, match=r"params'\]\[1\] is a ndarray in host memory"):
        fastopt.SGD([cuda.to_device(np.zeros(3)), np.zeros(3)])
    opt = fastopt.SGD(cuda.to_device(np.zeros(3)))
    with pytest.raises(TypeError, match="put them all in one place"):
        opt.add_param_group({"params": [np.zeros(2)]})


def test_functional_step_with_host_state_raises_before_any_write():
    param, (grad,) = problem(20, np.float32, 1)
    device = [cuda.to_device(a) for a in (param, grad, np.zeros_like(param))]
    host_state = np.zeros_like(param)
    with pytest.raises(TypeError, match=r"exp_avg_sq is a ndarray in host memory"):
        fastopt.adam_step(*device, host_state, step=1)
    assert_unchanged(snapshot(param, grad, np.zeros_like(param), host_state), *device, host_state)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: cuda.to_device(np.zeros(4, np.int64)), TypeError, "dtype float32, float64"),
        (lambda: cuda.to_device(np.zeros(4, np.uint16)), TypeError, "or bfloat16 \\(as a"),
        (lambda: InterfaceArray(np.zeros(4), readonly=True), ValueError, "writeable"),
        (lambda: cuda.to_device(np.zeros((4, 6)))[:, ::2], ValueError, "C-contiguous"),
        (lambda: [object()], TypeError, "numpy.ndarray or a CUDA device array"),
    ],
)
def test_bad_device_parameters(make, error, message):
    with pytest.raises(error, match=message):
        fastopt.Adam(make())


def test_bad_device_gradients_leave_everything_unchanged():
    param = problem(12, np.float32, 0)[0]
    device_param = cuda.to_device(param)
    opt = fastopt.RMSprop(device_param, momentum=0.9)
    bad = [
        (cuda.to_device(np.zeros(12, np.float64)), TypeError, "dtype float32"),
        (cuda.to_device(np.zeros(13, np.float32)), ValueError, r"shape \(12,\)"),
        (cuda.to_device(np.zeros(24, np.float32))[::2], ValueError, "C-contiguous"),
        (device_param, ValueError, "shares memory with its parameter"),
    ]
    for grad, error, message in bad:
        with pytest.raises(error, match=message):
            opt.step(grad)
    assert_unchanged([param], device_param)
    assert opt.state == {}


def test_functional_state_aliasing_is_rejected():
    arrays = [cuda.to_device(np.zeros(8)) for _ in range(3)]
    with pytest.raises(ValueError, match="exp_avg and exp_avg_sq share memory"):
        fastopt.adam_step(arrays[0], arrays[1], arrays[2], arrays[2], step=1)


# ---------------------------------------------------------------------- launch and packaging
def test_grid_is_one_wave_of_resident_blocks():
    assert _kernels.grid_shape(200, 16, 4) == (4, 16)
    assert _kernels.grid_shape(33, 16, 100) == (3, 16)
    assert _kernels.grid_shape(1, 256, 528) == (1, 256)
    assert _kernels.grid_shape(1 << 28, 256, 528) == (528, 256)


def test_generated_kernel_passes_absent_state_as_constant_none():
    """Absent arrays (max_exp_avg_sq, the master copy, the compensation) are the constant
    None; the stores round to nearest unless the kernel is the stochastic one."""
    present = (True, True, False, False, False)
    source = _kernels.kernel_source(ADAM_KERNELS, present, segmented=False)
    assert "def _adam_cuda(row, param, grad, exp_avg, exp_avg_sq):" in source
    assert "update(i, param, grad, exp_avg, exp_avg_sq, None, None, None, scalars)" in source
    assert "scalars = unpack(row, param, 0, None)" in source
    stochastic = _kernels.kernel_source(ADAM_KERNELS, present, False, "update", True)
    assert "scalars = unpack(row, param, 0, True)" in stochastic


def test_availability_says_where_updates_run():
    usable, reason = fastopt.cuda.availability()
    assert usable
    assert ("simulator" in reason) == SIMULATOR


def test_example_runs_unchanged_on_host_and_device():
    namespace = runpy.run_path(str(EXAMPLE))
    host_weights, device_weights = namespace["main"](size=64, steps=5)
    assert host_weights.shape == device_weights.shape == (64,)


@pytest.mark.filterwarnings("ignore:Simulator timings are bogus")
def test_benchmark_runs_and_counts_the_minimum_traffic():
    from fastopt.cuda import bench

    (adam,) = bench.run(["adam"], sizes=[64], warmup=1, repeats=1, baselines=False)
    assert (adam.rule, adam.implementation, adam.size, adam.dtype) == (
        "adam",
        "fastopt",
        64,
        "float32",
    )
    # param, grad, exp_avg, exp_avg_sq read; param, exp_avg, exp_avg_sq written
    assert adam.bytes_per_step == 7 * 64 * 4
    assert "adam" in bench.format_table([adam]).splitlines()[1]


# ---------------------------------------------------------------------- real hardware only
@gpu
def test_launch_fills_the_device_and_no_more():
    device = cuda.get_current_device()
    size = 1 << 22
    param = cuda.to_device(np.zeros(size, np.float32))
    fastopt.sgd_step(param, cuda.to_device(np.ones(size, np.float32)), lr=0.1, step=1)
    dispatcher = _kernels._kernel(SGD_KERNELS, (False,), False)
    (resident,) = {blocks for key, blocks in _kernels._resident.items() if key[0] is dispatcher}
    multiprocessors = device.MULTIPROCESSOR_COUNT
    most = multiprocessors * device.MAX_THREADS_PER_MULTI_PROCESSOR // THREADS_PER_BLOCK
    assert resident % multiprocessors == 0 and multiprocessors <= resident <= most
    np.testing.assert_array_equal(param.copy_to_host(), np.float32(-0.1))


@gpu
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nan_and_inf_propagate_as_on_the_host(case):
    """(The simulator cannot check this: its math.sqrt raises on negative numbers.)"""
    _, cls, kwargs = case
    param, grads = problem(64, np.float32, 3)
    for grad in grads:
        grad[::7], grad[3::11] = np.nan, np.inf
    on_host = param.copy()
    host_opt = cls(on_host, **kwargs)
    device_param, _ = run_case(case, param, grads, cuda.to_device)
    for grad in grads:
        host_opt.step(grad)
    on_device = device_param.copy_to_host()
    np.testing.assert_array_equal(np.isnan(on_device), np.isnan(on_host))
    np.testing.assert_array_equal(np.isinf(on_device), np.isinf(on_host))
    finite = np.isfinite(on_host)
    assert_close(on_device[finite], on_host[finite])


@gpu
@pytest.mark.slow
def test_more_than_two_to_the_31_elements():
    """64-bit indices: elements past 2^31 are updated (needs ~17 GB of device memory)."""
    size = (1 << 31) + 5
    free, _ = cuda.current_context().get_memory_info()
    if free < 2.2 * size * 4:
        pytest.skip("not enough device memory")
    param = cuda.device_array(size, np.float32)
    grad = cuda.device_array(size, np.float32)
    _kernels.fill(param, 1.0)
    _kernels.fill(grad, 2.0)
    fastopt.sgd_step(param, grad, lr=0.25, step=1)
    tail = param[size - 8 :].copy_to_host()
    np.testing.assert_array_equal(tail, np.float32(0.5))
    assert float(param[0:1].copy_to_host()[0]) == 0.5


@gpu
@pytest.mark.parametrize("library", ["torch", "cupy"])
def test_torch_and_cupy_arrays_are_updated_in_place(library):
    module = pytest.importorskip(library)
    if library == "torch":
        if not module.cuda.is_available():
            pytest.skip("torch is built without CUDA")
        weights = module.ones(1000, device="cuda")
    else:
        weights = module.ones(1000, dtype=module.float32)
    address = weights.__cuda_array_interface__["data"][0]
    opt = fastopt.Adam(weights, lr=0.5)
    opt.step(weights * 0 + 1)
    assert weights.__cuda_array_interface__["data"][0] == address
    assert float(weights.sum()) == pytest.approx(500.0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_loss_scale_and_clip_value_are_applied_by_the_device_kernel(case):
    """Unscaling and clipping by value need no read pass: the device kernels apply them."""
    rule, cls, kwargs = case
    param, grads = problem(200, np.float32, STEPS)
    scaled = [g * np.float32(2.0**10) for g in grads]
    expected = param.copy()
    clipped = [
        reference.clip_gradients([g], loss_scale=2.0**10, clip_value=0.5)[0][0] for g in scaled
    ]
    expected_state = run_reference(rule, cls, kwargs, expected, clipped)

    device_param = cuda.to_device(param)
    opt = cls(device_param, clip_value=0.5, **kwargs)
    for grad in scaled:
        opt.step(cuda.to_device(grad), loss_scale=2.0**10)
    assert_close(device_param.copy_to_host(), expected)
    for name, value in expected_state.items():
        assert_close(opt.state[0][name].copy_to_host(), value, err_msg=name)


@pytest.mark.parametrize("options", [{"max_norm": 1.0}, {"nonfinite": "skip"}])
def test_read_pass_options_on_device_arrays_are_a_clear_error(options):
    param = np.ones(7, np.float32)
    device_param = cuda.to_device(param)
    opt = fastopt.Adam(device_param, **options)
    with pytest.raises(TypeError, match="NumPy arrays"):
        opt.step(cuda.to_device(np.ones(7, np.float32)))
    np.testing.assert_array_equal(device_param.copy_to_host(), param)
    assert opt.step_count == 0 and opt.state == {}


def test_checkpoint_of_a_device_optimizer_round_trips(tmp_path):
    param, grads = problem(50, np.float32, STEPS)
    device_param = cuda.to_device(param)
    opt = fastopt.Adam(device_param, lr=0.01, amsgrad=True)
    for grad in grads:
        opt.step(cuda.to_device(grad))
    fastopt.save(tmp_path / "device.ckpt", opt)
    restored_param = cuda.to_device(np.zeros_like(param))
    restored = fastopt.Adam(restored_param, lr=0.01, amsgrad=True)
    fastopt.load(tmp_path / "device.ckpt").restore(restored)
    assert restored_param.copy_to_host().tobytes() == device_param.copy_to_host().tobytes()
    for name, value in opt.state[0].items():
        if name != "step":
            assert fastopt._backend.is_device_array(restored.state[0][name])
            assert (
                restored.state[0][name].copy_to_host().tobytes() == value.copy_to_host().tobytes()
            )
    assert restored.step_count == opt.step_count


@pytest.mark.parametrize("cls", [fastopt.ScheduleFreeSGD, fastopt.ScheduleFreeAdamW])
def test_schedule_free_train_and_eval_move_device_parameters(cls):
    """``eval()`` and ``train()`` blend the device parameters with the device ``z``, as the
    host class does."""
    param, grads = problem(200, np.float64, STEPS)
    host = param.copy()
    device = cuda.to_device(param)
    on_host, on_device = cls(host, lr=0.1), cls(device, lr=0.1)
    for opt in (on_host, on_device):
        opt.train()
    for grad in grads:
        on_host.step(grad)
        on_device.step(cuda.to_device(grad))
    for opt in (on_host, on_device):
        opt.eval()
    assert_close(device.copy_to_host(), host)
    assert on_device.param_groups[0]["train_mode"] is False
    for opt in (on_host, on_device):
        opt.train()
    assert_close(device.copy_to_host(), host)


# ---------------------------------------------------------------------- 16-bit formats
def _place(array):
    """A device copy of a host array: bfloat16 as a BFloat16Array (its bits)."""
    if array.dtype == BFLOAT16:
        return fastopt.cuda.BFloat16Array.from_host(array)
    return cuda.to_device(array)


def _as_float(array):
    return np.asarray(array, dtype=np.float32)


PRECISION_OPTIONS = [
    {},
    {"master_weights": True},
    {"kahan_sum": True},
    {"stochastic_rounding": True},
    {"state_dtype": "bfloat16"},
    {"state_dtype": "bfloat16", "stochastic_rounding": True, "master_weights": True},
]


@pytest.mark.parametrize("options", PRECISION_OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sixteen_bit_parameters_and_bfloat16_state_match_the_host(dtype, options):
    dtype = np.dtype(BFLOAT16 if dtype == "bfloat16" else np.float16)
    rng = np.random.default_rng(7)
    start = rng.standard_normal(200).astype(np.float32).astype(dtype)
    grads = [(rng.standard_normal(200) * 0.1).astype(dtype) for _ in range(STEPS)]
    grads[-1] = grads[-1].astype(np.float32)  # a 16-bit parameter takes float32 gradients too
    on_host = start.copy()
    host_opt = fastopt.AdamW(on_host, lr=0.01, seed=3, **options)
    on_device = _place(start)
    device_opt = fastopt.AdamW(on_device, lr=0.01, seed=3, **options)
    for grad in grads:
        host_opt.step(grad)
        device_opt.step(_place(grad))
    # The stores round the same values (to nearest or with the same random bits): equal to
    # the 16-bit format's rounding of values that agree to float32's.
    np.testing.assert_allclose(_as_float(host(on_device)), _as_float(on_host), rtol=2**-7)
    assert not np.array_equal(_as_float(host(on_device)), _as_float(start)), "nothing moved"
    expected = host_opt.state[0]
    assert sorted(device_opt.state[0]) == sorted(expected)
    saved = device_opt.state_dict()["state"][0]
    for name, value in device_opt.state[0].items():
        if name == "step":
            continue
        assert fastopt._backend.is_device_array(value), f"{name} is not on the device"
        assert saved[name].dtype == expected[name].dtype, name
        if expected[name].dtype == BFLOAT16:
            np.testing.assert_allclose(
                _as_float(saved[name]), _as_float(expected[name]), rtol=2**-7, atol=1e-6
            )
        else:
            assert_close(saved[name], expected[name], err_msg=name)
    # A checkpoint resumes on the device, bit for bit.
    resumed = _place(host(on_device))
    again = fastopt.AdamW(resumed, lr=0.01, seed=3, **options)
    again.load_state_dict(device_opt.state_dict())
    grad = _place(grads[0])
    device_opt.step(grad)
    again.step(grad)
    assert host(resumed).tobytes() == host(on_device).tobytes()


def test_bfloat16_array_wraps_uint16_bits_only():
    from fastopt.cuda import BFloat16Array

    values = np.array([1.0, -2.5, 3.0], BFLOAT16)
    wrapped = BFloat16Array.from_host(values)
    assert (wrapped.shape, wrapped.size, wrapped.dtype) == ((3,), 3, BFLOAT16)
    assert wrapped.copy_to_host().tobytes() == values.tobytes()
    assert wrapped.__cuda_array_interface__["typestr"] == "<u2"
    for bits in (np.uint16, np.int16):  # torch's bits: tensor.view(torch.int16)
        wrapped = BFloat16Array(cuda.to_device(values.view(bits)))
        assert wrapped.copy_to_host().tobytes() == values.tobytes()
        param, grad = wrapped, BFloat16Array.from_host(np.ones(3, BFLOAT16))
        fastopt.SGD(param, lr=0.5).step(grad)
        assert host(param).tobytes() == (values - np.float32(0.5)).astype(BFLOAT16).tobytes()
    with pytest.raises(TypeError, match="dtype uint16 or int16"):
        BFloat16Array(cuda.to_device(np.zeros(3, np.float32)))
    with pytest.raises(TypeError, match="uint16 or int16 device array"):
        BFloat16Array(values.view(np.uint16))
    with pytest.raises(TypeError, match="dtype bfloat16"):
        BFloat16Array.from_host(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="must have dtype float32, float64, float16 or bfloat16"):
        fastopt.Adam(cuda.to_device(np.zeros(3, np.uint16)))


# 8-bit state: parameters of 256 elements and more quantized here (4,096 otherwise), so that
# the simulator steps a few blocks (600 elements: the last one partial) and a small parameter
# beside them.
EIGHT_BIT_CASES = [
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("Adagrad", {"lr": 0.05}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    ("Lion", {"lr": 0.01}),
    ("ScheduleFreeAdamW", {"lr": 0.01}),
    # The norms' read pass decodes the state too.
    ("Lamb", {"lr": 0.01, "weight_decay": 0.01}),
    ("LARS", {"lr": 0.1}),
]


@pytest.fixture
def small_quantized(monkeypatch):
    monkeypatch.setattr(fastopt.precision, "MIN_QUANTIZED_SIZE", 256)


def _eight_bit_twins(name, kwargs, dtype=np.float32, **options):
    rng = np.random.default_rng(9)
    shapes = [(20, 30), (5,)]  # a matrix: LAMB's and LARS's trust ratios apply
    start = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    on_host = [a.copy() for a in start]
    on_device = [_place(a) for a in start]
    cls = getattr(fastopt, name)
    pair = [cls(params, state_dtype="int8", **kwargs, **options) for params in (on_host, on_device)]
    for opt in pair:
        if hasattr(opt, "train"):
            opt.train()
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in shapes] for _ in range(3)]
    return on_host, on_device, pair, grads


@pytest.mark.parametrize(("name", "kwargs"), EIGHT_BIT_CASES, ids=[n for n, _ in EIGHT_BIT_CASES])
def test_eight_bit_state_matches_the_host(small_quantized, name, kwargs):
    on_host, on_device, (host_opt, device_opt), grads = _eight_bit_twins(name, kwargs)
    for step_grads in grads:
        host_opt.step(step_grads)
        device_opt.step([cuda.to_device(g) for g in step_grads])
    for index, expected in enumerate(on_host):
        assert_close(host(on_device[index]), expected)
        entry, expected_entry = device_opt.state[index], host_opt.state[index]
        assert sorted(entry) == sorted(expected_entry)
        for key, value in expected_entry.items():
            if key == "step" or not isinstance(value, np.ndarray):
                assert entry[key] == value, key
                continue
            assert fastopt._backend.is_device_array(entry[key]), f"{key} is not on the device"
            actual = host(entry[key])
            assert actual.dtype == value.dtype, key
            if value.dtype == np.uint8:  # codes: the same values round to the same codes
                assert np.mean(actual == value) > 0.99, key
            else:
                assert_close(actual, value, err_msg=key)
    # The large parameter's state is quantized (the small one's is not).
    assert any(v.dtype == np.uint8 for v in host_opt.state[0].values() if hasattr(v, "dtype"))


def test_eight_bit_state_of_float64_parameters_encodes_in_float32(small_quantized):
    on_host, on_device, (host_opt, device_opt), grads = _eight_bit_twins(
        "Adam", {"lr": 0.01}, np.float64
    )
    for step_grads in grads:
        host_opt.step(step_grads)
        device_opt.step([cuda.to_device(g) for g in step_grads])
    assert_close(host(on_device[0]), on_host[0])
    for key in ("exp_avg", "exp_avg_sq"):
        assert np.mean(host(device_opt.state[0][key]) == host_opt.state[0][key]) > 0.99, key
        np.testing.assert_array_equal(
            host(device_opt.state[0][f"{key}_absmax"]), host_opt.state[0][f"{key}_absmax"]
        )


def test_eight_bit_state_on_bfloat16_parameters_with_a_master_copy(small_quantized):
    _, on_device, (host_opt, device_opt), grads = _eight_bit_twins(
        "Adam", {"lr": 0.01}, BFLOAT16, master_weights=True, stochastic_rounding=True
    )
    for step_grads in grads:
        host_opt.step(step_grads)
        device_opt.step([_place(g) for g in step_grads])
    for index in range(2):
        for key, value in host_opt.state[index].items():
            if key != "step":
                actual = host(device_opt.state[index][key])
                if value.dtype == np.uint8:
                    assert np.mean(actual == value) > 0.99, key
                else:
                    assert_close(actual, value, err_msg=key)
        np.testing.assert_allclose(
            _as_float(host(on_device[index])), _as_float(host_opt._params[index]), rtol=2**-7
        )


def test_eight_bit_checkpoints_resume_on_the_device_and_convert(small_quantized):
    _, on_device, (_, device_opt), grads = _eight_bit_twins("Adam", {"lr": 0.01})
    device_opt.step([cuda.to_device(g) for g in grads[0]])
    saved = device_opt.state_dict()
    assert saved["state"][0]["exp_avg"].dtype == np.uint8
    assert saved["state"][0]["exp_avg_absmax"].shape == (3,)
    dequantized = device_opt.state_dict(dequantize=True)["state"][0]
    assert dequantized["exp_avg"].dtype == np.float32 and "exp_avg_absmax" not in dequantized
    resumed = [_place(host(p)) for p in on_device]
    again = fastopt.Adam(resumed, lr=0.01, state_dtype="int8")
    again.load_state_dict(saved)
    for step_grads in grads[1:]:
        device_opt.step([cuda.to_device(g) for g in step_grads])
        again.step([cuda.to_device(g) for g in step_grads])
    for mine, theirs in zip(resumed, on_device, strict=True):
        assert host(mine).tobytes() == host(theirs).tobytes()
    # float32 state switched to 8-bit mid-run: encoded on the host, placed on the device.
    plain = fastopt.Adam([_place(host(p)) for p in on_device], lr=0.01)
    plain.step([cuda.to_device(g) for g in grads[0]])
    plain.param_groups[0]["state_dtype"] = "int8"
    plain.step([cuda.to_device(g) for g in grads[1]])
    codes = plain.state[0]["exp_avg"]
    assert fastopt._backend.is_device_array(codes) and host(codes).dtype == np.uint8
    assert plain.state[1]["exp_avg"].dtype == np.float32  # 5 elements: not quantized


@pytest.mark.parametrize("nesterov", [True, False])
def test_eight_bit_state_of_a_matrix_step_matches_the_host(small_quantized, nesterov):
    # Muon's direction pass decodes the momentum before the Newton-Schulz iterations.
    rng = np.random.default_rng(10)
    shapes = [(20, 30), (17, 16), (3, 4)]  # 3 blocks, 2 (the last partial), not quantized
    start = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    on_host, on_device = [a.copy() for a in start], [_place(a) for a in start]
    pair = [
        fastopt.Muon(params, lr=0.02, nesterov=nesterov, state_dtype="int8")
        for params in (on_host, on_device)
    ]
    for _ in range(3):
        grads = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
        pair[0].step(grads)
        pair[1].step([cuda.to_device(g) for g in grads])
    for index, expected in enumerate(on_host):
        assert_close(host(on_device[index]), expected)
        for key, value in pair[0].state[index].items():
            if not isinstance(value, np.ndarray):
                assert pair[1].state[index][key] == value, key
                continue
            actual = host(pair[1].state[index][key])
            assert actual.dtype == value.dtype, key
            if value.dtype == np.uint8:
                assert np.mean(actual == value) > 0.99, key
            else:
                assert_close(actual, value, err_msg=key)
    assert pair[1].state[0]["momentum_buffer"].dtype == np.uint8
    assert pair[1].state[2]["momentum_buffer"].dtype == np.float32


def test_functional_step_takes_sixteen_bit_device_arrays():
    rng = np.random.default_rng(8)
    param = rng.standard_normal(100).astype(BFLOAT16)
    grad = (rng.standard_normal(100) * 0.1).astype(np.float32)
    state = [np.zeros(100, BFLOAT16), np.zeros(100, BFLOAT16)]
    on_device = [_place(a) for a in (param, *state)]
    fastopt.adam_step(param, grad, *state, step=1, lr=0.01)
    fastopt.adam_step(on_device[0], cuda.to_device(grad), *on_device[1:], step=1, lr=0.01)
    for expected, array in zip((param, *state), on_device, strict=True):
        np.testing.assert_allclose(_as_float(host(array)), _as_float(expected), rtol=2**-7)
    with pytest.raises(TypeError, match="exp_avg must have dtype float32 or bfloat16"):
        fastopt.adam_step(
            on_device[0],
            cuda.to_device(grad),
            cuda.to_device(np.zeros(100, np.float16)),
            on_device[2],
            step=2,
        )
