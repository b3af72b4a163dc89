"""bfloat16 and float16 storage: the codecs, every rule in every precision mode against the
NumPy reference, bitwise determinism across paths, checkpoints, validation, torch."""

from __future__ import annotations

import math

import ml_dtypes
import numba
import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id, problem, run_low_precision_steps

import fastopt
from fastopt import _codecs, reference
from fastopt._jit import PARALLEL_THRESHOLD
from fastopt.precision import rounding_key

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)


# ---------------------------------------------------------------------- codecs
def float32_values(count: int = 400_000, seed: int = 0) -> np.ndarray:
    """Random bit patterns (every exponent, NaNs and Infs), values at every scale, and the
    edges of both 16-bit formats."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scaled = rng.standard_normal(count) * 10.0 ** rng.integers(-9, 6, count)
    edges = [0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, 65536, 70000, -70000]
    edges += [2**-24, 2**-25, 1.5 * 2**-25, 2**-14, 0.99 * 2**-14, 3.39e38, 3.4e38, 1e-40]
    halfway = (np.arange(1, 2000, dtype=np.uint32) << 15).view(np.float32)  # bf16 ties
    return np.concatenate([bits, scaled.astype(np.float32), np.float32(edges), halfway])


@numba.njit
def _encode_all(x, bf16, f16, words, bf16_sr, f16_sr):
    for i in range(x.size):
        bf16[i] = _codecs.bf16_nearest(x[i])
        f16[i] = _codecs.f16_nearest(x[i])
        bf16_sr[i] = _codecs.bf16_stochastic(x[i], words[i])
        f16_sr[i] = _codecs.f16_stochastic(x[i], words[i])


def _encoded(x: np.ndarray, words: np.ndarray) -> list[np.ndarray]:
    out = [np.empty(x.size, bits) for bits in (np.uint16, np.int16, np.uint16, np.int16)]
    _encode_all(x, out[0], out[1], words, out[2], out[3])
    return [out[0].view(BF16), out[1].view(F16), out[2].view(BF16), out[3].view(F16)]


def assert_same_values(actual: np.ndarray, desired: np.ndarray) -> None:
    """Bit for bit, except that any NaN matches any NaN."""
    nan = np.isnan(desired.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(actual.astype(np.float32)), nan)
    width = np.uint16 if actual.itemsize == 2 else np.uint32
    np.testing.assert_array_equal(actual.view(width)[~nan], desired.view(width)[~nan])


def test_rounding_to_nearest_is_numpys_and_ml_dtypes_conversion():
    x = float32_values()
    words = np.zeros(x.size, np.uint32)
    bf16, f16, _, _ = _encoded(x, words)
    with np.errstate(over="ignore", invalid="ignore"):
        assert_same_values(bf16, x.astype(BF16))
        assert_same_values(f16, x.astype(F16))


def test_stochastic_rounding_is_the_references():
    x = float32_values(seed=1)
    words = np.random.default_rng(2).integers(0, 2**32, x.size, dtype=np.uint64).astype(np.uint32)
    _, _, bf16, f16 = _encoded(x, words)
    assert_same_values(bf16, reference.round_to(x, BF16, words))
    assert_same_values(f16, reference.round_to(x, F16, words))


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour(dtype):
    """Over many random words the mean of the rounded values is the value (within 4 standard
    errors), and each result is one of the two neighbours; a float16 subnormal too."""
    rng = np.random.default_rng(3)
    for value in (1.0 + 3 * 2**-13, -3.3, 1e-3, 5e-6):
        x = np.full(200_000, value, np.float32)
        words = rng.integers(0, 2**32, x.size, dtype=np.uint64).astype(np.uint32)
        rounded = reference.round_to(x, dtype, words).astype(np.float64)
        low, high = sorted({float(v) for v in rounded})
        assert low < float(np.float32(value)) < high
        spread = (high - low) / 2 / math.sqrt(x.size)
        assert abs(rounded.mean() - float(np.float32(value))) < 4 * spread


def test_decoding_every_16_bit_pattern_is_exact():
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)

    @numba.njit
    def decode(bits, out_bf16, out_f16):
        for i in range(bits.size):
            out_bf16[i] = _codecs.bf16_decode(bits[i])
            out_f16[i] = _codecs.f16_decode(bits.view(np.int16)[i])

    bf16, f16 = np.empty(bits.size, np.float32), np.empty(bits.size, np.float32)
    decode(bits, bf16, f16)
    assert_same_values(bf16, bits.view(BF16).astype(np.float32))
    assert_same_values(f16, bits.view(F16).astype(np.float32))


def test_codecs_as_plain_python_equal_the_compiled_ones():
    """The CUDA simulator runs the codecs as Python on NumPy scalars: the same bits."""
    x = float32_values(4000, seed=4)
    words = np.random.default_rng(5).integers(0, 2**32, x.size, dtype=np.uint64).astype(np.uint32)
    compiled = _encoded(x, words)
    python = [
        np.array([_codecs.bf16_nearest.py_func(v) for v in x], np.uint16).view(BF16),
        np.array([_codecs.f16_nearest.py_func(v) for v in x], np.int16).view(F16),
        np.array([_codecs.bf16_stochastic.py_func(v, w) for v, w in zip(x, words)]).view(BF16),
        np.array([_codecs.f16_stochastic.py_func(v, w) for v, w in zip(x, words)]).view(F16),
    ]
    for got, want in zip(python, compiled, strict=True):
        assert_same_values(got, want)


def test_random_words_are_the_references():
    index = np.array([0, 1, 2, 1000, 2**32 - 1, 2**32, 2**40 + 7], dtype=np.uint64)
    for key, slot in ((0, 0), (12345, 3), (2**32 - 1, 63)):
        compiled = [int(_codecs.random_word(key, slot, int(i))) for i in index]
        python = [int(_codecs.random_word.py_func(key, slot, int(i))) for i in index]
        expected = reference.random_words(key, slot, index).tolist()
        assert compiled == python == expected


# ---------------------------------------------------------------------- every rule, every mode
#: (parameter dtype, options): the precision modes every rule is checked in.
MODES = {
    "bf16": (BF16, {}),
    "bf16-master": (BF16, {"master_weights": True}),
    "bf16-kahan": (BF16, {"kahan_sum": True}),
    "bf16-stochastic": (BF16, {"stochastic_rounding": True}),
    "bf16-state": (BF16, {"state_dtype": "bfloat16", "stochastic_rounding": True}),
    "bf16-master-state": (BF16, {"master_weights": True, "state_dtype": "bfloat16"}),
    "f16-master": (F16, {"master_weights": True}),
    "f16-kahan-stochastic": (F16, {"kahan_sum": True, "stochastic_rounding": True}),
    "f32-bf16-state": (F32, {"state_dtype": "bfloat16", "stochastic_rounding": True}),
}

# One option set per rule (the first of each in the rule table).
FIRST_CASES = [
    case for number, case in enumerate(CASES) if case[0] not in {c[0] for c in CASES[:number]}
]


def run_low_precision_reference(cls, kwargs, param, grads, seed=0):
    """What ``cls(param, **kwargs)`` does over ``grads``, by :func:`reference.low_precision_step`
    around the rule's reference step; returns the state arrays, the master copy and the
    compensation buffer."""
    rule = cls._rule
    hp = dict(cls(np.zeros(1, param.dtype), **kwargs).defaults)
    low = param.dtype in (BF16, F16)
    state_dtype = BF16 if hp["state_dtype"] == "bfloat16" else (F32 if low else param.dtype)
    master = param.astype(F32) if low and hp["master_weights"] else None
    comp = np.zeros_like(param) if low and hp["kahan_sum"] else None
    stochastic = hp["stochastic_rounding"] and (low or state_dtype == BF16)

    def new_state(declared):
        source = master if master is not None else param.astype(F32)
        if declared.from_param:
            return source.astype(state_dtype)
        return np.full(param.shape, declared.initial(hp), state_dtype)

    def key_of(step):
        return int(rounding_key(seed, 0, step)) if stochastic else None

    state = run_low_precision_steps(rule, hp, param, grads, new_state, master, comp, key_of)
    return state, master, comp


def assert_within_one_unit(
    actual: np.ndarray, desired: np.ndarray, what: str, unit: np.ndarray | None = None
) -> None:
    """16-bit values equal or one unit in the last place apart (the float32 arithmetic of a
    kernel and of NumPy may round differently just before the final rounding), or ``unit``
    apart (a compensation buffer: one unit of its parameter); float32 values equal to
    float32 rounding."""
    if desired.dtype == F32:
        assert_close(actual, desired, err_msg=what)
        return
    wide_actual, wide_desired = actual.astype(np.float64), desired.astype(np.float64)
    spacing = np.abs(np.spacing(desired if unit is None else unit)).astype(np.float64)
    same = (wide_actual == wide_desired) | (np.isnan(wide_actual) & np.isnan(wide_desired))
    close = np.abs(wide_actual - wide_desired) <= spacing
    assert np.all(same | close), f"{what}: {np.count_nonzero(~(same | close))} elements apart"
    if same.size >= 1000:  # and nearly all of them bit for bit
        assert np.mean(same) > 0.99, f"{what}: only {np.mean(same):.3f} of the elements equal"


# Every rule with a master copy, with bfloat16 state (stochastic rounding) and with float32
# parameters and bfloat16 state, at sizes 0, 1, odd and a few thousand; Adam in every mode,
# also above the parallel threshold (the loads and stores are the rule-independent storage
# layer, and the drivers are shared by every rule: the tests below take the rest).
EVERY_RULE_MODES = ["bf16-master", "bf16-state", "f32-bf16-state"]
SOME_RULES = {"adam"}
REFERENCE_RUNS = [
    pytest.param(case, mode, size, id=f"{case_id(case)}-{mode}-{size}")
    for case in FIRST_CASES
    for mode in MODES
    for size in (0, 1, 7, 3001, PARALLEL_THRESHOLD + 4099)
    if (mode in EVERY_RULE_MODES or case[0] in SOME_RULES)
    and (size < PARALLEL_THRESHOLD or case[0] in SOME_RULES)
]


@pytest.mark.parametrize(("case", "mode", "size"), REFERENCE_RUNS)
def test_matches_the_low_precision_reference(case, mode, size):
    """Parameters, every state array, the master copy and the compensation after 6 steps
    equal the reference's (NumPy decodes, computes the rule in float32, rounds)."""
    _, cls, kwargs = case
    dtype, options = MODES[mode]
    start, grads = problem(size, np.float32, 6)
    param = start.astype(dtype)
    grads = [grad.astype(dtype) for grad in grads]
    expected = param.copy()
    state, master, comp = run_low_precision_reference(cls, {**kwargs, **options}, expected, grads)

    opt = cls(param, **kwargs, **options)
    for grad in grads:
        opt.step(grad)

    assert_within_one_unit(param, expected, "param")
    entry = opt.state[0]
    arrays = {name: value for name, value in entry.items() if isinstance(value, np.ndarray)}
    wanted = dict(state)
    if master is not None:
        wanted["master_param"] = master
    if comp is not None:
        wanted["kahan_comp"] = comp
    assert sorted(arrays) == sorted(wanted)
    for name, value in arrays.items():
        assert value.dtype == wanted[name].dtype, name
        # Where the parameter rounded one unit apart, its compensation holds that unit.
        unit = expected if name == "kahan_comp" else None
        assert_within_one_unit(value, wanted[name], name, unit)
    if size > 1 and "master_weights" not in options:
        assert not np.array_equal(param, start.astype(dtype)), "nothing moved"


