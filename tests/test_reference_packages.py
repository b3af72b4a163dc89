"""The rules torch.optim lacks against their reference packages: fastopt's NumPy class and its
fastopt.torch class, several steps, float32 and float64, several option sets, parameters and
state (each comparison skips without its package: ``pip install "fastopt[test]"``)."""

from __future__ import annotations

import numpy as np
import pytest
from rule_cases import assert_close

import fastopt

torch = pytest.importorskip("torch", reason="torch is not installed: no reference comparison")
import fastopt.torch as ft  # noqa: E402

STEPS = 12
SHAPES = [(1,), (7,), (31, 33)]

# (fastopt class, the reference package, its class, option sets); every option set is given
# to fastopt and to the reference as it is.
RULES = {
    "Lion": (
        "lion_pytorch",
        "Lion",
        [
            {},
            {"lr": 0.01},
            {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.1},
            {"lr": 3e-3, "betas": (0.95, 0.98), "weight_decay": 1.0},
        ],
    ),
    "AdEMAMix": (
        "pytorch_optimizer",
        "AdEMAMix",
        [
            {},
            {"lr": 0.01},
            {"lr": 0.01, "alpha": 2.0, "t_alpha_beta3": 5.0},
            {"lr": 0.01, "betas": (0.8, 0.99, 0.999), "t_alpha_beta3": 20, "eps": 1e-6},
            {"lr": 0.01, "weight_decay": 0.1},
            {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": True},
            {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True},
            {"lr": 0.01, "maximize": True},
        ],
    ),
    "Adan": (
        "pytorch_optimizer",
        "Adan",
        [
            {},
            {"lr": 0.01},
            {"lr": 0.01, "betas": (0.9, 0.8, 0.95), "eps": 1e-6},
            {"lr": 0.01, "weight_decay": 0.1},
            {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": True},
            {"lr": 0.01, "maximize": True},
        ],
    ),
}

CASES = [
    pytest.param(name, options, id=f"{name}({','.join(f'{k}={v}' for k, v in options.items())})")
    for name, (_, _, option_sets) in RULES.items()
    for options in option_sets
]


def problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES] for _ in range(STEPS)]
    return params, grads


def reference_class(name):
    package, class_name, _ = RULES[name]
    module = pytest.importorskip(package, reason=f"{package} is not installed")
    return getattr(module, class_name)


def run_reference(name, options, params, grads):
    """The reference package's parameters and state after every step (its own classes write
    the gradient in place: each step gets fresh copies)."""
    options = dict(options)
    negate = False
    if name == "Adan" and options.pop("maximize", False):
        # pytorch_optimizer's Adan records the first gradient before negating it (its first
        # difference is then -2g, not 0): maximizing is minimizing with the negated gradient.
        negate = True
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = reference_class(name)(tensors, **options)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads, strict=True):
            tensor.grad = torch.from_numpy(-grad if negate else grad.copy())
        opt.step()
    states = []
    for tensor in tensors:
        state = {k: v.detach().numpy().copy() for k, v in opt.state[tensor].items()}
        if name == "Adan":
            state["previous_grad"] = -state["previous_grad"]  # the package keeps -g
        states.append(state)
    return [t.detach().numpy() for t in tensors], states


def check(params, states, expected_params, expected_states):
    for index, (param, expected) in enumerate(zip(params, expected_params, strict=True)):
        assert param.dtype == expected.dtype
        assert_close(param, expected, err_msg=f"param {index}")
    for index, (state, expected) in enumerate(zip(states, expected_states, strict=True)):
        assert sorted(state) == sorted(expected), index
        for key, value in expected.items():
            assert_close(state[key], value, err_msg=f"{key} of param {index}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_numpy_class_matches_the_reference_package(name, options, dtype):
    params, grads = problem(dtype)
    expected_params, expected_states = run_reference(name, options, params, grads)

    opt = getattr(fastopt, name)(params, **options)
    for step_grads in grads:
        opt.step(step_grads)

    states = []
    for index in range(len(params)):
        assert opt.state[index]["step"] == STEPS
        states.append({k: v for k, v in opt.state[index].items() if isinstance(v, np.ndarray)})
    check(params, states, expected_params, expected_states)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_torch_class_matches_the_reference_package(name, options, dtype):
    params, grads = problem(dtype, seed=1)
    expected_params, expected_states = run_reference(name, options, params, grads)

    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = getattr(ft, name)(tensors, **options)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads, strict=True):
            tensor.grad = torch.from_numpy(grad.copy())
        opt.step()

    for tensor, grad in zip(tensors, grads[-1], strict=True):
        np.testing.assert_array_equal(tensor.grad.numpy(), grad)  # the gradient is not written
    states = [
        {k: v.detach().numpy() for k, v in opt.state[t].items() if k != "step"} for t in tensors
    ]
    check([t.detach().numpy() for t in tensors], states, expected_params, expected_states)
    saved = opt.state_dict()
    assert saved["param_groups"][0]["lr"] == options.get("lr", opt.defaults["lr"])


@pytest.mark.parametrize("name", list(RULES))
def test_defaults_are_the_reference_packages(name):
    import inspect

    reference = inspect.signature(reference_class(name)).parameters
    ours = inspect.signature(getattr(fastopt, name)).parameters
    for key, parameter in ours.items():
        if key == "params" or parameter.kind is parameter.VAR_KEYWORD:
            continue
        assert key in reference, key
        assert parameter.default == reference[key].default, key
    # The same order for the hyperparameters both take (positional calls port over).
    shared = [key for key in reference if key in ours]
    assert shared == [key for key in ours if key in reference]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["AdEMAMix", "Adan"])
def test_both_reference_implementations_agree_with_fastopt(name, foreach, dtype):
    """pytorch_optimizer's per-parameter and foreach paths, against one fastopt run."""
    options = {"lr": 0.01, "weight_decay": 0.1}
    params, grads = problem(dtype, seed=2)
    expected_params, expected_states = run_reference(
        name, {**options, "foreach": foreach}, params, grads
    )
    opt = getattr(fastopt, name)(params, **options)
    for step_grads in grads:
        opt.step(step_grads)
    states = [
        {k: v for k, v in opt.state[i].items() if isinstance(v, np.ndarray)}
        for i in range(len(params))
    ]
    check(params, states, expected_params, expected_states)
