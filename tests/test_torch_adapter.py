"""fastopt.torch against torch.optim: training, zero_grad, schedulers, checkpoints, bad input."""

import copy
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

STEPS = 50
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

# Small learning rates keep float32 runs well conditioned: torch's CPU kernels fuse
# multiply-adds and fastopt's do not, so the two differ by an ulp here and there, and a
# chaotic training run would amplify that.
RULES = [
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "betas": (0.8, 0.99)}),
    ("Adam", {"lr": 0.01, "maximize": True, "eps": 1e-6}),
    ("AdamW", {"lr": 0.01}),
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("RMSprop", {"lr": 0.001, "momentum": 0.5, "centered": True}),
    ("RMSprop", {"lr": 0.001, "weight_decay": 0.01, "alpha": 0.9}),
    ("Adamax", {"lr": 0.01, "weight_decay": 0.01}),
    ("NAdam", {"lr": 0.002}),
    ("NAdam", {"lr": 0.002, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("Adadelta", {"lr": 1.0, "weight_decay": 0.01}),
    ("RAdam", {"lr": 0.01, "betas": (0.9, 0.9)}),
    ("RAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("Rprop", {"lr": 0.01, "etas": (0.4, 1.3)}),
    ("ASGD", {"lr": 0.01, "t0": 10.0}),
]


def rule_id(rule):
    name, kwargs = rule
    return name + "(" + ",".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr") + ")"


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 3),
    ).to(dtype)


def groups(model, lr):
    """Weights with the defaults; biases without weight decay and with twice the lr."""
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("weight")]},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0, "lr": 2 * lr},
    ]


def data(dtype, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(64, 8, generator=generator, dtype=dtype),
        torch.randn(64, 3, generator=generator, dtype=dtype),
    )


def train(model, opt, steps, dtype, scheduler=None, set_to_none=True):
    x, y = data(dtype)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return np.array(losses)


def twins(name, kwargs, dtype=torch.float64):
    """The same model twice: one for torch.optim, one for fastopt.torch."""
    reference_model = mlp(dtype)
    model = copy.deepcopy(reference_model)
    reference = getattr(torch.optim, name)(groups(reference_model, kwargs["lr"]), **kwargs)
    ours = getattr(ft, name)(groups(model, kwargs["lr"]), **kwargs)
    return reference_model, reference, model, ours


def assert_models_close(first, second, rtol):
    for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True):
        np.testing.assert_allclose(b.detach(), a.detach(), rtol=rtol, atol=rtol, err_msg=name)


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_training_matches_torch_optim(rule, dtype):
    name, kwargs = rule
    reference_model, reference, model, ours = twins(name, kwargs, dtype)
    expected = train(reference_model, reference, STEPS, dtype)
    losses = train(model, ours, STEPS, dtype)
    assert expected[-1] != expected[0]
    np.testing.assert_allclose(losses, expected, rtol=TOLERANCE[dtype], atol=0)
    assert_models_close(reference_model, model, 10 * TOLERANCE[dtype])


@pytest.mark.parametrize("rule", [("Adam", {"lr": 0.01}), ("SGD", {"lr": 0.05, "momentum": 0.9})])
def test_fused_clipping_matches_torch_clip_grad_then_step(rule):
    name, kwargs = rule
    reference_model, reference, model, _ = twins(name, kwargs)
    ours = getattr(ft, name)(groups(model, kwargs["lr"]), **kwargs, max_norm=0.05, clip_value=0.004)
    x, y = data(torch.float64)
    norms = []
    for _ in range(10):
        for net, opt in ((reference_model, reference), (model, ours)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(reference_model.parameters(), 0.05).item())
        torch.nn.utils.clip_grad_value_(reference_model.parameters(), 0.004)
        reference.step()
        ours.step()
        assert ours.last_step.grad_norm == pytest.approx(norms[-1], rel=1e-12)
        assert ours.last_step.applied
    assert max(norms) > 0.05  # the norm clipping acted
    assert_models_close(reference_model, model, 1e-10)


