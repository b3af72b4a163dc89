"""fastopt.torch follows torch.optim where user code can see it: which parameters have a
gradient and are stepped, signatures, group keys, and how checkpoints and their hooks load."""

import copy
import inspect

import pytest
from rule_cases import newton_schulz_in_dtype

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

NAMES = [
    "Adam",
    "AdamW",
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adamax",
    "NAdam",
    "Adadelta",
    "RAdam",
    "Rprop",
    "ASGD",
]
SETTINGS = {
    "Adam": {"lr": 0.01, "weight_decay": 0.1},
    "AdamW": {"lr": 0.01},
    "SGD": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1},
    "Adagrad": {"lr": 0.1, "weight_decay": 0.1},
    "RMSprop": {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.1},
    "Adamax": {"lr": 0.01, "weight_decay": 0.1},
    "NAdam": {"lr": 0.01, "weight_decay": 0.1},
    "Adadelta": {"lr": 1.0, "weight_decay": 0.1},
    "RAdam": {"lr": 0.01, "weight_decay": 0.1},
    "Rprop": {"lr": 0.01},
    "ASGD": {"lr": 0.01, "weight_decay": 0.1, "t0": 2.0},
}


def pair(name, make_params, **kwargs):
    """The same parameters twice, with torch.optim's optimizer and fastopt's."""
    torch.manual_seed(0)
    reference_params = make_params()
    params = copy.deepcopy(reference_params)
    options = {**SETTINGS[name], **kwargs}
    reference = getattr(torch.optim, name)(reference_params, **options)
    ours = getattr(ft, name)(params, **options)
    return reference, ours


def model_params():
    torch.manual_seed(0)
    return list(
        torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)).double().parameters()
    )


def both(reference, ours):
    return zip(reference.param_groups[0]["params"], ours.param_groups[0]["params"], strict=True)


