"""8-bit block-wise state (``state_dtype="int8"``): the codec as the kernels run it, every
rule against the NumPy reference, determinism across paths, checkpoints, validation."""

from __future__ import annotations

import ml_dtypes
import numba
import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id, problem, run_low_precision_steps

import fastopt
from fastopt import _quantized, reference
from fastopt._jit import PARALLEL_THRESHOLD
from fastopt.precision import MIN_QUANTIZED_SIZE, rounding_key

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)
MAPS = {True: reference.dynamic_map(True), False: reference.dynamic_map(False)}


# ---------------------------------------------------------------------- the codec
def hard_values(signed: bool, seed: int = 0) -> np.ndarray:
    """Values at every scale, every code and the bounds between codes one unit either side,
    zeros, NaN and Inf, in blocks of every fill (a zero block, a partial last block)."""
    rng = np.random.default_rng(seed)
    count = 60_000
    scaled = rng.standard_normal(count) * 10.0 ** rng.uniform(-9, 2, count)
    code = MAPS[signed]
    bounds = (code[:-1] + code[1:]) / np.float32(2)
    edges = np.concatenate(
        [code, bounds, np.nextafter(bounds, np.float32(2)), np.nextafter(bounds, np.float32(-2))]
    )
    values = np.concatenate([scaled.astype(np.float32), edges, np.zeros(300, np.float32)])
    values[[5, 60_500]] = np.nan
    values[[1000, 2000]] = [np.inf, -np.inf]
    values = values if signed else np.abs(values)
    return np.concatenate([values, values[: 256 * 3 + 17]]).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, None])
def test_the_kernels_codec_is_the_reference_bit_for_bit(signed, size):
    """Codes and scales equal :func:`reference.quantize_blockwise`'s (NaN scales as NaN), and
    decoding equals :func:`reference.dequantize_blockwise`'s."""
    values = hard_values(signed)
    if size is not None:
        values = values[1000 : 1000 + size]
    codes, absmax = _quantized.quantize(values, signed)
    expected_codes, expected_absmax = reference.quantize_blockwise(values, MAPS[signed])
    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(absmax, expected_absmax)
    np.testing.assert_array_equal(
        _quantized.dequantize(codes, absmax, signed),
        reference.dequantize_blockwise(codes, absmax, MAPS[signed]),
    )


@numba.njit
def _encode_all(y, table, out):
    for i in range(y.size):
        out[i] = _quantized.encode(y[i], table)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_encoder_as_plain_python_is_the_compiled_one(signed):
    """The CUDA simulator runs the encoder as Python: the same codes, every one the nearest."""
    values = np.clip(hard_values(signed)[::7], -1, 1)
    table = _quantized.tables(signed)[1]
    compiled = np.empty(values.size, np.uint8)
    _encode_all(values, table, compiled)
    python = np.array([_quantized.encode.py_func(v, table) for v in values[:3000]], np.uint8)
    np.testing.assert_array_equal(python, compiled[:3000])
    code = MAPS[signed]
    bounds = (code[:-1] + code[1:]) / np.float32(2)
    np.testing.assert_array_equal(compiled, np.searchsorted(bounds, values, side="left"))


# ---------------------------------------------------------------------- every rule
FIRST_CASES = [
    case
    for number, case in enumerate(CASES)
    if case[0] not in {c[0] for c in CASES[:number]} and case[1]._param_ndim is None
]