def test_muon_in_bfloat16_with_a_master_copy_matches_the_reference():
    """The matrix step (directions, Newton-Schulz in float32, update) on a bfloat16
    parameter through its float32 master copy."""
    rng = np.random.default_rng(6)
    start = rng.standard_normal((24, 40)).astype(BF16)
    grads = [rng.standard_normal((24, 40)).astype(BF16) for _ in range(4)]
    param, expected = start.copy(), start.copy()
    opt = fastopt.Muon(param, lr=0.02, master_weights=True)
    master, buffer = expected.astype(F32), np.zeros((24, 40), F32)
    for grad in grads:
        opt.step(grad)
        reference.low_precision_step(
            reference.muon_step, expected, grad, buffer, master_param=master, lr=0.02
        )
    np.testing.assert_allclose(opt.state[0]["master_param"], master, rtol=1e-4, atol=1e-5)
    assert_within_one_unit(param, expected, "param")


# ---------------------------------------------------------------------- determinism, paths
@pytest.mark.parametrize("mode", ["bf16-stochastic", "bf16-state", "f16-kahan-stochastic"])
def test_one_flat_launch_equals_the_per_array_steps_bitwise(mode):
    """Stochastic rounding's bits depend on the parameter's position, its update count and
    the element's index, not on the launch: a FlatParams of several arrays and groups, in one
    launch, gives the per-array steps' bits."""
    dtype, options = MODES[mode]
    rng = np.random.default_rng(7)
    shapes = [(3, 5), (100,), (PARALLEL_THRESHOLD + 77,), (1,)]
    arrays = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    steps = [[rng.standard_normal(shape).astype(dtype) for shape in shapes] for _ in range(4)]
    separate = [array.copy() for array in arrays]
    groups = [{"params": separate[:2]}, {"params": separate[2:], "lr": 3e-3}]
    by_array = fastopt.Adam(groups, lr=1e-3, seed=11, **options)
    flat = fastopt.FlatParams(shapes, dtype=dtype)
    for view, array in zip(flat.params, arrays, strict=True):
        view[...] = array
    flat_groups = [{"params": flat.params[:2]}, {"params": flat.params[2:], "lr": 3e-3}]
    one_launch = fastopt.Adam(flat_groups, lr=1e-3, seed=11, **options)
    for grads in steps:
        by_array.step(grads)
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        one_launch.step()
    for index, (mine, theirs) in enumerate(zip(separate, flat.params, strict=True)):
        assert_same_values(theirs, mine)
        for name, value in by_array.state[index].items():
            if isinstance(value, np.ndarray):
                assert_same_values(one_launch.state[index][name], value)