def test_nonfinite_skip_changes_nothing_and_counts_no_step():
    model = mlp()
    opt = ft.Adam(model.parameters(), lr=0.01, nonfinite="skip")
    x, y = data(torch.float64)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    before = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].weight.grad[1, 2] = float("nan")
    opt.step()
    assert not opt.last_step.applied and not opt.last_step.finite
    for param, weight in zip(model.parameters(), weights, strict=True):
        assert torch.equal(param, weight)
    after = opt.state_dict()
    for index, entry in before["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][index][key], value), key
    assert after["state"][0]["step"].item() == 2


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"nonfinite": "ignore"}, ValueError),
        ({"max_norm": -1.0}, ValueError),
        ({"norm_type": 1.0}, ValueError),
        ({"clip_value": "1"}, TypeError),
    ],
)
def test_bad_gradient_options_are_rejected_before_anything_changes(options, error):
    model = mlp()
    before = pointers(model)
    with pytest.raises(error):
        ft.AdamW(model.parameters(), **options)
    assert pointers(model) == before


def test_parameters_and_gradients_are_views_of_one_buffer():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = ft.Adam(model.parameters(), lr=0.1)
    flat = opt._flat
    start, end = flat.buffer.ctypes.data, flat.buffer.ctypes.data + flat.buffer.nbytes
    for param, old, view in zip(model.parameters(), before, flat.params, strict=True):
        assert start <= param.data_ptr() < end and param.data_ptr() == view.ctypes.data
        assert torch.equal(param.detach(), old)  # values kept
        assert param.grad is None  # as in torch: no gradient before a backward pass
    x, y = data(torch.float64)
    torch.nn.functional.mse_loss(model(x), y).backward()
    for param, grad in zip(model.parameters(), flat.grads, strict=True):
        assert param.grad.data_ptr() == grad.ctypes.data  # autograd wrote into the flat buffer
    grads = [p.grad for p in model.parameters()]
    expected = [g.clone() for g in grads]
    torch.nn.functional.mse_loss(model(x), y).backward()  # accumulates in place
    for param, grad, first in zip(model.parameters(), grads, expected, strict=True):
        assert param.grad is grad
        torch.testing.assert_close(grad, 2 * first, rtol=1e-12, atol=0)
    opt.step()
    for param, view in zip(model.parameters(), flat.params, strict=True):
        assert torch.equal(param.detach(), torch.from_numpy(view))  # updated in place
    state = opt.state[next(iter(model.parameters()))]
    assert state["exp_avg"].data_ptr() == opt._inner.state[0]["exp_avg"].ctypes.data


@pytest.mark.parametrize("set_to_none", [True, False])
# NAdam and ASGD: host scalars (mu_product, eta, mu) that the skipped parameters keep behind.
@pytest.mark.parametrize("name", ["Adam", "SGD", "NAdam", "ASGD"])
def test_parameters_without_gradients_are_skipped_like_torch(name, set_to_none):
    kwargs = {"lr": 0.05, "momentum": 0.9} if name == "SGD" else {"lr": 0.05}
    torch.manual_seed(3)
    reference_model = torch.nn.ModuleList([torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)]).double()
    model = copy.deepcopy(reference_model)
    reference = getattr(torch.optim, name)(reference_model.parameters(), **kwargs)
    ours = getattr(ft, name)(model.parameters(), **kwargs)
    x = torch.randn(10, 4, dtype=torch.float64)
    for step in range(8):
        for net, opt in ((reference_model, reference), (model, ours)):
            opt.zero_grad(set_to_none=set_to_none)
            used = net[:1] if step % 3 else net  # the second layer only every third step
            sum(layer(x).square().sum() for layer in used).backward()
            opt.step()
        assert_models_close(reference_model, model, 1e-12)
    reference_state = reference.state_dict()["state"]
    state = ours.state_dict()["state"]
    assert reference_state.keys() == state.keys()
    for index, entry in reference_state.items():
        assert entry.keys() == state[index].keys()
        for key, value in entry.items():
            torch.testing.assert_close(state[index][key], value, rtol=1e-12, atol=1e-12)


