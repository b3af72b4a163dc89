"""LossScaler: torch.amp.GradScaler's update rule, step skipping, state."""

import math

import numpy as np
import pytest

import fastopt

# True where the step's gradients hold an Inf or NaN.
PATTERN = [False, False, True, False, False, False, False, True, True, False, False, False] * 2


def _grads(step: int, bad: bool, scale: float) -> np.ndarray:
    with np.errstate(over="ignore"):  # near float32's maximum, scaled gradients overflow
        grad = np.linspace(-1, 1, 9, dtype=np.float32) * np.float32(step + 1) * np.float32(scale)
    if bad:
        grad[step % 9] = np.nan if step % 2 else np.inf
    return grad


@pytest.mark.parametrize(
    "settings",
    [
        {"init_scale": 2.0**16, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3},
        {"init_scale": 1000.0, "growth_factor": 1.7, "backoff_factor": 0.3, "growth_interval": 2},
        {"init_scale": 2.0**126, "growth_factor": 4.0, "backoff_factor": 0.9, "growth_interval": 1},
    ],
    ids=["torch-defaults", "odd-factors", "near-float32-max"],
)
def test_scale_trajectory_and_skips_equal_torch_grad_scaler(settings):
    torch = pytest.importorskip("torch")
    t_param = torch.zeros(9, requires_grad=True)
    t_opt = torch.optim.SGD([t_param], lr=0.1)
    t_scaler = torch.amp.GradScaler("cpu", **settings)

    param = np.zeros(9, np.float32)
    opt = fastopt.SGD(param, lr=0.1)
    scaler = fastopt.LossScaler(**settings)

    applied = 0
    for step, bad in enumerate(PATTERN):
        t_scaler.scale(torch.ones(()))  # what scaling the loss does: initializes the scale
        assert scaler.get_scale() == t_scaler.get_scale()
        t_param.grad = torch.from_numpy(_grads(step, bad, t_scaler.get_scale()))
        before = t_param.detach().clone()
        t_scaler.step(t_opt)
        t_scaler.update()
        torch_applied = not torch.equal(before, t_param.detach())
        applied += torch_applied
        scaler.step(opt, _grads(step, bad, scaler.get_scale()))
        scaler.update()
        assert opt.last_step.applied is torch_applied
        assert torch_applied or bad or scaler.get_scale() > 2.0**120  # overflowed
        assert scaler.get_scale() == t_scaler.get_scale(), f"step {step}"
        assert scaler.state_dict() == t_scaler.state_dict()
        np.testing.assert_allclose(param, t_param.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert opt.step_count == applied


def test_skipping_overrides_the_optimizers_raise_policy_and_clipping_is_fused():
    param = np.zeros(3)
    opt = fastopt.Adam(param, lr=0.1, nonfinite="raise", max_norm=1.0)
    scaler = fastopt.LossScaler(init_scale=8.0)
    scaler.step(opt, np.array([np.inf, 0.0, 0.0]))
    scaler.update()
    assert scaler.get_scale() == 4.0 and opt.step_count == 0 and opt.state == {}
    scaler.step(opt, np.array([12.0, 16.0, 0.0]))  # unscaled (3, 4, 0): norm 5
    assert opt.last_step.grad_norm == 5.0
    assert opt.last_step.clip_coef == pytest.approx(0.2, rel=1e-6)
    with pytest.raises(FloatingPointError):
        opt.step(np.array([np.nan, 0.0, 0.0]))


def test_several_optimizers_share_one_update():
    first, second = fastopt.SGD(np.zeros(2), lr=1.0), fastopt.SGD(np.zeros(2), lr=1.0)
    scaler = fastopt.LossScaler(init_scale=16.0, growth_interval=1)
    scaler.step(first, np.ones(2))
    scaler.step(second, np.array([np.nan, 1.0]))
    scaler.update()
    assert scaler.get_scale() == 8.0 and first.step_count == 1 and second.step_count == 0
    scaler.step(first, np.ones(2))
    scaler.update()
    assert scaler.get_scale() == 16.0


def test_update_without_step_and_manual_scale():
    scaler = fastopt.LossScaler()
    with pytest.raises(RuntimeError, match="step"):
        scaler.update()
    scaler.update(new_scale=3.0)
    assert scaler.get_scale() == 3.0
    assert scaler.scale(2.0) == 6.0
    np.testing.assert_array_equal(scaler.scale(np.ones(2)), [3.0, 3.0])


def test_disabled_scaler_is_a_plain_step():
    param = np.zeros(2)
    opt = fastopt.SGD(param, lr=1.0)
    scaler = fastopt.LossScaler(enabled=False)
    scaler.step(opt, np.array([2.0, np.inf]))
    scaler.update()
    assert scaler.get_scale() == 1.0 and not scaler.is_enabled() and scaler.state_dict() == {}
    assert param[0] == -2.0 and param[1] == -np.inf
    with pytest.raises(RuntimeError):
        scaler.load_state_dict({"scale": 2.0})


def test_state_dict_round_trip_and_torch_state_dicts_load():
    torch = pytest.importorskip("torch")
    t_scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    scaler = fastopt.LossScaler()
    scaler.load_state_dict(t_scaler.state_dict())
    assert scaler.state_dict() == t_scaler.state_dict()
    other = fastopt.LossScaler(init_scale=4.0)
    other.load_state_dict(scaler.state_dict())
    assert other.state_dict() == scaler.state_dict()


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({}, "empty"),
        ({"scale": 2.0}, "growth_factor"),
        ({**fastopt.LossScaler().state_dict(), "scale": -1.0}, "init_scale"),
        ({**fastopt.LossScaler().state_dict(), "growth_interval": 2.5}, "growth_interval"),
        ({**fastopt.LossScaler().state_dict(), "_growth_tracker": 5000}, "_growth_tracker"),
        ({**fastopt.LossScaler().state_dict(), "backoff_factor": "x"}, "non-numeric"),
    ],
)
def test_invalid_state_dict_changes_nothing(state, message):
    scaler = fastopt.LossScaler(init_scale=32.0)
    before = scaler.state_dict()
    with pytest.raises(ValueError, match=message):
        scaler.load_state_dict(state)
    assert scaler.state_dict() == before


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"init_scale": 0.0}, ValueError),
        ({"init_scale": math.inf}, ValueError),
        ({"init_scale": 1e-50}, ValueError),  # 0 in float32
        ({"growth_factor": 1.0}, ValueError),
        ({"backoff_factor": 1.0}, ValueError),
        ({"backoff_factor": 0.0}, ValueError),
        ({"growth_interval": 0}, ValueError),
        ({"growth_interval": 2.0}, TypeError),
        ({"init_scale": "1"}, TypeError),
        ({"enabled": 1}, TypeError),
    ],
)
def test_invalid_settings(settings, error):
    with pytest.raises(error):
        fastopt.LossScaler(**settings)