def test_thread_counts_and_serial_path_give_the_same_bits(monkeypatch):
    import fastopt._launch as launch_module

    dtype, options = MODES["bf16-state"]
    results = []
    for threads, threshold in ((1, PARALLEL_THRESHOLD), (2, PARALLEL_THRESHOLD), (2, 1 << 40)):
        monkeypatch.setattr(launch_module, "PARALLEL_THRESHOLD", threshold)
        numba.set_num_threads(threads)
        start, grads = problem(3 * PARALLEL_THRESHOLD + 5, np.float32, 3)
        param = start.astype(dtype)
        opt = fastopt.AdamW(param, lr=1e-3, **options)
        for grad in grads:
            opt.step(grad.astype(dtype))
        results.append((param, opt.state[0]["exp_avg"]))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for param, exp_avg in results[1:]:
        assert_same_values(param, results[0][0])
        assert_same_values(exp_avg, results[0][1])


def test_the_seed_changes_the_bits_and_only_it():
    start, grads = problem(5000, np.float32, 3)
    outcomes = []
    for seed in (0, 0, 1):
        param = start.astype(BF16)
        opt = fastopt.SGD(param, lr=1e-3, stochastic_rounding=True, seed=seed)
        for grad in grads:
            opt.step(grad.astype(BF16))
        outcomes.append(param.view(np.uint16).copy())
    assert np.array_equal(outcomes[0], outcomes[1])
    assert not np.array_equal(outcomes[0], outcomes[2])


