"""Bad input raises a clear TypeError/ValueError naming the argument, and changes nothing."""

import numpy as np
import pytest

import fastopt

CLASSES = [fastopt.SGD, fastopt.Adagrad, fastopt.RMSprop, fastopt.Adam, fastopt.AdamW]


def snapshot(*arrays):
    return [a.tobytes() for a in arrays]


def params_and_grads(count=3, size=5, dtype=np.float64):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(dtype) for _ in range(count)]
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(count)]
    return params, grads


def readonly(size=4):
    array = np.zeros(size)
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ([1.0, 2.0], TypeError, "numpy.ndarray"),
        (np.zeros(3, dtype=np.int64), TypeError, "float32 or float64"),
        (np.zeros(3, dtype=np.float16), TypeError, "float32 or float64"),
        (np.zeros((4, 4))[:, 1], ValueError, "C-contiguous"),
        (readonly(), ValueError, "writeable"),
        ([], ValueError, "empty"),
        ("weights", TypeError, "params must be"),
        ([{"params": []}], ValueError, "no parameters"),
        ([{"lr": 0.1}], ValueError, "'params'"),
        ([{"params": [np.zeros(2)], "betas2": 0.1}], ValueError, "unknown keys"),
    ],
)
def test_constructor_rejects_bad_params(cls, params, error, match):
    with pytest.raises(error, match=match):
        cls(params)