def int8_reference(cls, kwargs, param, grads, seed=0):
    """What ``cls(param, state_dtype="int8", **kwargs)`` does over ``grads``, by
    :func:`reference.low_precision_step` around the rule's reference step: the state as
    quantized triples (or plain arrays), and the master copy."""
    rule = cls._rule
    hp = dict(cls(np.zeros(1, param.dtype), state_dtype="int8", **kwargs).defaults)
    low = param.dtype == BF16
    quantized = param.size >= MIN_QUANTIZED_SIZE
    plain_dtype = F32 if low else param.dtype
    master = param.astype(F32) if low and hp["master_weights"] else None
    stochastic = hp["stochastic_rounding"] and low

    def new_state(declared):
        source = master if master is not None else param.astype(plain_dtype)
        start = (
            source.astype(plain_dtype)
            if declared.from_param
            else np.full(param.shape, declared.initial(hp), plain_dtype)
        )
        if not (quantized and declared.quantizable):
            return start
        code = MAPS[not declared.nonnegative]
        return (*reference.quantize_blockwise(start, code), code)

    def key_of(step):
        return int(rounding_key(seed, 0, step)) if stochastic else None

    state = run_low_precision_steps(rule, hp, param, grads, new_state, master, None, key_of)
    return state, master


def assert_codes_match(codes, absmax, expected, what):
    """8-bit state as the reference's: scales to float32 rounding, codes equal but where the
    value sat on a bound between two codes (float32 arithmetic of NumPy and of the kernel
    may round it either side): there one code apart, and nearly all codes equal."""
    expected_codes, expected_absmax, _ = expected
    assert codes.dtype == np.uint8 and codes.shape == expected_codes.shape, what
    assert_close(absmax, expected_absmax, f"{what} scales")
    apart = np.abs(codes.astype(np.int64) - expected_codes.astype(np.int64))
    assert apart.max(initial=0) <= 1, f"{what}: codes {apart.max()} apart"
    if codes.size >= 1000:
        assert np.mean(apart == 0) > 0.999, f"{what}: only {np.mean(apart == 0):.4f} equal"


def assert_state_matches(opt, state, master):
    entry = opt.state[0]
    names = {name for name, value in entry.items() if isinstance(value, np.ndarray)}
    wanted = set(state) | {f"{n}_absmax" for n, s in state.items() if isinstance(s, tuple)}
    assert names == wanted | ({"master_param"} if master is not None else set())
    for name, expected in state.items():
        if isinstance(expected, tuple):
            assert_codes_match(entry[name], entry[f"{name}_absmax"], expected, name)
        else:
            assert entry[name].dtype == expected.dtype, name
            assert_close(entry[name], expected, name)
    if master is not None:
        assert_close(entry["master_param"], master, "master_param")


REFERENCE_RUNS = (
    [
        pytest.param(case, size, id=f"{case_id(case)}-{size}")
        for case in FIRST_CASES
        for size in (0, 300, 5003)
    ]
    + [
        pytest.param(case, MIN_QUANTIZED_SIZE, id=f"{case_id(case)}-{MIN_QUANTIZED_SIZE}")
        for case in FIRST_CASES
        if case[0] == "adam"
    ]
    + [
        pytest.param(case, PARALLEL_THRESHOLD + 4099, id=f"{case_id(case)}-parallel")
        for case in FIRST_CASES
        if case[0] in ("adam", "lamb")
    ]
)


@pytest.mark.parametrize(("case", "size"), REFERENCE_RUNS)
def test_every_rule_matches_the_int8_reference(case, size):
    """Float32 parameters and 8-bit state after 6 steps: the parameter and every state array
    as the reference's (decode, the rule in float32, encode with the new scales); parameters
    under 4,096 elements keep float32 state, as do arrays that hold parameter values."""
    _, cls, kwargs = case
    start, grads = problem(size, np.float32, 6)
    expected = start.copy()
    state, master = int8_reference(cls, kwargs, expected, grads)
    param = start.copy()
    opt = cls(param, state_dtype="int8", **kwargs)
    for grad in grads:
        opt.step(grad)
    assert_close(param, expected, "param")
    assert_state_matches(opt, state, master)
    if size > 1:
        assert not np.array_equal(param, start), "nothing moved"


