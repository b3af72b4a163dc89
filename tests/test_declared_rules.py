"""What every declared rule promises, read from its declaration: each hyperparameter refuses
a bad value before anything is written (constructor, ``param_groups`` edit, functional step),
a bool option refuses a non-bool, and the class, the functional step and the NumPy reference
take the declared names."""

import inspect

import numpy as np
import pytest
from rule_cases import CASES

import fastopt
from fastopt import reference
from fastopt._checks import check_bool, check_nonnegative

CLASSES = sorted({cls for _, cls, _ in CASES}, key=lambda cls: cls.__name__)
# A value each kind of check refuses, and the error it raises.
BAD = {check_nonnegative: (-1.0, ValueError), check_bool: (1, TypeError)}


def bad_values(cls):
    for hyperparameter in cls._rule.hyperparameters:
        if hyperparameter.name in cls._fixed:
            continue
        if hyperparameter.check in BAD:
            yield hyperparameter.name, *BAD[hyperparameter.check]


CASES_BAD = [(cls, *bad) for cls in CLASSES for bad in bad_values(cls)]


def ids(case):
    cls, name, value, _ = case
    return f"{cls.__name__}-{name}={value!r}"


@pytest.mark.parametrize("case", CASES_BAD, ids=ids)
def test_a_bad_hyperparameter_is_refused_before_any_write(case):
    cls, name, value, error = case
    with pytest.raises(error, match=name):
        cls(np.ones(3), **{name: value})
    param = np.linspace(-1.0, 1.0, 5)
    opt = cls(param, lr=0.01)
    opt.step(np.ones(5))
    before = param.copy(), {k: np.copy(v) for k, v in opt.state[0].items()}
    opt.param_groups[0][name] = value
    with pytest.raises(error, match=name):
        opt.step(np.ones(5))
    np.testing.assert_array_equal(param, before[0])
    for key, kept in before[1].items():
        np.testing.assert_array_equal(opt.state[0][key], kept)


@pytest.mark.parametrize("case", CASES_BAD, ids=ids)
def test_the_functional_step_refuses_the_same_values(case):
    cls, name, value, error = case
    rule = cls._rule
    step = getattr(fastopt, f"{rule.snake_name}_step")
    param = np.ones(4)
    states = [np.zeros(4) if not state.optional else None for state in rule.state]
    options = {
        scalar.name: scalar.initial_value({"lr": 0.01}, np.dtype(np.float32))
        for scalar in rule.scalars
    }
    if rule.counts_steps:
        options["step"] = 1
    with pytest.raises(error, match=name):
        step(param, np.ones(4), *states, **options, **{name: value})
    assert np.all(param == 1.0) and all(s is None or not s.any() for s in states)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_class_functional_step_and_reference_take_the_declared_names(cls):
    rule = cls._rule
    names = [h.name for h in rule.hyperparameters]
    expected = [name for name in names if name not in cls._fixed]
    assert list(inspect.signature(cls).parameters)[1 : 1 + len(expected)] == expected
    step = getattr(fastopt, f"{rule.snake_name}_step")
    ours = inspect.signature(step).parameters
    assert list(ours)[2 : 2 + len(rule.state)] == list(rule.state_names)
    theirs = inspect.signature(getattr(reference, f"{rule.snake_name}_step")).parameters
    positional = [p for p in theirs.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert len(positional) == 2 + len(rule.state)  # param, grad, the state (its own names)
    for parameters in (ours, theirs):
        assert set(names) <= set(parameters)
        assert ("step" in parameters) == rule.counts_steps
        assert set(rule.scalar_names) <= set(parameters)
