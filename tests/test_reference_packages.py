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
    "Lamb": (
        "pytorch_optimizer",
        "Lamb",
        [
            {},
            {"lr": 0.01},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-8},
            {"lr": 0.01, "weight_decay": 0.1},
            {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": False},
            {"lr": 0.01, "weight_decay": 0.1, "fixed_decay": True},
            {"lr": 0.01, "grad_averaging": False},
            {"lr": 0.01, "adam": True},
            {"lr": 0.01, "maximize": True},
        ],
    ),
    "LARS": (
        "pytorch_optimizer",
        "LARS",
        [
            {},
            {"lr": 0.1},
            {"lr": 0.1, "weight_decay": 0.1},
            {"lr": 0.1, "weight_decay": 0.1, "trust_coefficient": 0.05},
            {"lr": 0.1, "momentum": 0.0},
            {"lr": 0.1, "momentum": 0.9, "dampening": 0.5},
            {"lr": 0.1, "nesterov": True},
            {"lr": 0.1, "maximize": True},
        ],
    ),
    "ScheduleFreeSGD": (
        "schedulefree",
        "SGDScheduleFree",
        [
            {},
            {"lr": 0.1},
            {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.1},
            {"lr": 0.1, "warmup_steps": 5, "r": 1.0, "weight_lr_power": 1.0},
        ],
    ),
    "ScheduleFreeAdamW": (
        "schedulefree",
        "AdamWScheduleFree",
        [
            {},
            {"lr": 0.01},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 0.01, "warmup_steps": 5, "r": 1.0, "weight_lr_power": 1.0},
        ],
    ),
}

# Diagnostics a reference keeps in its state and fastopt does not.
DIAGNOSTICS = {"Lamb": {"weight_norm", "adam_norm", "trust_ratio"}}

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
    opt = training(reference_class(name)(tensors, **options))
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads, strict=True):
            tensor.grad = torch.from_numpy(-grad if negate else grad.copy())
        opt.step()
    states = []
    for tensor in tensors:
        state = {
            k: v.detach().numpy().copy()
            for k, v in opt.state[tensor].items()
            if k not in DIAGNOSTICS.get(name, ())
        }
        if name == "Adan":
            state["previous_grad"] = -state["previous_grad"]  # the package keeps -g
        states.append(state)
    return [t.detach().numpy() for t in tensors], states


def training(opt):
    """A Schedule-Free optimizer put in training mode (its package's classes and fastopt's
    start in evaluation mode); any other optimizer as it is."""
    if hasattr(opt, "train"):
        opt.train()
    return opt


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

    opt = training(getattr(fastopt, name)(params, **options))
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
    opt = training(getattr(ft, name)(tensors, **options))
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
    fastopt_only = {*fastopt.precision.PRECISION_DEFAULTS, "seed"}
    for key, parameter in ours.items():
        if key == "params" or parameter.kind is parameter.VAR_KEYWORD or key in fastopt_only:
            continue
        assert key in reference, key
        assert parameter.default == reference[key].default, key
    # The same order for the hyperparameters both take (positional calls port over).
    shared = [key for key in reference if key in ours]
    assert shared == [key for key in ours if key in reference]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "name", ["AdEMAMix", "Adan", "Lamb", "LARS", "ScheduleFreeSGD", "ScheduleFreeAdamW"]
)
def test_both_reference_implementations_agree_with_fastopt(name, foreach, dtype):
    """pytorch_optimizer's per-parameter and foreach paths, against one fastopt run."""
    options = {"lr": 0.01, "weight_decay": 0.1}
    params, grads = problem(dtype, seed=2)
    expected_params, expected_states = run_reference(
        name, {**options, "foreach": foreach}, params, grads
    )
    opt = training(getattr(fastopt, name)(params, **options))
    for step_grads in grads:
        opt.step(step_grads)
    states = [
        {k: v for k, v in opt.state[i].items() if isinstance(v, np.ndarray)}
        for i in range(len(params))
    ]
    check(params, states, expected_params, expected_states)


# ---------------------------------------------------------------------- Schedule-Free


SCHEDULE_FREE = ["ScheduleFreeSGD", "ScheduleFreeAdamW"]