def test_a_step_without_any_gradient_changes_nothing():
    model = mlp()
    opt = ft.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # no backward yet
    opt.zero_grad()
    opt.step()
    for param in model.parameters():
        param.grad = None
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.state_dict()["state"] == {}


def test_replaced_and_removed_gradients():
    reference_model, reference, model, ours = twins("Adam", {"lr": 0.01})
    x, y = data(torch.float64)
    for step in range(4):
        for net, opt in ((reference_model, reference), (model, ours)):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            grads = torch.autograd.grad(loss, list(net.parameters()))
            for index, (param, grad) in enumerate(zip(net.parameters(), grads, strict=True)):
                param.grad = None if index == step else grad.clone()  # new tensors
            opt.step()
    assert_models_close(reference_model, model, 1e-12)
    # The replaced gradients were copied in, and .grad is a view of the flat buffer again.
    for param, grad in zip(ours._params, ours._flat.grads, strict=True):
        assert param.grad is None or param.grad.data_ptr() == grad.ctypes.data


def test_gradient_accumulation_and_model_zero_grad():
    reference_model, reference, model, ours = twins("SGD", {"lr": 0.1, "momentum": 0.9})
    x, y = data(torch.float64)
    for step in range(4):
        for net, opt in ((reference_model, reference), (model, ours)):
            net.zero_grad() if step % 2 else opt.zero_grad()  # the module's sets .grad to None
            for part in range(4):  # four micro-batches, summed by autograd
                rows = slice(16 * part, 16 * part + 16)
                (torch.nn.functional.mse_loss(net(x[rows]), y[rows]) / 4).backward()
            opt.step()
    assert_models_close(reference_model, model, 1e-12)


def test_closure_is_called_and_its_loss_returned():
    model = mlp()
    opt = ft.SGD(model.parameters(), lr=0.1)
    x, y = data(torch.float64)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    assert opt.step(closure) < first


# ---------------------------------------------------------------------- schedulers
def test_lr_schedulers_drive_the_groups_like_torch():
    reference_model, reference, model, ours = twins("Adam", {"lr": 0.01})
    schedulers = []
    for opt in (reference, ours):
        schedulers.append(
            torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.02, 0.04], total_steps=STEPS)
        )  # cycles lr and beta1 of every group
    expected = train(reference_model, reference, STEPS - 1, torch.float64, schedulers[0])
    losses = train(model, ours, STEPS - 1, torch.float64, schedulers[1])
    np.testing.assert_allclose(losses, expected, rtol=1e-10, atol=0)
    assert schedulers[1].get_last_lr() == schedulers[0].get_last_lr()
    assert ours.param_groups[0]["initial_lr"] == reference.param_groups[0]["initial_lr"]
    assert ours.param_groups[0]["betas"] == reference.param_groups[0]["betas"]


def test_plateau_scheduler():
    reference_model, reference, model, ours = twins("SGD", {"lr": 0.1, "momentum": 0.5})
    for net, opt in ((reference_model, reference), (model, ours)):
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        for _ in range(6):
            train(net, opt, 1, torch.float64)
            scheduler.step(1.0)  # no improvement after the first: halve
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**5)
    assert_models_close(reference_model, model, 1e-12)