# ---------------------------------------------------------------------- checkpoints
def test_a_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    """bfloat16 state, a master copy and stochastic rounding through fastopt.save/load: the
    seed, the state in its dtypes and the step counts come back, and the next steps' bits
    are those of the run that never stopped."""
    start, grads = problem(4000, np.float32, 8)
    grads = [grad.astype(BF16) for grad in grads]
    options = {"lr": 1e-3, "state_dtype": "bfloat16", "master_weights": True}
    options |= {"stochastic_rounding": True, "seed": 5}
    straight = start.astype(BF16)
    uninterrupted = fastopt.AdamW(straight, **options)
    for grad in grads:
        uninterrupted.step(grad)

    first = start.astype(BF16)
    before = fastopt.AdamW(first, **options)
    for grad in grads[:3]:
        before.step(grad)
    fastopt.save(tmp_path / "run.fastopt", before)
    resumed_param = np.zeros_like(first)
    resumed = fastopt.AdamW(resumed_param, **{**options, "seed": 0})
    fastopt.load(tmp_path / "run.fastopt").restore(resumed)
    assert resumed.seed == 5
    assert resumed.state[0]["exp_avg"].dtype == BF16
    assert resumed.state[0]["master_param"].dtype == F32
    for grad in grads[3:]:
        resumed.step(grad)
    assert_same_values(resumed_param, straight)
    for name in ("exp_avg", "exp_avg_sq", "master_param"):
        assert_same_values(resumed.state[0][name], uninterrupted.state[0][name])