@pytest.mark.parametrize(
    ("dtype", "options"),
    [
        (np.float64, {}),
        (BF16, {"master_weights": True}),
        (BF16, {"stochastic_rounding": True}),
        (BF16, {"master_weights": True, "stochastic_rounding": True}),
    ],
    ids=["float64", "bf16-master", "bf16-stochastic", "bf16-master-stochastic"],
)
def test_adam_with_int8_state_on_other_parameter_dtypes(dtype, options):
    """float64 parameters compute in float64 (the state decoded, encoded from float32);
    bfloat16 parameters with a master copy or stochastic rounding, as the reference."""
    start, grads = problem(5003, np.float32, 5, seed=3)
    start, grads = start.astype(dtype), [grad.astype(dtype) for grad in grads]
    kwargs = {"lr": 1e-2, "weight_decay": 0.1, **options}
    expected = start.copy()
    state, master = int8_reference(fastopt.AdamW, kwargs, expected, grads)
    param = start.copy()
    opt = fastopt.AdamW(param, state_dtype="int8", **kwargs)
    for grad in grads:
        opt.step(grad)
    if dtype == BF16:
        apart = np.abs(param.astype(np.float64) - expected.astype(np.float64))
        assert np.all(apart <= np.abs(np.spacing(expected)).astype(np.float64))
        assert np.mean(apart == 0) > 0.99
    else:
        assert_close(param, expected, "param")
    assert_state_matches(opt, state, master)


def test_the_unsigned_map_codes_the_second_moment():
    """Non-negative state (a second moment) takes the unsigned map, the rest the signed one:
    after one step each decodes to the reference's coding of its exact value (and with the
    other map, to other values)."""
    rng = np.random.default_rng(1)
    param, grad = rng.standard_normal((2, 5000)).astype(np.float32)
    opt = fastopt.Adam(param, lr=1e-2, state_dtype="int8")
    opt.step(grad)
    entry = opt.state[0]
    for name, exact, signed in (
        ("exp_avg", np.float32(0.1) * grad, True),
        ("exp_avg_sq", np.float32(0.001) * grad * grad, False),
    ):
        codes, scales = entry[name], entry[f"{name}_absmax"]
        expected = reference.dequantize_blockwise(
            *reference.quantize_blockwise(exact, MAPS[signed]), MAPS[signed]
        )
        assert_close(_quantized.dequantize(codes, scales, signed), expected, name)
        other = _quantized.dequantize(codes, scales, not signed)
        assert not np.allclose(other, expected, rtol=0.1), name


def test_schedule_free_keeps_z_in_float32():
    """State that holds parameter values is not quantized (8 bits cannot carry weights)."""
    param = np.ones(5000, np.float32)
    opt = fastopt.ScheduleFreeAdamW(param, state_dtype="int8")
    opt.train()
    opt.step(np.ones(5000, np.float32))
    entry = opt.state[0]
    assert entry["z"].dtype == F32
    assert entry["exp_avg_sq"].dtype == np.uint8 and "exp_avg_sq_absmax" in entry
    assert "z_absmax" not in entry


# ---------------------------------------------------------------------- paths, determinism
def mixed_problem(seed=7):
    rng = np.random.default_rng(seed)
    shapes = [(70, 90), (5,), (3000,), (PARALLEL_THRESHOLD + 300,), (64, 64), (1,)]
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    steps = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    return shapes, arrays, steps


def test_one_flat_launch_equals_the_per_array_steps_bitwise():
    """A FlatParams of quantized and unquantized arrays in two groups, one launch per layout:
    the per-array steps' bits, parameters and every state array."""
    shapes, arrays, steps = mixed_problem()
    separate = [array.copy() for array in arrays]
    by_array = fastopt.AdamW(
        [{"params": separate[:3]}, {"params": separate[3:], "lr": 3e-3}],
        lr=1e-2,
        state_dtype="int8",
    )
    flat = fastopt.FlatParams(shapes)
    for view, array in zip(flat.params, arrays, strict=True):
        view[...] = array
    by_flat = fastopt.AdamW(
        [{"params": flat.params[:3]}, {"params": flat.params[3:], "lr": 3e-3}],
        lr=1e-2,
        state_dtype="int8",
    )
    for grads in steps:
        by_array.step(grads)
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        by_flat.step()
    for index, (got, want) in enumerate(zip(flat.params, separate, strict=True)):
        np.testing.assert_array_equal(got, want)
        assert set(by_flat.state[index]) == set(by_array.state[index])
        for name, value in by_array.state[index].items():
            np.testing.assert_array_equal(by_flat.state[index][name], value, err_msg=name)
    assert by_flat.state[0]["exp_avg"].dtype == np.uint8
    assert by_flat.state[1]["exp_avg"].dtype == F32  # 5 elements: float32


