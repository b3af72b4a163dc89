"""Bad input raises a clear TypeError/ValueError naming the argument, and changes nothing."""

import inspect
import re

import numpy as np
import pytest

import fastopt
from fastopt import schedules as fs
from fastopt._words import plural, with_article

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
        (np.zeros(3, dtype=np.int64), TypeError, "float32, float64, bfloat16 or float16"),
        (np.zeros(3, dtype=np.complex64), TypeError, "float32, float64, bfloat16 or float16"),
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
        ("length one", grads[:1], ValueError, "1 entry, expected 3"),
        ("single array", grads[0], TypeError, "list of 3"),
        ("not arrays", [1.0, 2.0, 3.0], TypeError, "numpy.ndarray"),
        ("a dict", {"a": 1}, TypeError, "grads must be"),
    ]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("which", range(10))
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
        lambda p, g, s: fastopt.sgd_step(p, g, lr=0.1, momentum=0.9, step=1),
        "momentum_buffer is required",
    ),
    (
        "sgd buffer aliases param",
        lambda p, g, s: fastopt.sgd_step(p, g, p, lr=0.1, momentum=0.9, step=1),
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
        "exp_avg must have dtype float64 or bfloat16",
    ),
    (
        "adam state wrong size",
        lambda p, g, s: fastopt.adam_step(p, g, np.zeros(3), s[1], step=1),
        "exp_avg must have the parameter's size",
    ),
    (
        "adam beta2 = 1",
        lambda p, g, s: fastopt.adam_step(p, g, s[0], s[1], betas=(0.9, 1.0), step=1),
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
        lambda p, g, s: fastopt.rmsprop_step(p, g, s[0], None, s[0], centered=True),
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


# ---------------------------------------------------------------------- flags and choices
# Every bool and string option of the NumPy API. A flag takes a bool or a NumPy bool scalar
# and nothing else (ints, strings, None, arrays: TypeError naming the option and what it
# got); a choice takes one of its strings (another type: TypeError, another string:
# ValueError listing the allowed ones). A refused call writes nothing.

BAD_BOOLS = [1, 0, 1.0, "yes", "", None, np.array(True), np.array([False]), [True]]
GOOD_BOOLS = [True, False, np.True_, np.False_]
BAD_STRINGS = [None, 1, True, b"abs", ["abs"], np.array("abs")]


def _constructor(cls, **base):
    """A class of the NumPy API given an option: built, then stepped once."""

    def make():
        (param,), (grad,) = params_and_grads(count=1)

        def call(**option):
            cls(param, **base, **option).step(grad)

        return call, [param]

    return make


def _functional(function, state_count, **base):
    """A functional step given an option, on fresh arrays (param, grad and its state)."""

    def make():
        (param,), (grad,) = params_and_grads(count=1)
        state = [np.full(5, 0.5) for _ in range(state_count)]

        def call(**option):
            function(param, grad, *state, **base, **option)

        return call, [param, grad, *state]

    return make


def _plain(function, *args, **base):
    """A function that writes no array (a schedule, a scaler), given an option."""

    def make():
        return (lambda **option: function(*args, **base, **option)), []

    return make


BOOL_OPTIONS = [
    ("SGD", _constructor(fastopt.SGD, lr=0.1, momentum=0.9), "nesterov"),
    ("SGD", _constructor(fastopt.SGD, lr=0.1, momentum=0.9), "maximize"),
    ("Adagrad", _constructor(fastopt.Adagrad, lr=0.1), "maximize"),
    ("RMSprop", _constructor(fastopt.RMSprop, lr=0.1, momentum=0.5), "centered"),
    ("RMSprop", _constructor(fastopt.RMSprop, lr=0.1), "maximize"),
    ("Adam", _constructor(fastopt.Adam, lr=0.1), "amsgrad"),
    ("Adam", _constructor(fastopt.Adam, lr=0.1), "maximize"),
    ("Adam", _constructor(fastopt.Adam, lr=0.1, weight_decay=0.1), "decoupled_weight_decay"),
    ("AdamW", _constructor(fastopt.AdamW, lr=0.1), "amsgrad"),
    ("AdamW", _constructor(fastopt.AdamW, lr=0.1), "maximize"),
    ("sgd_step", _functional(fastopt.sgd_step, 1, lr=0.1, momentum=0.9, step=1), "nesterov"),
    ("sgd_step", _functional(fastopt.sgd_step, 1, lr=0.1, momentum=0.9, step=1), "maximize"),
    ("adam_step", _functional(fastopt.adam_step, 3, lr=0.1, amsgrad=True, step=2), "maximize"),
    (
        "adam_step",
        _functional(fastopt.adam_step, 2, lr=0.1, weight_decay=0.1, step=1),
        "decoupled_weight_decay",
    ),
    ("adagrad_step", _functional(fastopt.adagrad_step, 1, lr=0.1, step=1), "maximize"),
    (
        "rmsprop_step",
        _functional(fastopt.rmsprop_step, 3, lr=0.1, momentum=0.5, centered=True),
        "maximize",
    ),
    ("LossScaler", _plain(fastopt.LossScaler), "enabled"),
    ("one_cycle", _plain(fs.one_cycle, 0.1, 100), "three_phase"),
    ("one_cycle_momentum", _plain(fs.one_cycle_momentum, 100), "three_phase"),
    ("inverse_time_decay", _plain(fs.inverse_time_decay, 0.1, 0.5), "staircase"),
]
BOOL_IDS = [f"{label}-{option}" for label, _, option in BOOL_OPTIONS]


@pytest.mark.parametrize("bad", BAD_BOOLS, ids=repr)
@pytest.mark.parametrize(("label", "make", "option"), BOOL_OPTIONS, ids=BOOL_IDS)
def test_flags_refuse_anything_but_a_bool_before_writing(label, make, option, bad):
    call, arrays = make()
    before = snapshot(*arrays)
    expected = rf"^{option} must be a bool, got {type(bad).__name__} {re.escape(repr(bad))}$"
    with pytest.raises(TypeError, match=expected):
        call(**{option: bad})
    assert snapshot(*arrays) == before


@pytest.mark.parametrize("good", GOOD_BOOLS, ids=repr)
@pytest.mark.parametrize(("label", "make", "option"), BOOL_OPTIONS, ids=BOOL_IDS)
def test_flags_take_bools_and_numpy_bools_alike(label, make, option, good):
    call, arrays = make()
    call(**{option: good})
    reference_call, reference_arrays = make()
    reference_call(**{option: bool(good)})
    assert snapshot(*arrays) == snapshot(*reference_arrays)


def _reduce_on_plateau(**option):
    fs.ReduceLROnPlateau(fastopt.SGD(np.zeros(3), lr=0.1), **option)


def _step_override(cls):
    """``Optimizer.step(grads, nonfinite=...)`` of an optimizer that has stepped once."""

    def make():
        params, grads = params_and_grads()
        opt = cls(params, lr=0.1)
        opt.step(grads)
        return (lambda **option: opt.step(grads, **option)), [*params, *_state_arrays(opt)]

    return make


def _attribute_edit(cls):
    """``opt.nonfinite = ...`` between steps, then a step."""

    def make():
        params, grads = params_and_grads()
        opt = cls(params, lr=0.1)
        opt.step(grads)

        def call(nonfinite):
            opt.nonfinite = nonfinite
            opt.step(grads)

        return call, [*params, *_state_arrays(opt)]

    return make


def _state_arrays(opt):
    return [v for entry in opt.state.values() for v in entry.values() if isinstance(v, np.ndarray)]


POLICIES = ("propagate", "skip", "raise")
CHOICE_OPTIONS = [
    *[(cls.__name__, _constructor(cls, lr=0.1), "nonfinite", POLICIES) for cls in CLASSES],
    *[(f"{cls.__name__}.step", _step_override(cls), "nonfinite", POLICIES) for cls in CLASSES],
    *[(f"{cls.__name__}-edit", _attribute_edit(cls), "nonfinite", POLICIES) for cls in CLASSES],
    ("one_cycle", _plain(fs.one_cycle, 0.1, 100), "anneal_strategy", ("cos", "linear")),
    (
        "one_cycle_momentum",
        _plain(fs.one_cycle_momentum, 100),
        "anneal_strategy",
        ("cos", "linear"),
    ),
    ("cyclic", _plain(fs.cyclic, 0.01, 0.1), "mode", ("triangular", "triangular2", "exp_range")),
    (
        "cyclic_momentum",
        _plain(fs.cyclic_momentum),
        "mode",
        ("triangular", "triangular2", "exp_range"),
    ),
    ("ReduceLROnPlateau", _plain(_reduce_on_plateau), "mode", ("min", "max")),
    ("ReduceLROnPlateau", _plain(_reduce_on_plateau), "threshold_mode", ("rel", "abs")),
]
CHOICE_IDS = [f"{label}-{option}" for label, _, option, _ in CHOICE_OPTIONS]


def _listing(choices):
    return re.escape(", ".join(map(repr, choices)))


@pytest.mark.parametrize(
    ("label", "make", "option", "allowed", "bad"),
    [
        pytest.param(*entry, bad, id=f"{entry_id}-{bad!r}")
        for entry, entry_id in zip(CHOICE_OPTIONS, CHOICE_IDS, strict=True)
        for bad in BAD_STRINGS
        # step(nonfinite=None) is the default: the optimizer's own policy.
        if not (bad is None and entry[0].endswith(".step"))
    ],
)
def test_choices_refuse_other_types_before_writing(label, make, option, allowed, bad):
    call, arrays = make()
    before = snapshot(*arrays)
    expected = rf"^{option} must be a str, one of {_listing(allowed)}; got {type(bad).__name__} "
    with pytest.raises(TypeError, match=expected):
        call(**{option: bad})
    assert snapshot(*arrays) == before


@pytest.mark.parametrize("unknown", ["", "bogus", "MIN", " rel", "cos "])
@pytest.mark.parametrize(("label", "make", "option", "allowed"), CHOICE_OPTIONS, ids=CHOICE_IDS)
def test_choices_refuse_unknown_strings_listing_the_allowed_ones(
    label, make, option, allowed, unknown
):
    call, arrays = make()
    before = snapshot(*arrays)
    expected = (
        rf"^Invalid {option}: {re.escape(repr(unknown))} \(must be one of {_listing(allowed)}\)$"
    )
    with pytest.raises(ValueError, match=expected):
        call(**{option: unknown})
    assert snapshot(*arrays) == before


@pytest.mark.parametrize(("label", "make", "option", "allowed"), CHOICE_OPTIONS, ids=CHOICE_IDS)
def test_choices_take_each_allowed_string_and_str_subclasses(label, make, option, allowed):
    for value in (*allowed, np.str_(allowed[0])):
        call, _ = make()
        call(**{option: value})


@pytest.mark.parametrize(
    ("norm_type", "error", "match"),
    [
        ("two", TypeError, r"norm_type must be a real number \(2.0 or math.inf\) or the str 'inf'"),
        (None, TypeError, "norm_type must be a real number"),
        (np.array(2.0), TypeError, "norm_type must be a real number, got ndarray"),
        (True, TypeError, "norm_type must be a real number, got bool"),
        (1.0, ValueError, r"Invalid norm_type: 1.0 \(must be 2.0, math.inf or 'inf'\)"),
    ],
)
def test_norm_type_takes_two_inf_or_the_string_inf(norm_type, error, match):
    with pytest.raises(error, match=match):
        fastopt.Adam(np.zeros(3), norm_type=norm_type)
    for good in (2, 2.0, float("inf"), "inf", np.str_("inf"), np.float32(2.0)):
        fastopt.Adam(np.zeros(3), norm_type=good)


# ---------------------------------------------------------------------- param_groups edits
# Hyperparameters may change between steps through param_groups; the step checks them with
# the same checks as the constructor before it writes anything, also when the new value
# equals the checked one (1 where True was checked, a 0-d array where a float was).

GROUP_EDITS = [
    (fastopt.SGD, {"momentum": 0.9, "nesterov": True}, "nesterov", 1, TypeError),
    (fastopt.SGD, {"maximize": False}, "maximize", 0, TypeError),
    (fastopt.SGD, {"maximize": True}, "maximize", np.array(True), TypeError),
    (fastopt.SGD, {"momentum": 0.9}, "nesterov", "False", TypeError),
    (fastopt.Adagrad, {"maximize": False}, "maximize", "False", TypeError),
    (fastopt.Adagrad, {"maximize": True}, "maximize", 1.0, TypeError),
    (fastopt.RMSprop, {"centered": True}, "centered", 1, TypeError),
    (fastopt.RMSprop, {"maximize": False}, "maximize", None, TypeError),
    (fastopt.Adam, {"amsgrad": True}, "amsgrad", 1.0, TypeError),
    (fastopt.Adam, {"maximize": True}, "maximize", np.array([True]), TypeError),
    (fastopt.Adam, {"decoupled_weight_decay": False}, "decoupled_weight_decay", 0, TypeError),
    (fastopt.AdamW, {"amsgrad": False}, "amsgrad", 0, TypeError),
    (fastopt.AdamW, {"maximize": True}, "maximize", 1, TypeError),
    (fastopt.SGD, {"lr": 1.0}, "lr", True, TypeError),
    (fastopt.Adam, {"lr": 0.5}, "lr", np.array(0.5), TypeError),
    (fastopt.Adam, {}, "betas", (np.array(0.9), 0.999), TypeError),
    (fastopt.Adam, {}, "betas", [0.9, 1.0], ValueError),
]
GROUP_EDIT_IDS = [f"{c.__name__}-{key}={bad!r}" for c, _, key, bad, _ in GROUP_EDITS]


def _everything(opt, arrays):
    """The bytes of ``arrays`` and of every state entry of ``opt``, and its step count."""
    state = {
        (index, key): value.tobytes() if isinstance(value, np.ndarray) else value
        for index, entry in opt.state.items()
        for key, value in entry.items()
    }
    return snapshot(*arrays), state, opt.step_count


def _two_group_problem(cls, options, flat):
    """An optimizer over two groups after one step, and a function making the next step."""
    params, grads = params_and_grads()
    if flat:
        buffer = fastopt.FlatParams.from_arrays(params)
        params = list(buffer.params)
        for view, grad in zip(buffer.grads, grads, strict=True):
            view[...] = grad
        arrays = [buffer.buffer]

        def step():
            opt.step()

    else:
        arrays = params

        def step():
            opt.step(grads)

    opt = cls([{"params": params[:2]}, {"params": params[2:], **options}], lr=0.1)
    step()
    return opt, arrays, step


@pytest.mark.parametrize("flat", [False, True], ids=["arrays", "flat"])
@pytest.mark.parametrize(("cls", "options", "key", "bad", "error"), GROUP_EDITS, ids=GROUP_EDIT_IDS)
def test_group_edits_are_checked_before_the_step_writes(cls, options, key, bad, error, flat):
    opt, arrays, step = _two_group_problem(cls, options, flat)
    good = opt.param_groups[1][key]
    opt.param_groups[1][key] = bad
    before = _everything(opt, arrays)
    with pytest.raises(error, match=key.rstrip("s")):
        step()
    assert _everything(opt, arrays) == before
    opt.param_groups[1][key] = good
    step()
    assert opt.step_count == 2


@pytest.mark.parametrize("flat", [False, True], ids=["arrays", "flat"])
def test_a_list_of_betas_edited_in_place_is_checked_at_the_next_step(flat):
    opt, arrays, step = _two_group_problem(fastopt.Adam, {"betas": [0.9, 0.999]}, flat)
    opt.param_groups[1]["betas"][1] = 1.0
    before = _everything(opt, arrays)
    with pytest.raises(ValueError, match=r"beta2.*\[0, 1\)"):
        step()
    assert _everything(opt, arrays) == before


@pytest.mark.parametrize(
    ("attribute", "bad", "error"),
    [
        ("nonfinite", np.array("propagate"), TypeError),
        ("nonfinite", "sometimes", ValueError),
        ("norm_type", np.array(2.0), TypeError),
        ("norm_type", "two", TypeError),
        ("max_norm", "1", TypeError),
        ("clip_value", True, TypeError),
    ],
)
def test_gradient_options_edited_between_steps_are_checked_before_writing(attribute, bad, error):
    params, grads = params_and_grads()
    opt = fastopt.Adam(params, lr=0.1)
    opt.step(grads)
    setattr(opt, attribute, bad)
    before = _everything(opt, params)
    with pytest.raises(error, match=attribute):
        opt.step(grads)
    assert _everything(opt, params) == before


@pytest.mark.parametrize(("cls", "options", "key", "bad", "error"), GROUP_EDITS, ids=GROUP_EDIT_IDS)
def test_add_param_group_and_load_state_dict_check_the_same_way(cls, options, key, bad, error):
    params, grads = params_and_grads()
    opt = cls([{"params": params[:2], **options}], lr=0.1)
    opt.step(grads[:2])
    with pytest.raises(error, match=key.rstrip("s")):
        opt.add_param_group({"params": params[2:], key: bad})
    assert len(opt.param_groups) == 1 and len(opt.params) == 2
    saved = opt.state_dict()
    saved["param_groups"][0][key] = bad
    before = _everything(opt, params)
    groups_before = [dict(group) for group in opt.param_groups]
    with pytest.raises(error, match=key.rstrip("s")):
        opt.load_state_dict(saved)
    assert _everything(opt, params) == before
    assert [dict(group) for group in opt.param_groups] == groups_before


# ---------------------------------------------------------------------- names in messages


@pytest.mark.parametrize("cls", CLASSES)
def test_an_unknown_keyword_names_the_class_called(cls):
    expected = rf"^{cls.__name__}\.__init__\(\) got an unexpected keyword argument 'learning_rate'$"
    with pytest.raises(TypeError, match=expected):
        cls(np.zeros(3), learning_rate=1e-3)


def test_adamw_refuses_decoupled_weight_decay_under_its_own_name():
    expected = r"^AdamW\.__init__\(\) got an unexpected keyword argument 'decoupled_weight_decay'$"
    with pytest.raises(TypeError, match=expected):
        fastopt.AdamW(np.zeros(3), decoupled_weight_decay=True)


def test_a_subclass_is_named_in_unknown_keyword_errors():
    class Custom(fastopt.Adam):
        pass

    with pytest.raises(TypeError, match=r"Custom\.__init__\(\) got an unexpected keyword"):
        Custom(np.zeros(3), momentum=0.9)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: fastopt.SGD([np.zeros(2)]).step([]), ValueError, r"0 entries, expected 1"),
        (
            lambda: fastopt.FlatParams([2, 3]).accumulate([np.zeros(2)]),
            ValueError,
            r"1 entry, expected 2",
        ),
        (lambda: fastopt.FlatParams([2])[1], IndexError, r"out of range for 1 array$"),
        (
            lambda: fastopt.SGD(np.zeros(2)).load_state_dict(
                {"state": {}, "param_groups": [{"params": [0]}] * 2}
            ),
            ValueError,
            r"state_dict has 2 parameter groups, the optimizer has 1",
        ),
        (
            lambda: fastopt.SGD(np.zeros(2)).load_state_dict(
                {"state": {}, "param_groups": [{"params": []}]}
            ),
            ValueError,
            r"param_groups\[0\] has 0 parameters, the optimizer's has 1",
        ),
        (
            lambda: fastopt.SGD([np.zeros(2), np.zeros(2)]).load_state_dict(
                {"state": {}, "param_groups": [{"params": [0]}]}
            ),
            ValueError,
            r"param_groups\[0\] has 1 parameter, the optimizer's has 2",
        ),
        (
            lambda: fs.join([fs.constant(1.0)], [5]),
            ValueError,
            r"got 1 boundary for 1 schedule$",
        ),
    ],
)
def test_counts_in_messages_agree_with_their_nouns(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_flat_params_repr_counts_in_the_singular_and_plural():
    assert repr(fastopt.FlatParams([1])) == "FlatParams(1 array, 1 float32 element, 4 bytes)"
    assert repr(fastopt.FlatParams([2, 3], np.float64)) == (
        "FlatParams(2 arrays, 5 float64 elements, 88 bytes)"
    )


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("Adam", "an Adam"),
        ("AdamW", "an AdamW"),
        ("Adagrad", "an Adagrad"),
        ("RMSprop", "an RMSprop"),
        ("SGD", "an SGD"),
        ("FlatParams", "a FlatParams"),
        ("Optimizer", "an Optimizer"),
        ("dict", "a dict"),
        ("LossScaler", "a LossScaler"),
    ],
)
def test_with_article(word, expected):
    assert with_article(word) == expected