def test_dequantized_state_loads_into_a_float32_optimizer_and_back():
    start, grads = problem(300, np.float32, 3)
    quantized = fastopt.Adam(start.copy(), lr=1e-2, state_dtype="bfloat16")
    for grad in grads:
        quantized.step(grad)
    dequantized = quantized.state_dict(dequantize=True)
    assert dequantized["param_groups"][0]["state_dtype"] is None
    assert dequantized["state"][0]["exp_avg"].dtype == F32
    plain = fastopt.Adam(start.copy(), lr=1e-2)
    plain.load_state_dict(dequantized)
    assert plain.state[0]["exp_avg"].dtype == F32
    np.testing.assert_array_equal(
        plain.state[0]["exp_avg"], quantized.state[0]["exp_avg"].astype(F32)
    )
    # And the float32 form into a bfloat16-state optimizer: rounded into its dtype.
    again = fastopt.Adam(start.copy(), lr=1e-2, state_dtype="bfloat16")
    again.load_state_dict({**dequantized, "param_groups": quantized.state_dict()["param_groups"]})
    assert_same_values(again.state[0]["exp_avg"], quantized.state[0]["exp_avg"])


def test_changing_the_state_dtype_between_steps_converts_the_state():
    start, grads = problem(500, np.float32, 2)
    opt = fastopt.Adam(start.copy(), lr=1e-2)
    opt.step(grads[0])
    kept = opt.state[0]["exp_avg"].copy()
    opt.param_groups[0]["state_dtype"] = "bfloat16"
    opt.step(grads[1])
    assert opt.state[0]["exp_avg"].dtype == BF16
    assert not np.array_equal(opt.state[0]["exp_avg"].astype(F32), kept)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"master_weights": True, "kahan_sum": True}, ValueError, "exclude each other"),
        ({"state_dtype": "int4"}, ValueError, "state_dtype must be one of"),
        ({"state_dtype": np.float16}, TypeError, "state_dtype must be None or a str"),
        ({"stochastic_rounding": 1}, TypeError, "stochastic_rounding must be a bool"),
        ({"kahan_sum": "yes"}, TypeError, "kahan_sum must be a bool"),
        ({"seed": -1}, ValueError, "seed must be in"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
    ],
)
def test_invalid_precision_options_are_refused(options, error, match):
    with pytest.raises(error, match=match):
        fastopt.Adam(np.zeros(3, BF16), **options)


def test_an_edited_group_option_is_checked_before_anything_is_written():
    param = np.ones(10, BF16)
    opt = fastopt.Adam(param, lr=0.1)
    opt.step(np.ones(10, BF16))
    before = param.copy(), opt.state[0]["exp_avg"].copy()
    opt.param_groups[0]["kahan_sum"] = True
    opt.param_groups[0]["master_weights"] = True
    with pytest.raises(ValueError, match="exclude each other"):
        opt.step(np.ones(10, BF16))
    assert_same_values(param, before[0])
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], before[1])
    assert opt.state[0]["step"] == 1


@pytest.mark.parametrize(
    ("param_dtype", "grad_dtype"), [(BF16, np.float64), (BF16, F16), (F16, BF16), (F32, BF16)]
)
def test_a_gradient_of_another_dtype_is_refused(param_dtype, grad_dtype):
    param = np.ones(4, param_dtype)
    opt = fastopt.SGD(param, lr=0.1)
    with pytest.raises(TypeError, match="must have the parameter's dtype"):
        opt.step(np.ones(4, grad_dtype))
    assert_same_values(param, np.ones(4, param_dtype))


def test_float32_gradients_update_a_bfloat16_parameter_as_bfloat16_ones_would():
    start, grads = problem(1000, np.float32, 3)
    exact = [grad.astype(BF16).astype(F32) for grad in grads]  # representable in bfloat16
    wide, narrow = start.astype(BF16), start.astype(BF16)
    wide_opt, narrow_opt = fastopt.Adam(wide, lr=1e-2), fastopt.Adam(narrow, lr=1e-2)
    for grad in exact:
        wide_opt.step(grad)
        narrow_opt.step(grad.astype(BF16))
    assert_same_values(wide, narrow)


def test_global_norm_clipping_reads_bfloat16_gradients():
    grads = [
        np.arange(-50, 50, dtype=np.float32).astype(BF16),
        np.linspace(-3, 3, 70000, dtype=F16),
    ]
    exact = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert fastopt.global_norm(grads) == pytest.approx(exact, rel=1e-12)
    assert fastopt.global_norm(grads, math.inf) == 50.0


