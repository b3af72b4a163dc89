"""ReduceLROnPlateau: torch's behaviour as the reference, checkpoints and input checks."""

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

import fastopt.schedules as fs


def metric_sequence():
    """Improvements, a noisy plateau, a small relapse, then a long flat stretch."""
    rng = np.random.default_rng(0)
    return np.concatenate(
        [
            np.linspace(1.0, 0.5, 20),
            0.5 + rng.normal(0.0, 1e-5, 30),
            np.linspace(0.5, 0.3, 10),
            np.full(15, 0.31),
            0.3 - np.geomspace(1e-6, 1e-2, 15),
            np.full(60, 0.29),
        ]
    ).tolist()


def duck_optimizer(lrs=(0.1, 0.01)):
    return SimpleNamespace(param_groups=[{"lr": lr} for lr in lrs])


def lr_history(scheduler, optimizer, metrics):
    history = []
    for metric in metrics:
        scheduler.step(metric)
        history.append([group["lr"] for group in optimizer.param_groups])
    return history


CONFIGS = [
    {},
    {"mode": "max", "factor": 0.5, "patience": 3},
    {"threshold_mode": "abs", "threshold": 1e-3, "patience": 2, "cooldown": 4},
    {"factor": 0.3, "patience": 0, "min_lr": [1e-4, 1e-3]},
    {"factor": 0.5, "patience": 1, "cooldown": 2, "min_lr": 2e-3, "eps": 1e-3},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.0, "patience": 5},
]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_matches_torch(config):
    torch = pytest.importorskip("torch", reason="torch is the reference for ReduceLROnPlateau")
    params = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(2)]
    torch_optimizer = torch.optim.SGD(
        [{"params": [p], "lr": lr} for p, lr in zip(params, (0.1, 0.01), strict=True)]
    )
    torch_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_optimizer, **config)
    optimizer = duck_optimizer()
    scheduler = fs.ReduceLROnPlateau(optimizer, **config)
    metrics = metric_sequence()
    if config.get("mode") == "max":
        metrics = [-m for m in metrics]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = lr_history(torch_scheduler, torch_optimizer, metrics)
    history = lr_history(scheduler, optimizer, metrics)
    assert history == expected
    assert len({tuple(lrs) for lrs in history}) > 1, "the sequence should trigger reductions"
    assert scheduler.num_bad_epochs == torch_scheduler.num_bad_epochs
    assert scheduler.cooldown_counter == torch_scheduler.cooldown_counter
    assert scheduler.best == torch_scheduler.best


def test_reduces_after_patience_and_respects_cooldown_and_min_lr():
    optimizer = duck_optimizer([1.0])
    scheduler = fs.ReduceLROnPlateau(optimizer, factor=0.5, patience=2, cooldown=1, min_lr=0.3)
    lrs = [lrs[0] for lrs in lr_history(scheduler, optimizer, [1.0] * 10)]
    # Step 1 sets the baseline; steps 2-4 are bad, the third of them exceeds patience=2.
    # One cooldown step then ignores a bad step before counting starts again.
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3]


def test_state_dict_is_json_and_resumes_exactly():
    metrics = metric_sequence()
    config = {"factor": 0.5, "patience": 2, "cooldown": 3}
    optimizer = duck_optimizer()
    reference = lr_history(fs.ReduceLROnPlateau(optimizer, **config), optimizer, metrics)

    first = duck_optimizer()
    scheduler = fs.ReduceLROnPlateau(first, **config)
    head = lr_history(scheduler, first, metrics[:57])
    saved = json.loads(
        json.dumps({"plateau": scheduler.state_dict(), "groups": first.param_groups})
    )
    assert set(saved["plateau"]) == {"best", "num_bad_epochs", "cooldown_counter", "last_epoch"}

    resumed_optimizer = SimpleNamespace(param_groups=saved["groups"])
    resumed = fs.ReduceLROnPlateau(resumed_optimizer, **config)
    resumed.load_state_dict(saved["plateau"])
    tail = lr_history(resumed, resumed_optimizer, metrics[57:])
    assert head + tail == reference


def test_fresh_state_dict_is_strict_json():
    scheduler = fs.ReduceLROnPlateau(duck_optimizer())
    assert json.loads(json.dumps(scheduler.state_dict(), allow_nan=False))["best"] is None


def test_load_state_dict_rejects_incomplete_or_invalid_state():
    scheduler = fs.ReduceLROnPlateau(duck_optimizer())
    state = scheduler.state_dict()
    with pytest.raises(ValueError, match="lacks num_bad_epochs"):
        scheduler.load_state_dict({k: v for k, v in state.items() if k != "num_bad_epochs"})
    with pytest.raises(ValueError, match="best must be finite"):
        scheduler.load_state_dict({**state, "best": math.nan})
    with pytest.raises(ValueError, match="cooldown_counter"):
        scheduler.load_state_dict({**state, "cooldown_counter": -1})


def test_attaches_itself_to_optimizers_that_support_it():
    attached = {}

    class Optimizer:
        def __init__(self):
            self.param_groups = [{"lr": 0.1}]

        def attach(self, name, obj):
            attached[name] = obj

    scheduler = fs.ReduceLROnPlateau(Optimizer())
    assert attached == {"reduce_lr_on_plateau": scheduler}


def test_rejects_scheduled_learning_rates():
    schedule = fs.cosine_annealing(0.1, 100)
    optimizer = SimpleNamespace(
        param_groups=[{"lr": 0.1}, {"lr": 0.1, "schedules": {"lr": schedule}}]
    )
    with pytest.raises(ValueError, match=r"param_groups\[1\] has a scheduled lr"):
        fs.ReduceLROnPlateau(optimizer)
    momentum_only = SimpleNamespace(param_groups=[{"lr": 0.1, "schedules": {"momentum": schedule}}])
    fs.ReduceLROnPlateau(momentum_only)


@pytest.mark.parametrize("metric", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_raises(metric):
    scheduler = fs.ReduceLROnPlateau(duck_optimizer())
    with pytest.raises(ValueError, match="metric must be finite"):
        scheduler.step(metric)


BAD_ARGUMENTS = [
    ("mode", "minimum"),
    ("factor", 1.0),
    ("factor", 0.0),
    ("factor", -0.5),
    ("factor", math.nan),
    ("patience", -1),
    ("patience", 1.5),
    ("threshold", -1e-4),
    ("threshold", math.inf),
    ("threshold_mode", "relative"),
    ("cooldown", -2),
    ("min_lr", -0.1),
    ("min_lr", [0.0]),
    ("min_lr", [0.0, -1.0]),
    ("min_lr", [0.0, math.nan]),
    ("eps", -1e-8),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS)
def test_invalid_arguments_name_the_parameter(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        fs.ReduceLROnPlateau(duck_optimizer(), **{name: value})


@pytest.mark.parametrize("lr", [None, "0.1", math.nan])
def test_invalid_group_lr(lr):
    with pytest.raises((ValueError, TypeError), match=r"param_groups\[0\]"):
        fs.ReduceLROnPlateau(SimpleNamespace(param_groups=[{"lr": lr}]))
    with pytest.raises(ValueError, match="has no 'lr' entry"):
        fs.ReduceLROnPlateau(SimpleNamespace(param_groups=[{}]))