def _schedule_free_pair(name, options, dtype=np.float64, seed=3):
    params, grads = problem(dtype, seed=seed)
    theirs = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    ours = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    return (
        params,
        grads,
        (theirs, reference_class(name)(theirs, **options)),
        (ours, getattr(ft, name)(ours, **options)),
    )


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_train_eval_cycles_match_the_package(name):
    """Steps in training mode, eval() and train() between them (the parameters move between
    y and x), both APIs: the package's parameters, state and group values."""
    params, grads, (theirs, reference), (ours, adapter) = _schedule_free_pair(
        name, {"lr": 0.05, "warmup_steps": 3, "weight_decay": 0.01}
    )
    numpy_params = [p.copy() for p in params]
    numpy_opt = getattr(fastopt, name)(numpy_params, lr=0.05, warmup_steps=3, weight_decay=0.01)
    for opt in (reference, adapter, numpy_opt):
        opt.train()
    for step, step_grads in enumerate(grads):
        for tensors in (theirs, ours):
            for tensor, grad in zip(tensors, step_grads, strict=True):
                tensor.grad = torch.from_numpy(grad.copy())
        reference.step()
        adapter.step()
        numpy_opt.step(step_grads)
        if step % 4 == 3:
            for opt in (reference, adapter, numpy_opt):
                opt.eval()
            for mine, numpy_param, expected in zip(ours, numpy_params, theirs, strict=True):
                assert_close(mine.detach().numpy(), expected.detach().numpy(), err_msg="x")
                assert_close(numpy_param, expected.detach().numpy(), err_msg="x, numpy")
            for opt in (reference, adapter, numpy_opt):
                opt.train()
    for mine, expected in zip(ours, theirs, strict=True):
        assert_close(mine.detach().numpy(), expected.detach().numpy())
        for key, value in reference.state[expected].items():
            assert_close(adapter.state[mine][key].numpy(), value.numpy(), err_msg=key)
    for group, expected, numpy_group in zip(
        adapter.param_groups, reference.param_groups, numpy_opt.param_groups, strict=True
    ):
        for key in ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr"):
            assert group[key] == pytest.approx(expected[key], rel=1e-12), key
            assert numpy_group[key] == group[key], key


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_state_dicts_hold_what_the_package_holds_and_load_both_ways(name):
    _, grads, (theirs, reference), (ours, adapter) = _schedule_free_pair(name, {"lr": 0.05})
    for opt in (reference, adapter):
        opt.train()
    for step_grads in grads[:5]:
        for tensors in (theirs, ours):
            for tensor, grad in zip(tensors, step_grads, strict=True):
                tensor.grad = torch.from_numpy(grad.copy())
        reference.step()
        adapter.step()
    saved_theirs, saved_ours = reference.state_dict(), adapter.state_dict()
    # Beyond the package's keys, fastopt's precision options.
    ours_keys = set(saved_ours["param_groups"][0]) - set(fastopt.precision.PRECISION_DEFAULTS)
    assert ours_keys == set(saved_theirs["param_groups"][0])
    assert saved_ours["param_groups"][0]["foreach"] is False  # the package's per-tensor loop
    assert [sorted(entry) for entry in saved_ours["state"].values()] == [
        sorted(entry) for entry in saved_theirs["state"].values()
    ]
    # Each loads the other's checkpoint into a fresh optimizer over the same parameters, and
    # the runs continue alike.
    fresh_ours = [torch.nn.Parameter(t.detach().clone()) for t in theirs]
    fresh_theirs = [torch.nn.Parameter(t.detach().clone()) for t in ours]
    continued_ours = getattr(ft, name)(fresh_ours, lr=0.05)
    continued_ours.load_state_dict(saved_theirs)
    continued_theirs = reference_class(name)(fresh_theirs, lr=0.05)
    continued_theirs.load_state_dict(saved_ours)
    for step_grads in grads[5:]:
        for tensors in (theirs, fresh_ours, fresh_theirs):
            for tensor, grad in zip(tensors, step_grads, strict=True):
                tensor.grad = torch.from_numpy(grad.copy())
        for opt in (reference, continued_ours, continued_theirs):
            opt.step()
    for expected, mine, other in zip(theirs, fresh_ours, fresh_theirs, strict=True):
        assert_close(mine.detach().numpy(), expected.detach().numpy())
        assert_close(other.detach().numpy(), expected.detach().numpy())


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_step_outside_training_mode_is_an_error_and_changes_nothing(name):
    params, grads = problem(np.float64)
    arrays = [p.copy() for p in params]
    opt = getattr(fastopt, name)(arrays, lr=0.1)
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step(grads[0])
    for array, param in zip(arrays, params, strict=True):
        np.testing.assert_array_equal(array, param)
    assert opt.state == {} and opt.param_groups[0]["k"] == 0
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    adapter = getattr(ft, name)(tensors, lr=0.1)
    for tensor, grad in zip(tensors, grads[0], strict=True):
        tensor.grad = torch.from_numpy(grad.copy())
    with pytest.raises(RuntimeError, match="not in train mode"):
        adapter.step()
    adapter.train()
    adapter.step()
    adapter.eval()
    with pytest.raises(RuntimeError, match="not in train mode"):
        adapter.step()