def test_the_same_bits_on_one_thread_and_on_two():
    """Blocks are whole per thread: the chunking cannot change a bit."""
    shapes, arrays, steps = mixed_problem(seed=8)
    results = []
    threads = numba.get_num_threads()
    try:
        for count in (1, threads):
            numba.set_num_threads(count)
            params = [array.copy() for array in arrays]
            opt = fastopt.Adam(params, lr=1e-2, state_dtype="int8")
            for grads in steps:
                opt.step(grads)
            results.append((params, opt.state))
    finally:
        numba.set_num_threads(threads)
    (one, one_state), (many, many_state) = results
    for index in range(len(shapes)):
        np.testing.assert_array_equal(one[index], many[index])
        for name, value in one_state[index].items():
            np.testing.assert_array_equal(many_state[index][name], value, err_msg=name)


# ---------------------------------------------------------------------- checkpoints
def stepped(state_dtype="int8", steps=3):
    rng = np.random.default_rng(9)
    params = [rng.standard_normal((80, 70)).astype(np.float32), np.ones(10, np.float32)]
    opt = fastopt.AdamW(params, lr=1e-2, state_dtype=state_dtype)
    for _ in range(steps):
        opt.step([rng.standard_normal(p.shape).astype(np.float32) for p in params])
    return params, opt


def test_state_dict_and_checkpoint_files_keep_the_codes_exactly(tmp_path):
    params, opt = stepped()
    entry = opt.state[0]
    assert entry["exp_avg_absmax"].shape == (22,) and entry["exp_avg"].shape == (80, 70)
    again = fastopt.AdamW([p.copy() for p in params], lr=1e-2, state_dtype="int8")
    again.load_state_dict(opt.state_dict())
    fastopt.save(tmp_path / "c.ckpt", opt)
    restored = fastopt.AdamW([p.copy() for p in params], lr=1e-2, state_dtype="int8")
    fastopt.load(tmp_path / "c.ckpt").restore(restored)
    for other in (again, restored):
        for index, entry in opt.state.items():
            assert set(other.state[index]) == set(entry)
            for name, value in entry.items():
                np.testing.assert_array_equal(other.state[index][name], value, err_msg=name)
    grad = [np.full(p.shape, 0.5, np.float32) for p in params]
    opt.step(grad)
    restored.step(grad)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], restored.state[0]["exp_avg"])


