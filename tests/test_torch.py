"""Every rule and option against torch.optim (single-tensor and fused CPU implementations)."""

import numpy as np
import pytest
from rule_cases import CASES, assert_close, case_id, problem

torch = pytest.importorskip("torch", reason="torch is not installed: no torch.optim comparison")

STEPS = 10
# torch.optim classes with a fused CPU implementation.
FUSED = {"SGD", "Adagrad", "Adam", "AdamW"}


def run_torch(cls_name, kwargs, param, grads, **impl):
    tensor = torch.nn.Parameter(torch.from_numpy(param.copy()))
    opt = getattr(torch.optim, cls_name)([tensor], **kwargs, **impl)
    for grad in grads:
        tensor.grad = torch.from_numpy(grad.copy())
        opt.step()
    state = {
        k: v.detach().numpy()
        for k, v in opt.state[tensor].items()
        if k != "step" and isinstance(v, torch.Tensor) and v.ndim
    }
    scalars = {
        k: v.item()
        for k, v in opt.state[tensor].items()
        if k != "step" and isinstance(v, torch.Tensor) and not v.ndim
    }
    return tensor.detach().numpy(), state, scalars


@pytest.mark.parametrize("impl", ["single_tensor", "fused"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 1000, 140_001])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch(case, size, dtype, impl):
    _, cls, kwargs = case
    if not hasattr(torch.optim, cls.__name__):
        pytest.skip(
            f"torch.optim has no {cls.__name__}: tests/test_reference_packages.py compares it "
            "with its reference package"
        )
    if impl == "fused" and cls.__name__ not in FUSED:
        pytest.skip(f"torch has no fused CPU {cls.__name__}")
    param, grads = problem(size, dtype, STEPS, seed=1)
    options = {"foreach": False} if impl == "single_tensor" else {"fused": True}
    expected, expected_state, expected_scalars = run_torch(
        cls.__name__, kwargs, param, grads, **options
    )

    opt = cls(param, **kwargs)
    for grad in grads:
        opt.step(grad)

    assert_close(param, expected)
    arrays = {k: v for k, v in opt.state[0].items() if isinstance(v, np.ndarray)}
    assert sorted(arrays) == sorted(expected_state)
    for name, value in arrays.items():
        assert_close(value, expected_state[name], err_msg=name)
    scalars = {k: v for k, v in opt.state[0].items() if k != "step" and k not in arrays}
    assert scalars == expected_scalars  # host numbers (NAdam's mu_product), bit for bit
