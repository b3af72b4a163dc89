"""Every rule and option, compiled kernels against the NumPy reference, float32 and float64."""

import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id, problem, run_reference

from fastopt._jit import PARALLEL_THRESHOLD

# 0, 1, odd, small, and larger than the parallel threshold (odd, so chunks end unevenly).
SIZES = [0, 1, 7, 1000, 2 * PARALLEL_THRESHOLD + 13]
STEPS = 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, size, dtype):
    rule, cls, kwargs = case
    param, grads = problem(size, dtype, STEPS)
    expected = param.copy()
    expected_state = run_reference(rule, cls, kwargs, expected, grads)

    opt = cls(param, **kwargs)
    for grad in grads:
        opt.step(grad)

    assert_close(param, expected)
    state = opt.state[0]
    assert state["step"] == STEPS
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    assert sorted(arrays) == sorted(expected_state)
    for name, value in arrays.items():
        assert value.dtype == dtype and value.shape == param.shape
        assert_close(value, expected_state[name], err_msg=name)
    for name, value in expected_state.scalars.items():
        assert state[name] == value, name
    for name, value in expected_state.group.items():  # per-group values the steps advanced
        assert opt.param_groups[0][name] == value, name
    if size:
        assert not np.array_equal(param, problem(size, dtype, 0)[0]), "nothing moved"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parallel_and_serial_paths_agree_bitwise(case, monkeypatch):
    import fastopt._launch as launch_module

    _, cls, kwargs = case
    size = PARALLEL_THRESHOLD + 4099
    results = []
    for threshold in (PARALLEL_THRESHOLD, size + 1):
        monkeypatch.setattr(launch_module, "PARALLEL_THRESHOLD", threshold)
        param, grads = problem(size, np.float32, 5)
        opt = cls(param, **kwargs)
        for grad in grads:
            opt.step(grad)
        results.append((param, opt.state[0]))
    (p_par, s_par), (p_ser, s_ser) = results
    assert np.array_equal(p_par, p_ser)
    for name, value in s_par.items():
        np.testing.assert_array_equal(value, s_ser[name], err_msg=name)


# Rules whose parameters stay finite under a NaN or infinite gradient, as in torch: Rprop moves
# each element by sign(g) times its step size (torch.sign of NaN is 0), the gradient itself
# goes to its ``prev`` state only.
NONFINITE_GRADIENTS_STOP_AT_THE_STATE = {"rprop"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_non_finite_gradients_propagate_like_the_reference(case, dtype):
    rule, cls, kwargs = case
    param, grads = problem(PARALLEL_THRESHOLD + 77, dtype, 4)
    grads[1][[3, 500, PARALLEL_THRESHOLD + 5]] = [np.nan, np.inf, -np.inf]
    expected = param.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        expected_state = run_reference(rule, cls, kwargs, expected, grads)
    opt = cls(param, **kwargs)
    for grad in grads:
        opt.step(grad)
    if rule not in NONFINITE_GRADIENTS_STOP_AT_THE_STATE:
        assert not np.all(np.isfinite(param))
    assert_close(param, expected)  # NaN where the reference has NaN, equal elsewhere
    for name, value in expected_state.items():
        assert_close(opt.state[0][name], value, err_msg=name)