def test_dequantized_state_loads_into_float32_optimizers():
    """``state_dict(dequantize=True)``: float32 arrays, no scales, ``state_dtype`` None; a
    float32 optimizer loads it and continues from the decoded values."""
    params, opt = stepped()
    saved = opt.state_dict(dequantize=True)
    assert saved["param_groups"][0]["state_dtype"] is None
    assert sorted(saved["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    entry = opt.state[0]
    decoded = _quantized.dequantize(entry["exp_avg"], entry["exp_avg_absmax"], True)
    np.testing.assert_array_equal(saved["state"][0]["exp_avg"], decoded)
    plain = fastopt.AdamW([p.copy() for p in params], lr=1e-2)
    plain.load_state_dict(saved)
    assert plain.state[0]["exp_avg"].dtype == F32
    np.testing.assert_array_equal(plain.state[0]["exp_avg"], decoded)
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"], entry["exp_avg"])


def test_decoded_values_load_into_an_int8_group_as_codes():
    """float32 values for a quantized array are encoded on loading (dequantized state into
    an optimizer whose checkpoint groups say int8)."""
    params, opt = stepped(state_dtype=None)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        group["state_dtype"] = "int8"
    target = fastopt.AdamW([p.copy() for p in params], lr=1e-2)
    target.load_state_dict(saved)
    entry = target.state[0]
    assert entry["exp_avg"].dtype == np.uint8
    codes, scales = _quantized.quantize(saved["state"][0]["exp_avg"], True)
    np.testing.assert_array_equal(entry["exp_avg"], codes)
    np.testing.assert_array_equal(entry["exp_avg_absmax"], scales)
    assert target.state[1]["exp_avg"].dtype == F32  # 10 elements


def test_changing_state_dtype_between_steps_converts_the_state():
    params, opt = stepped()
    entry = opt.state[0]
    decoded = _quantized.dequantize(entry["exp_avg"], entry["exp_avg_absmax"], True)
    opt.param_groups[0]["state_dtype"] = None
    zero = [np.zeros(p.shape, np.float32) for p in params]
    opt.step(zero)
    assert opt.state[0]["exp_avg"].dtype == F32 and "exp_avg_absmax" not in opt.state[0]
    np.testing.assert_allclose(opt.state[0]["exp_avg"], 0.9 * decoded, rtol=1e-6)
    opt.param_groups[0]["state_dtype"] = "int8"
    opt.step(zero)
    assert opt.state[0]["exp_avg"].dtype == np.uint8 and "exp_avg_absmax" in opt.state[0]


def test_invalid_checkpoints_and_options_are_refused_unchanged():
    params, opt = stepped()
    before = {name: value.copy() for name, value in opt.state[0].items() if name != "step"}
    saved = opt.state_dict()
    del saved["state"][0]["exp_avg_absmax"]
    with pytest.raises(ValueError, match="has 'exp_avg' but not 'exp_avg_absmax'"):
        opt.load_state_dict(saved)
    saved = opt.state_dict()
    saved["state"][1]["exp_avg_absmax"] = np.ones(1, np.float32)
    with pytest.raises(ValueError, match="quantized state only"):
        opt.load_state_dict(saved)
    saved = opt.state_dict()
    saved["state"][0]["exp_avg_absmax"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"shape \(22,\)"):
        opt.load_state_dict(saved)
    for name, value in before.items():
        np.testing.assert_array_equal(opt.state[0][name], value)
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        fastopt.Adam(params, state_dtype="uint8")


# ---------------------------------------------------------------------- torch, bitsandbytes
def test_the_torch_adapter_steps_as_the_numpy_class_and_torch_loads_the_dequantized_state():
    torch = pytest.importorskip("torch")
    import fastopt.torch as fastopt_torch

    rng = np.random.default_rng(10)
    shapes = [(80, 70), (10,)]
    start = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    tensors = [torch.from_numpy(a.copy()) for a in start]
    adapter = fastopt_torch.AdamW(tensors, lr=1e-2, state_dtype="int8")
    arrays = [a.copy() for a in start]
    plain = fastopt.AdamW(arrays, lr=1e-2, state_dtype="int8")
    for step in grads:
        for tensor, grad in zip(tensors, step, strict=True):
            tensor.grad = torch.from_numpy(grad)
        adapter.step()
        plain.step(step)
    for tensor, array in zip(tensors, arrays, strict=True):
        np.testing.assert_array_equal(tensor.numpy(), array)
    exposed = adapter.state[tensors[0]]
    assert exposed["exp_avg"].dtype == torch.uint8 and exposed["exp_avg_absmax"].shape == (22,)
    np.testing.assert_array_equal(exposed["exp_avg"].numpy(), plain.state[0]["exp_avg"])

    again = fastopt_torch.AdamW([torch.from_numpy(a.copy()) for a in start], lr=1e-2)
    again.load_state_dict(adapter.state_dict())
    assert again.param_groups[0]["state_dtype"] == "int8"
    np.testing.assert_array_equal(
        again.state[again.param_groups[0]["params"][0]]["exp_avg_sq"].numpy(),
        plain.state[0]["exp_avg_sq"],
    )
    saved = adapter.state_dict(dequantize=True)
    assert saved["state"][0]["exp_avg"].dtype == torch.float32
    assert "exp_avg_absmax" not in saved["state"][0]
    reference_optimizer = torch.optim.AdamW([torch.from_numpy(a.copy()) for a in start], lr=1e-2)
    reference_optimizer.load_state_dict(saved)
    loaded = reference_optimizer.state[reference_optimizer.param_groups[0]["params"][0]]
    entry = plain.state[0]
    decoded = _quantized.dequantize(entry["exp_avg"], entry["exp_avg_absmax"], True)
    np.testing.assert_array_equal(loaded["exp_avg"].numpy(), decoded)


def test_adamw_int8_tracks_bitsandbytes_adamw8bit():
    """bitsandbytes' ``AdamW8bit`` on CPU tensors (dequantize, update in float32, quantize,
    per 256-element block; its CPU quantizer searches approximately): nearly every code equal
    after 20 steps, parameters less than one step apart, and as close to float32 AdamW."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    import fastopt.torch as fastopt_torch

    generator = torch.Generator().manual_seed(0)
    start = torch.randn((64, 300), generator=generator)
    theirs, ours, exact = (start.clone() for _ in range(3))
    lr = 1e-3
    optimizers = [
        bnb.optim.AdamW8bit([theirs], lr=lr, weight_decay=0.01, min_8bit_size=4096),
        fastopt_torch.AdamW([ours], lr=lr, weight_decay=0.01, state_dtype="int8"),
        torch.optim.AdamW([exact], lr=lr, weight_decay=0.01),
    ]
    for _ in range(20):
        grad = torch.randn(start.shape, generator=generator)
        for tensor, optimizer in zip((theirs, ours, exact), optimizers, strict=True):
            tensor.grad = grad.clone()
            optimizer.step()
    state_theirs, state_ours = optimizers[0].state[theirs], optimizers[1].state[ours]
    for their_name, our_name in (("state1", "exp_avg"), ("state2", "exp_avg_sq")):
        same = state_theirs[their_name].numpy() == state_ours[our_name].numpy()
        assert same.mean() > 0.95, (our_name, same.mean())
    assert (theirs - ours).abs().max().item() < lr
    ours_off = (ours - exact).abs().mean().item()
    theirs_off = (theirs - exact).abs().mean().item()
    assert ours_off <= 1.5 * theirs_off + 1e-7, (ours_off, theirs_off)


@pytest.mark.parametrize(
    ("cls", "shapes"),
    [
        (fastopt.Lamb, [(5, 3000), (100, 50), (7,), (70, 80)]),
        (fastopt.Muon, [(200, 350), (64, 70), (3, 4), (80, 70)]),
    ],
    ids=["Lamb", "Muon"],
)
def test_passes_that_read_whole_tensors_decode_each_block_with_its_scale(cls, shapes):
    """The norms' read pass (LAMB) and the matrix step's direction pass (Muon) read 8-bit
    state too: in one FlatParams launch of consecutive quantized parameters, and by thread
    chunks of one parameter (70,000 elements in two chunks), the per-array, one-thread bits."""
    rng = np.random.default_rng(11)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    steps = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    flat = fastopt.FlatParams(shapes)
    for view, array in zip(flat.params, arrays, strict=True):
        view[...] = array
    by_flat = cls(flat.params, lr=1e-2, state_dtype="int8")
    for grads in steps:
        for view, grad in zip(flat.grads, grads, strict=True):
            view[...] = grad
        by_flat.step()
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        separate = [array.copy() for array in arrays]
        by_array = cls(separate, lr=1e-2, state_dtype="int8")
        for grads in steps:
            by_array.step(grads)
    finally:
        numba.set_num_threads(threads)
    for index, (got, want) in enumerate(zip(flat.params, separate, strict=True)):
        np.testing.assert_array_equal(got, want)
        for name, value in by_array.state[index].items():
            np.testing.assert_array_equal(by_flat.state[index][name], value, err_msg=name)
    assert by_array.state[0][next(iter(cls._rule.state_names))].dtype == np.uint8