# ---------------------------------------------------------------------- functional step
def test_the_functional_step_takes_a_master_copy_and_stochastic_rounding():
    start, grads = problem(2000, np.float32, 4)
    param, functional = start.astype(BF16), start.astype(BF16)
    opt = fastopt.Adam(param, lr=1e-3, master_weights=True, stochastic_rounding=True, seed=3)
    master = functional.astype(F32)
    exp_avg, exp_avg_sq = np.zeros(2000, F32), np.zeros(2000, F32)
    for step, grad in enumerate(grads, start=1):
        opt.step(grad.astype(BF16))
        fastopt.adam_step(
            functional,
            grad.astype(BF16),
            exp_avg,
            exp_avg_sq,
            lr=1e-3,
            step=step,
            master_param=master,
            stochastic_rounding=True,
            seed=3,
        )
    # The functional step is parameter 0 of its own: the same bits as the optimizer's.
    assert_same_values(functional, param)
    np.testing.assert_array_equal(master, opt.state[0]["master_param"])


def test_the_functional_step_refuses_a_master_copy_of_a_float32_parameter():
    param = np.ones(3, F32)
    with pytest.raises(ValueError, match="for bfloat16 and float16 parameters"):
        fastopt.sgd_step(param, np.ones(3, F32), lr=0.1, step=1, master_param=np.ones(3, F32))
    np.testing.assert_array_equal(param, np.ones(3, F32))


# ---------------------------------------------------------------------- torch
@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("mode", ["bf16", "bf16-master", "bf16-kahan", "bf16-state"])
def test_the_torch_adapter_steps_16_bit_tensors_in_place_as_the_numpy_class(torch_dtype, mode):
    """A torch model in bfloat16 or float16: its tensors view the flat buffer (zero copy),
    and fastopt.torch.AdamW gives the NumPy class's bits, state dtypes included."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    dtype = BF16 if torch_dtype == "bfloat16" else F16
    options = MODES[mode][1]
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).to(getattr(torch, torch_dtype))
    params = list(model.parameters())
    arrays = [ft._array_of(p.detach()).copy() for p in params]
    opt = ft.AdamW(params, lr=1e-2, **options)
    assert params[0].data_ptr() == ft._tensor_of(opt._flat.params[0]).data_ptr()
    numpy_opt = fastopt.AdamW(arrays, lr=1e-2, **options)
    rng = np.random.default_rng(8)
    for _ in range(4):
        grads = [rng.standard_normal(array.shape).astype(dtype) for array in arrays]
        for param, grad in zip(params, grads, strict=True):
            param.grad = ft._tensor_of(grad.copy())
        opt.step()
        numpy_opt.step(grads)
    for param, array in zip(params, arrays, strict=True):
        assert_same_values(ft._array_of(param.detach()), array)
    state = opt.state_dict()["state"][0]
    for name, value in numpy_opt.state[0].items():
        if isinstance(value, np.ndarray):
            assert_same_values(ft._array_of(state[name]), value)


def test_torch_optim_and_fastopt_torch_load_each_others_bfloat16_checkpoints():
    """torch.optim keeps a bfloat16 parameter's state in bfloat16; fastopt.torch in float32
    (or bfloat16 with state_dtype): each loads the other's checkpoint and goes on."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    torch.manual_seed(1)
    ours_model = torch.nn.Linear(5, 2).bfloat16()
    theirs_model = torch.nn.Linear(5, 2).bfloat16()
    theirs_model.load_state_dict(ours_model.state_dict())
    ours = ft.Adam(ours_model.parameters(), lr=1e-2, master_weights=True, seed=4)
    theirs = torch.optim.Adam(theirs_model.parameters(), lr=1e-2)
    x = torch.randn(8, 5).bfloat16()
    for model, opt in ((ours_model, ours), (theirs_model, theirs)):
        for _ in range(3):
            opt.zero_grad()
            model(x).float().square().mean().backward()
            opt.step()
    saved_ours, saved_theirs = ours.state_dict(), theirs.state_dict()
    assert saved_ours["seed"] == 4
    assert saved_ours["state"][0]["exp_avg"].dtype == torch.float32
    assert saved_ours["state"][0]["master_param"].dtype == torch.float32
    theirs.load_state_dict(saved_ours)  # torch casts the state to bfloat16 and ignores the rest
    assert theirs.state_dict()["state"][0]["exp_avg"].dtype == torch.bfloat16
    ours.load_state_dict(saved_theirs)  # ours widen the state, and keep the master copy
    assert ours.state_dict()["state"][0]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(
        ours.state_dict()["state"][0]["exp_avg"], saved_theirs["state"][0]["exp_avg"].float()
    )
    assert ours.param_groups[0]["master_weights"] is True
    for model, opt in ((ours_model, ours), (theirs_model, theirs)):
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in ours_model.parameters())