@pytest.mark.parametrize("cls", CLASSES)
def test_duplicate_or_overlapping_params_are_rejected(cls):
    p = np.zeros(10)
    with pytest.raises(ValueError, match="appears twice"):
        cls([p, p])
    with pytest.raises(ValueError, match="appears twice"):
        cls([{"params": [p[:6]]}, {"params": [p[4:]]}])


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (fastopt.SGD, {"lr": -0.1}, "Invalid lr"),
        (fastopt.SGD, {"momentum": -0.5}, "Invalid momentum"),
        (fastopt.SGD, {"weight_decay": -1.0}, "Invalid weight_decay"),
        (fastopt.SGD, {"nesterov": True}, "nesterov=True requires"),
        (fastopt.SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov"),
        (fastopt.SGD, {"lr": float("nan")}, "must be finite"),
        (fastopt.Adagrad, {"lr_decay": -1.0}, "Invalid lr_decay"),
        (fastopt.Adagrad, {"eps": -1e-10}, "Invalid eps"),
        (fastopt.Adagrad, {"initial_accumulator_value": -0.1}, "initial_accumulator_value"),
        (fastopt.RMSprop, {"alpha": -0.1}, "Invalid alpha"),
        (fastopt.RMSprop, {"momentum": float("inf")}, "must be finite"),
        (fastopt.Adam, {"betas": (1.0, 0.999)}, r"beta1.*\[0, 1\)"),
        (fastopt.Adam, {"betas": (0.9, -0.1)}, r"beta2.*\[0, 1\)"),
        (fastopt.Adam, {"betas": (0.9,)}, "pair"),
        (fastopt.Adam, {"eps": -1e-8}, "Invalid eps"),
        (fastopt.AdamW, {"weight_decay": -0.01}, "Invalid weight_decay"),
        (fastopt.Adam, {"amsgrad": "yes"}, "amsgrad must be a bool"),
        (fastopt.Adam, {"lr": "0.1"}, "lr must be a real number"),
    ],
)
def test_constructor_rejects_bad_hyperparameters(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(np.zeros(3), **kwargs)


def bad_grads(params, grads):
    """(description, grads argument, error, match) for a three-parameter optimizer."""
    wrong_dtype = [*grads[:2], grads[2].astype(np.float32)]
    wrong_shape = [*grads[:2], np.zeros(6)]
    strided = [*grads[:2], np.zeros(10)[::2]]
    aliased = [*grads[:2], params[2]]
    aliased_view = [*grads[:2], params[2][::-1]]
    return [
        ("dtype", wrong_dtype, TypeError, r"grads\[2\].*dtype"),
        ("shape", wrong_shape, ValueError, r"grads\[2\].*shape"),
        ("strided", strided, ValueError, r"grads\[2\].*C-contiguous"),
        ("alias", aliased, ValueError, r"grads\[2\] shares memory"),
        ("alias-view", aliased_view, ValueError, "shares memory|C-contiguous"),
        ("length", grads[:2], ValueError, "2 entries, expected 3"),
        ("single array", grads[0], TypeError, "list of 3"),
        ("not arrays", [1.0, 2.0, 3.0], TypeError, "numpy.ndarray"),
        ("a dict", {"a": 1}, TypeError, "grads must be"),
    ]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("which", range(9))
def test_step_rejects_bad_grads_before_writing(cls, which):
    params, grads = params_and_grads()
    opt = cls(params, lr=0.1)
    opt.step(grads)  # state exists now, and must stay as it is
    state_before = {i: {k: np.copy(v) for k, v in s.items()} for i, s in opt.state.items()}
    before = snapshot(*params)
    _, bad, error, match = bad_grads(params, grads)[which]
    with pytest.raises(error, match=match):
        opt.step(bad)
    assert snapshot(*params) == before
    for index, entry in state_before.items():
        for key, value in entry.items():
            np.testing.assert_array_equal(opt.state[index][key], value)
    assert opt.step_count == 1


@pytest.mark.parametrize("cls", CLASSES)
def test_hyperparameter_edited_to_invalid_value_fails_before_any_group_updates(cls):
    params, grads = params_and_grads()
    opt = cls([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)
    before = snapshot(*params)
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid lr"):
        opt.step(grads)
    assert snapshot(*params) == before
    assert opt.state == {}
    opt.param_groups[1]["lr"] = 0.1
    opt.step(grads)
    assert snapshot(*params) != before


FUNCTIONAL_BAD_CALLS = [
    (
        "sgd momentum without buffer",
        lambda p, g, s: fastopt.sgd_step(p, g, lr=0.1, momentum=0.9),
        "momentum_buffer is required",
    ),
    (
        "sgd buffer aliases param",
        lambda p, g, s: fastopt.sgd_step(p, g, p, lr=0.1, momentum=0.9),
        "share memory",
    ),
    (
        "adam exp_avg is exp_avg_sq",
        lambda p, g, s: fastopt.adam_step(p, g, s[0], s[0], lr=0.1, step=1),
        "share memory",
    ),
    (
        "adam step 0",
        lambda p, g, s: fastopt.adam_step(p, g, s[0], s[1], lr=0.1, step=0),
        "Invalid step",
    ),
    (
        "adam step float",
        lambda p, g, s: fastopt.adam_step(p, g, s[0], s[1], step=1.0),
        "step must be an int",
    ),
    (
        "adam state wrong dtype",
        lambda p, g, s: fastopt.adam_step(p, g, s[0].astype(np.float32), s[1], step=1),
        "exp_avg must have the parameter's dtype",
    ),
    (
        "adam state wrong size",
        lambda p, g, s: fastopt.adam_step(p, g, np.zeros(3), s[1], step=1),
        "exp_avg must have the parameter's size",
    ),
    (
        "adam beta2 = 1",
        lambda p, g, s: fastopt.adam_step(p, g, s[0], s[1], beta2=1.0, step=1),
        "beta2",
    ),
    (
        "adagrad negative lr",
        lambda p, g, s: fastopt.adagrad_step(p, g, s[0], lr=-1.0, step=1),
        "Invalid lr",
    ),
    (
        "rmsprop momentum without buffer",
        lambda p, g, s: fastopt.rmsprop_step(p, g, s[0], momentum=0.9),
        "momentum_buffer is required",
    ),
    (
        "rmsprop grad_avg aliases square_avg",
        lambda p, g, s: fastopt.rmsprop_step(p, g, s[0], None, s[0]),
        "share memory",
    ),
    (
        "rmsprop readonly state",
        lambda p, g, s: fastopt.rmsprop_step(p, g, readonly(5)),
        "writeable",
    ),
]


@pytest.mark.parametrize(("name", "call", "match"), FUNCTIONAL_BAD_CALLS, ids=lambda x: x)
def test_functional_rejects_bad_input_before_writing(name, call, match):
    (p,), (g,) = params_and_grads(count=1)
    state = [np.ones(5), np.ones(5)]
    before = snapshot(p, g, *state)
    with pytest.raises((TypeError, ValueError), match=match):
        call(p, g, state)
    assert snapshot(p, g, *state) == before


@pytest.mark.parametrize("cls", CLASSES)
def test_nan_and_inf_gradients_propagate(cls):
    param = np.ones(6, dtype=np.float32)
    grad = np.array([np.nan, np.inf, -np.inf, 1.0, 0.0, -1.0], dtype=np.float32)
    opt = cls(param, lr=0.1)
    opt.step(grad)
    assert np.isnan(param[0])
    assert not np.isfinite(param[1]) and not np.isfinite(param[2])
    assert np.all(np.isfinite(param[3:]))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("cls", [fastopt.SGD, fastopt.Adam])
def test_numpy_matrix_params_and_grads_update_like_plain_arrays(cls):
    plain = np.arange(6, dtype=np.float64).reshape(2, 3)
    matrix = np.matrix(plain.copy())
    grad = np.linspace(-1, 1, 6).reshape(2, 3)
    mine, theirs = cls(matrix, lr=0.1), cls(plain, lr=0.1)
    for _ in range(3):
        mine.step(np.matrix(grad))
        theirs.step(grad)
    np.testing.assert_array_equal(np.asarray(matrix), plain)