def assert_same(reference, ours, rtol=1e-12):
    for expected, actual in both(reference, ours):
        torch.testing.assert_close(actual.detach(), expected.detach(), rtol=rtol, atol=1e-14)
        assert (actual.grad is None) == (expected.grad is None)


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", NAMES)
def test_a_frozen_layer_does_not_move(name):
    """The user's report: with weight decay a zero gradient would still move it."""
    torch.manual_seed(0)
    reference_model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)).double()
    model = copy.deepcopy(reference_model)
    for net in (reference_model, model):
        net[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    reference = getattr(torch.optim, name)(reference_model.parameters(), **SETTINGS[name])
    ours = getattr(ft, name)(model.parameters(), **SETTINGS[name])
    x = torch.randn(8, 4, dtype=torch.float64)
    for _ in range(5):
        for net, opt in ((reference_model, reference), (model, ours)):
            opt.zero_grad(set_to_none=False)
            net(x).sum().backward()
            opt.step()
    for param, before in zip(model[0].parameters(), frozen, strict=True):
        assert torch.equal(param.detach(), before)
        assert param.grad is None
    for expected, actual in zip(reference_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(actual.detach(), expected.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_an_optimizer_never_takes_another_ones_memory_for_a_gradient(name):
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    getattr(ft, name)([p], lr=0.1)  # made and dropped
    assert p.grad is None
    decay = {} if name == "Rprop" else {"weight_decay": 0.5}  # Rprop has no weight decay
    getattr(ft, name)([p], lr=0.1, **decay).step()
    assert p.grad is None
    assert torch.equal(p.detach(), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_grad_is_none_exactly_where_torch_leaves_it_none(name, set_to_none):
    reference, ours = pair(name, model_params)
    x = torch.randn(8, 4, dtype=torch.float64)
    for step in range(6):
        for opt in (reference, ours):
            opt.zero_grad(set_to_none=set_to_none)
            params = opt.param_groups[0]["params"]
            weight, bias = params[2], params[3]
            hidden = torch.nn.functional.linear(x, params[0], params[1])
            # The last layer's bias only every other step, and no layer at step 4.
            if step != 4:
                out = torch.nn.functional.linear(hidden, weight, bias if step % 2 else None)
                out.sum().backward()
        assert_same(reference, ours)
        for opt in (reference, ours):
            opt.step()
        assert_same(reference, ours)


def test_zero_grad_set_to_none_false_zeroes_a_users_gradient_in_place():
    reference, ours = pair("SGD", model_params)
    for opt in (reference, ours):
        opt.param_groups[0]["params"][0].grad = torch.ones(4, 4, dtype=torch.float64)
    kept = [opt.param_groups[0]["params"][0].grad for opt in (reference, ours)]
    for opt, grad in zip((reference, ours), kept, strict=True):
        opt.zero_grad(set_to_none=False)
        assert opt.param_groups[0]["params"][0].grad is grad and not grad.any()
        assert opt.param_groups[0]["params"][1].grad is None


@pytest.mark.parametrize("name", NAMES)
def test_autograd_grad_gives_no_parameter_a_gradient(name):
    reference, ours = pair(name, model_params)
    x = torch.randn(8, 4, dtype=torch.float64)
    for opt in (reference, ours):
        params = opt.param_groups[0]["params"]
        out = torch.nn.functional.linear(
            torch.tanh(torch.nn.functional.linear(x, *params[:2])), *params[2:]
        )
        torch.autograd.grad(out.sum(), params)
        opt.step()  # nothing has a gradient: nothing moves
    assert_same(reference, ours)
    assert all(p.grad is None for p in ours.param_groups[0]["params"])
    assert_states_equal(reference, ours)


def test_the_zero_copy_path_survives_zero_grad_and_new_gradients():
    _, ours = pair("Adam", model_params)
    x = torch.randn(8, 4, dtype=torch.float64)
    params = ours.param_groups[0]["params"]
    for _ in range(3):
        ours.zero_grad()
        assert all(p.grad is None for p in params)
        out = torch.nn.functional.linear(
            torch.tanh(torch.nn.functional.linear(x, *params[:2])), *params[2:]
        )
        out.sum().backward()
        for param, view in zip(params, ours._flat.grads, strict=True):
            assert param.grad.data_ptr() == view.ctypes.data  # autograd wrote the flat buffer
        ours.step()


def test_a_gradient_set_by_the_user_is_used_and_then_viewed():
    reference, ours = pair("Adam", model_params)
    for opt in (reference, ours):
        for param in opt.param_groups[0]["params"]:
            param.grad = torch.full_like(param, 0.25)
        opt.step()
    assert_same(reference, ours)
    for param, view in zip(ours.param_groups[0]["params"], ours._flat.grads, strict=True):
        assert param.grad.data_ptr() == view.ctypes.data


# ---------------------------------------------------------------------- signatures and groups
#: fastopt's precision options: keyword arguments every class takes beyond torch's, and
#: (but the seed) keys of its groups.
FASTOPT_ONLY = frozenset({*fastopt.precision.PRECISION_DEFAULTS, "seed"})


def torchs_keys(group):
    """A parameter group without fastopt's precision options."""
    return {key: value for key, value in group.items() if key not in FASTOPT_ONLY}


def user_parameters(cls):
    """A signature's parameters without fastopt's own: the precision options and the
    trailing gradient options."""
    parameters = inspect.signature(cls).parameters.values()
    return [
        (p.name, p.kind, p.default)
        for p in parameters
        if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in FASTOPT_ONLY
    ]


@pytest.mark.parametrize("name", NAMES)
def test_signatures_are_torchs(name):
    assert user_parameters(getattr(ft, name)) == user_parameters(getattr(torch.optim, name))


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_have_torchs_keys_and_values(name):
    reference, ours = pair(name, model_params)
    for expected, actual in zip(reference.param_groups, ours.param_groups, strict=True):
        assert torchs_keys(actual).keys() == expected.keys()
        assert {k: v for k, v in torchs_keys(actual).items() if k != "params"} == {
            k: v for k, v in expected.items() if k != "params"
        }
        assert {key: actual[key] for key in fastopt.precision.PRECISION_DEFAULTS} == dict(
            fastopt.precision.PRECISION_DEFAULTS
        )


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_keyword_names_the_users_class(name):
    with pytest.raises(
        TypeError,
        match=rf"^{name}\.__init__\(\) got an unexpected keyword argument 'learning_rate'$",
    ):
        getattr(ft, name)(model_params(), learning_rate=1e-3)


def test_rmsprop_takes_torchs_positional_arguments():
    args = (
        0.01,
        0.9,
        1e-8,
        0.0,
        0.5,
        True,
        False,
        None,
        True,
    )  # ..., centered, capturable, foreach, maximize
    reference, ours = pair("RMSprop", model_params)
    reference = torch.optim.RMSprop(reference.param_groups[0]["params"], *args)
    ours = ft.RMSprop(ours.param_groups[0]["params"], *args)
    assert ours.param_groups[0]["maximize"] is True and ours.param_groups[0]["centered"] is True
    assert {k: v for k, v in torchs_keys(ours.param_groups[0]).items() if k != "params"} == {
        k: v for k, v in reference.param_groups[0].items() if k != "params"
    }


@pytest.mark.parametrize("name", NAMES)
def test_a_tensor_lr_must_have_one_element(name):
    with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element$"):
        getattr(torch.optim, name)(model_params(), lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element$"):
        getattr(ft, name)(model_params(), lr=torch.tensor([0.1, 0.2]))
    params = model_params()
    opt = getattr(ft, name)(params[:2], lr=torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element$"):
        opt.add_param_group({"params": params[2:], "lr": torch.tensor([0.1, 0.2])})
    assert len(opt.param_groups) == 1


IMPLEMENTATION_KEYS = {
    "Adam": ("foreach", "capturable", "differentiable", "fused"),
    "AdamW": ("foreach", "capturable", "differentiable", "fused"),
    "SGD": ("foreach", "differentiable", "fused"),
    "Adagrad": ("foreach", "differentiable", "fused"),
    "RMSprop": ("foreach", "capturable", "differentiable"),
    "Adamax": ("foreach", "differentiable", "capturable"),
    "NAdam": ("foreach", "capturable", "differentiable"),
    "Adadelta": ("foreach", "capturable", "differentiable"),
    "RAdam": ("foreach", "capturable", "differentiable"),
    "Rprop": ("foreach", "capturable", "differentiable"),
    "ASGD": ("foreach", "differentiable", "capturable"),
}
ACCEPTED = {
    "foreach": (None, False),
    "fused": (None, True),
    "capturable": (False,),
    "differentiable": (False,),
}
REFUSED = {"foreach": (True,), "fused": (False,), "capturable": (True,), "differentiable": (True,)}


@pytest.mark.parametrize("name", NAMES)
def test_torchs_implementation_switches(name):
    for key in IMPLEMENTATION_KEYS[name]:
        for value in ACCEPTED[key]:
            opt = getattr(ft, name)(model_params(), **{key: value})
            assert opt.param_groups[0][key] is value
        for value in REFUSED[key]:
            params = model_params()
            pointers = [p.data_ptr() for p in params]
            with pytest.raises(ValueError, match=rf"{key}={value} is not available: .*\(use "):
                getattr(ft, name)(params, **{key: value})
            assert [p.data_ptr() for p in params] == pointers
            opt = getattr(ft, name)(params[:2])
            with pytest.raises(
                ValueError, match=rf"param_groups\[1\] {key}={value} is not available"
            ):
                opt.add_param_group({"params": params[2:], key: value})
            assert len(opt.param_groups) == 1
        with pytest.raises(TypeError, match=f"{key} must be a bool or None"):
            getattr(ft, name)(model_params(), **{key: "yes"})


# ---------------------------------------------------------------------- checkpoints
def trained_pair(name, steps=3, **kwargs):
    reference, ours = pair(name, model_params, **kwargs)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    train(reference, ours, x, steps)
    return reference, ours, x


def train(reference, ours, x, steps):
    for _ in range(steps):
        for opt in (reference, ours):
            opt.zero_grad()
            params = opt.param_groups[0]["params"]
            hidden = torch.tanh(torch.nn.functional.linear(x, *params[:2]))
            torch.nn.functional.linear(hidden, *params[2:]).square().sum().backward()
            opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_an_older_checkpoint_without_newer_group_keys_takes_the_defaults(name):
    optional = {
        "maximize",
        "foreach",
        "differentiable",
        "capturable",
        "fused",
        "decoupled_weight_decay",
    }
    # Built with non-default values, then loaded from a checkpoint that lacks the keys.
    reference, ours, x = trained_pair(name, maximize=True)
    checkpoint = copy.deepcopy(reference.state_dict())
    for group in checkpoint["param_groups"]:
        for key in optional & group.keys():
            del group[key]
    for opt in (reference, ours):
        opt.load_state_dict(copy.deepcopy(checkpoint))
    for expected, actual in zip(reference.param_groups, ours.param_groups, strict=True):
        assert torchs_keys(actual).keys() == expected.keys()
        assert actual["maximize"] is expected["maximize"] is False
        if name in ("Adam", "AdamW"):
            assert actual["decoupled_weight_decay"] is expected["decoupled_weight_decay"]
    train(reference, ours, x, 3)
    assert_same(reference, ours)


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "NAdam"])
def test_a_pre_hook_may_rewrite_the_checkpoint(name):
    reference, ours, x = trained_pair(name)
    checkpoint = reference.state_dict()

    def halve_state_and_lr(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        for entry in state_dict["state"].values():
            for key, value in entry.items():
                if key != "step":
                    entry[key] = value / 2
        for group in state_dict["param_groups"]:
            group["lr"] /= 2
        return state_dict

    for opt in (reference, ours):
        opt.register_load_state_dict_pre_hook(halve_state_and_lr)
        opt.load_state_dict(checkpoint)
    assert ours.param_groups[0]["lr"] == reference.param_groups[0]["lr"] == SETTINGS[name]["lr"] / 2
    assert_states_equal(reference, ours)
    train(reference, ours, x, 3)
    assert_same(reference, ours)


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "NAdam"])
def test_what_a_post_hook_writes_to_the_state_survives(name):
    reference, ours, x = trained_pair(name)
    checkpoint = reference.state_dict()

    def rewrite(optimizer):
        first, second = optimizer.param_groups[0]["params"][:2]
        entry = optimizer.state[first]
        for key in list(entry):
            if key != "step":
                entry[key] = torch.full_like(entry[key], 0.125)  # a new tensor
        for key, value in optimizer.state[second].items():
            if key != "step":
                value.mul_(3)  # in place
        entry["note"] = "kept"

    for opt in (reference, ours):
        opt.register_load_state_dict_post_hook(rewrite)
        opt.load_state_dict(copy.deepcopy(checkpoint))  # torch's load may share its tensors
    first = ours.param_groups[0]["params"][0]
    assert ours.state[first]["note"] == "kept"
    assert_states_equal(reference, ours)
    train(reference, ours, x, 3)
    assert_same(reference, ours)
    assert ours.state[first]["note"] == "kept"


def assert_states_equal(reference, ours):
    expected, actual = reference.state_dict()["state"], ours.state_dict()["state"]
    assert expected.keys() == actual.keys()
    for index, entry in expected.items():
        assert entry.keys() == actual[index].keys()
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(actual[index][key], value, rtol=1e-12, atol=0)
            else:
                assert actual[index][key] == value


# ---------------------------------------------------------------------- Muon (matrices only)
def matrix_params():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6, bias=False), torch.nn.Linear(6, 3, bias=False)
    ).double()
    return list(model.parameters())


def test_muon_follows_torch_signature_groups_and_gradients(monkeypatch):
    """Muon's parameters are matrices: its share of the checks above, on a bias-free model
    (torch's Newton-Schulz iteration made to run in float64, as fastopt's does here, instead
    of bfloat16: see tests/test_muon.py)."""
    import torch.optim._muon as muon_module

    monkeypatch.setattr(muon_module, "_zeropower_via_newtonschulz", newton_schulz_in_dtype)
    assert user_parameters(ft.Muon) == user_parameters(torch.optim.Muon)
    reference_params = matrix_params()
    params = copy.deepcopy(reference_params)
    reference = torch.optim.Muon(reference_params, lr=0.02)
    ours = ft.Muon(params, lr=0.02)
    for expected, actual in zip(reference.param_groups, ours.param_groups, strict=True):
        assert {k: v for k, v in torchs_keys(actual).items() if k != "params"} == {
            k: v for k, v in expected.items() if k != "params"
        }
    x = torch.randn(8, 4, dtype=torch.float64)
    for step in range(4):
        for opt in (reference, ours):
            opt.zero_grad()
            first, second = opt.param_groups[0]["params"]
            hidden = torch.nn.functional.linear(x, first)
            # The second layer gets no gradient on odd steps: torch skips it, and so do we.
            out = torch.nn.functional.linear(hidden, second if step % 2 == 0 else second.detach())
            out.sum().backward()
            opt.step()
        for expected, actual in both(reference, ours):
            torch.testing.assert_close(actual.detach(), expected.detach(), rtol=1e-12, atol=1e-14)
            assert (actual.grad is None) == (expected.grad is None)
    with pytest.raises(TypeError, match=r"^Muon\.__init__\(\) got an unexpected keyword"):
        ft.Muon(matrix_params(), learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"^Tensor lr must be 1-element$"):
        ft.Muon(matrix_params(), lr=torch.tensor([0.1, 0.2]))