def test_plural():
    assert plural(1, "entry", "entries") == "1 entry"
    assert plural(0, "entry", "entries") == "0 entries"
    assert plural(2, "array") == "2 arrays"
    assert plural(1, "array") == "1 array"


# ---------------------------------------------------------------------- signatures

TORCH_ONLY = {"foreach", "capturable", "differentiable", "fused"}


def _signature(callable_, kind, drop=()):
    return [
        (name, parameter.default)
        for name, parameter in inspect.signature(callable_).parameters.items()
        if parameter.kind is kind and name not in drop
    ]


@pytest.mark.parametrize("cls", CLASSES)
def test_positional_and_keyword_arguments_follow_torch(cls):
    torch = pytest.importorskip("torch")
    theirs = getattr(torch.optim, cls.__name__)
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert _signature(cls, positional) == _signature(theirs, positional, TORCH_ONLY)
    keyword = inspect.Parameter.KEYWORD_ONLY
    ours = _signature(cls, keyword, drop={*fastopt.precision.PRECISION_DEFAULTS, "seed"})
    assert set(ours) <= set(_signature(theirs, keyword, TORCH_ONLY))


def test_rmsprop_takes_maximize_positionally_after_centered():
    (param,), (grad,) = params_and_grads(count=1)
    positional, keyword = param.copy(), param.copy()
    fastopt.RMSprop(positional, 0.1, 0.9, 1e-8, 0.0, 0.0, True, True).step(grad)
    fastopt.RMSprop(keyword, lr=0.1, alpha=0.9, centered=True, maximize=True).step(grad)
    assert positional.tobytes() == keyword.tobytes()
    assert fastopt.RMSprop(param, 0.1, 0.9, 1e-8, 0.0, 0.0, False, True).defaults["maximize"]