# ---------------------------------------------------------------------- checkpoints
CHECKPOINT_RULES = [
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("Adagrad", {"lr": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Adamax", {"lr": 0.01}),
    ("NAdam", {"lr": 0.01, "momentum_decay": 0.01}),
    ("Adadelta", {"lr": 1.0, "rho": 0.8}),
    ("RAdam", {"lr": 0.01, "betas": (0.9, 0.9)}),
    ("Rprop", {"lr": 0.01}),
    ("ASGD", {"lr": 0.01, "t0": 2.0, "lambd": 0.01}),
]


def saved_and_loaded(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)  # weights_only: the format holds tensors and plain values only


@pytest.mark.parametrize("direction", ["torch_to_fastopt", "fastopt_to_torch"])
@pytest.mark.parametrize("rule", CHECKPOINT_RULES, ids=rule_id)
def test_checkpoints_load_across_torch_and_fastopt(rule, direction):
    name, kwargs = rule
    reference_model, reference, model, ours = twins(name, kwargs)
    first, second = (reference, ours) if direction == "torch_to_fastopt" else (ours, reference)
    first_model = reference_model if first is reference else model
    train(first_model, first, 5, torch.float64)
    checkpoint = saved_and_loaded(first.state_dict())
    # The other side starts from the same weights and the checkpoint, then both go on.
    second_model = model if first is reference else reference_model
    with torch.no_grad():
        for target, source in zip(second_model.parameters(), first_model.parameters(), strict=True):
            target.copy_(source)
    second.load_state_dict(checkpoint)
    # The first loads its own checkpoint too: a load casts host scalars (NAdam's mu_product,
    # ASGD's eta and mu) to the parameters' dtype, so both sides go on alike, as torch would.
    first.load_state_dict(saved_and_loaded(first.state_dict()))
    expected = train(first_model, first, 5, torch.float64)
    losses = train(second_model, second, 5, torch.float64)
    np.testing.assert_allclose(losses, expected, rtol=1e-10, atol=0)

    reference_dict, our_dict = reference.state_dict(), ours.state_dict()
    assert reference_dict["state"].keys() == our_dict["state"].keys()
    for index, entry in reference_dict["state"].items():
        assert entry.keys() == our_dict["state"][index].keys()
        for key, value in entry.items():
            ours_value = our_dict["state"][index][key]
            if key != "step" and value.ndim == 0:
                # A host scalar (NAdam's mu_product, ASGD's eta): torch keeps it in its
                # default dtype and casts a loaded one to the parameters' dtype; both loaded.
                for tensor in (ours_value, value):
                    assert tensor.dtype == torch.float64, key
                torch.testing.assert_close(ours_value.double(), value.double(), rtol=1e-6, atol=0)
                continue
            assert ours_value.dtype == value.dtype, key
            assert ours_value.shape == value.shape, key
            torch.testing.assert_close(ours_value, value, rtol=1e-10, atol=1e-12)
    for our_group, group in zip(
        our_dict["param_groups"], reference_dict["param_groups"], strict=True
    ):
        assert our_group["params"] == group["params"]
        for key in ft.__dict__[name]._hyperparameters:
            if key not in fastopt.precision.PRECISION_DEFAULTS:  # fastopt's own keys
                assert our_group[key] == group[key], key


def test_add_param_group_after_steps_keeps_the_state():
    torch.manual_seed(0)
    reference_model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).double()
    model = copy.deepcopy(reference_model)
    x = torch.randn(8, 4, dtype=torch.float64)
    optimizers = []
    for net in (reference_model, model):
        cls = torch.optim.Adam if net is reference_model else ft.Adam
        optimizers.append(cls(net[0].parameters(), lr=0.01))
    for step in range(6):
        for net, opt in zip((reference_model, model), optimizers, strict=True):
            opt.zero_grad()
            if step == 3:  # after zero_grad, and no backward: nothing may move
                opt.add_param_group({"params": net[1].parameters(), "lr": 0.03})
            else:
                net(x).square().sum().backward()
            opt.step()
    assert_models_close(reference_model, model, 1e-12)
    assert len(optimizers[1]._flat) == 4  # one buffer for all parameters again


# ---------------------------------------------------------------------- bad input
def pointers(model):
    return [p.data_ptr() for p in model.parameters()]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda m: [torch.zeros(3, device="meta", requires_grad=True)], TypeError, "CPU"),
        (
            lambda m: [torch.zeros(3, dtype=torch.complex64, requires_grad=True)],
            TypeError,
            "complex64",
        ),
        (
            lambda m: [m[0].weight, torch.zeros(3, dtype=torch.float32, requires_grad=True)],
            TypeError,
            "one dtype",
        ),
        (
            lambda m: [{"params": [m[0].weight]}, {"params": [m[0].weight]}],
            ValueError,
            "more than one parameter group",
        ),
        (lambda m: [{"params": [m[0].weight]}, {"params": []}], ValueError, "no parameters"),
        (lambda m: [], ValueError, "empty parameter list"),
        (lambda m: [{"params": [m[0].weight], "lr": -1.0}], ValueError, "lr"),
        (lambda m: [{"params": [m[0].weight], "betas": (1.5, 0.9)}], ValueError, "beta1"),
    ],
)
def test_bad_construction_changes_nothing(make, error, match):
    model = mlp()
    before = pointers(model)
    with pytest.raises(error, match=match):
        ft.Adam(make(model))
    assert pointers(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_bad_param_group_additions_change_nothing():
    model = mlp()
    opt = ft.SGD(model[0].parameters(), lr=0.1)
    flat, groups = opt._flat, len(opt.param_groups)
    before = pointers(model)
    for group, error in (
        ({"params": model[0].weight}, ValueError),  # already there
        ({"params": model[2].parameters(), "lr": -0.1}, ValueError),
        ({"params": [torch.zeros(2, dtype=torch.float32, requires_grad=True)]}, TypeError),
        ({"params": []}, ValueError),
    ):
        with pytest.raises(error):
            opt.add_param_group(group)
        assert opt._flat is flat and len(opt.param_groups) == groups
        assert pointers(model) == before


def test_replaced_parameter_data_is_an_error_before_any_write():
    model = mlp()
    opt = ft.Adam(model.parameters(), lr=0.1)
    train(model, opt, 2, torch.float64)
    buffer = opt._flat.buffer.copy()
    state = copy.deepcopy(opt.state_dict()["state"])
    model[2].bias.data = model[2].bias.data.clone()  # as model.to() or .double() would
    with pytest.raises(ValueError, match=r"parameter 3 .* no longer views"):
        opt.step()
    np.testing.assert_array_equal(opt._flat.buffer, buffer)
    assert opt.state_dict()["state"][0]["step"] == state[0]["step"] == 2


def test_gradient_of_the_wrong_shape_is_an_error_before_any_write():
    model = mlp()
    opt = ft.Adam(model.parameters(), lr=0.1)
    train(model, opt, 1, torch.float64)
    buffer = opt._flat.buffer.copy()
    model[0].bias.grad.data = torch.zeros(5, dtype=torch.float64)  # torch lets .data change shape
    with pytest.raises(ValueError, match=r"parameter 1's \.grad must have the parameter's shape"):
        opt.step()
    np.testing.assert_array_equal(opt._flat.buffer, buffer)


def test_bad_checkpoint_changes_nothing():
    reference_model, reference, model, ours = twins("Adam", {"lr": 0.01})
    train(reference_model, reference, 2, torch.float64)
    train(model, ours, 3, torch.float64)
    good = ours.state_dict()
    kept = copy.deepcopy(good)
    bad = copy.deepcopy(reference.state_dict())
    bad["state"][1]["exp_avg"] = torch.zeros(7, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg'\] must have"):
        ours.load_state_dict(bad)
    missing = copy.deepcopy(reference.state_dict())
    missing["param_groups"] = missing["param_groups"][:1]
    with pytest.raises(ValueError, match="parameter group"):
        ours.load_state_dict(missing)
    now = ours.state_dict()
    for index, entry in kept["state"].items():
        for key, value in entry.items():
            assert torch.equal(now["state"][index][key], value)
    assert now["param_groups"] == kept["param_groups"]


def test_importing_fastopt_does_not_import_torch():
    code = "import sys, fastopt; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_last_step_reports_a_refused_step_and_survives_new_groups():
    model = mlp()
    opt = ft.Adam(list(model.parameters())[:-1], lr=0.01, nonfinite="raise")
    x, y = data(torch.float64)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert opt.last_step.applied
    model[0].weight.grad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError):
        opt.step()
    assert not opt.last_step.applied and not opt.last_step.finite
    refused = opt.last_step
    opt.add_param_group({"params": [list(model.parameters())[-1]]})
    assert opt.last_step is refused
