"""Schedules driving fastopt's optimizers: per-group values, torch parity and exact resume."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import fastopt
import fastopt.schedules as fs

ROOT = Path(__file__).resolve().parents[1]


def test_group_hyperparameters_show_the_value_used_by_the_last_update():
    lr = fs.cosine_annealing(0.1, 20)
    momentum = fs.cyclic_momentum(0.8, 0.9, 3)
    a, b = np.ones(4), np.ones(3)
    opt = fastopt.SGD(
        [{"params": [a], "lr": lr, "momentum": momentum}, {"params": [b], "lr": 0.05}]
    )
    assert opt.param_groups[0]["lr"] == lr(0)
    for step in range(25):
        opt.step([np.ones(4), np.ones(3)])
        assert opt.param_groups[0]["lr"] == lr(step)
        assert opt.param_groups[0]["momentum"] == momentum(step)
        assert opt.param_groups[1]["lr"] == 0.05
    assert opt.param_groups[0]["schedules"] == {"lr": lr, "momentum": momentum}


def test_scheduled_sgd_applies_each_value_once():
    schedule = fs.warmup(fs.cosine_annealing(0.1, 40), 10, start_value=0.01)
    grad = np.linspace(-1.0, 1.0, 101)
    x = np.zeros(101)
    opt = fastopt.SGD(x, lr=schedule)
    expected = np.zeros(101)
    for step in range(60):
        opt.step(grad)
        expected -= schedule(step) * grad
    np.testing.assert_allclose(x, expected, rtol=1e-13, atol=1e-15)


def test_adam_with_one_cycle_matches_torch_one_cycle_lr():
    torch = pytest.importorskip("torch", reason="torch's OneCycleLR is the reference")
    steps, rng = 80, np.random.default_rng(1)
    grads = rng.normal(size=(steps, 64))
    x = np.zeros(64)
    opt = fastopt.Adam(
        x,
        lr=fs.one_cycle(0.05, steps, three_phase=True),
        betas=(fs.one_cycle_momentum(steps, three_phase=True), 0.999),
    )
    y = torch.zeros(64, dtype=torch.float64, requires_grad=True)
    torch_opt = torch.optim.Adam([y], lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_sched = torch.optim.lr_scheduler.OneCycleLR(
            torch_opt, max_lr=0.05, total_steps=steps, three_phase=True
        )
        for grad in grads:
            opt.step(grad)
            y.grad = torch.from_numpy(grad)
            torch_opt.step()
            torch_sched.step()
    np.testing.assert_allclose(x, y.detach().numpy(), rtol=1e-12, atol=1e-14)


# Runs in a fresh interpreter: ``python -c RESUME_SCRIPT MODE DIRECTORY``. MODE "full" trains
# all STEPS; "first" trains SPLIT steps and writes a checkpoint (arrays to .npz, the rest to
# .json); "resume" rebuilds everything, loads the checkpoint and trains the remaining steps.
RESUME_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
import fastopt
import fastopt.schedules as fs

STEPS, SPLIT = 60, 23
mode, directory = sys.argv[1], Path(sys.argv[2])
params = [np.linspace(-2.0, 2.0, 50), np.full(30, 3.0), np.linspace(1.0, 4.0, 40)]
adam = fastopt.Adam([
    {"params": [params[0]], "lr": fs.warmup(fs.cosine_annealing(0.05, 40), 10),
     "betas": (fs.cyclic_momentum(0.85, 0.95, 7), 0.999)},
    {"params": [params[1]], "lr": fs.exponential_decay(0.02, 0.97)},
])
sgd = fastopt.SGD(params[2], lr=0.05, momentum=fs.one_cycle_momentum(STEPS))
plateau = fs.ReduceLROnPlateau(sgd, factor=0.5, patience=1, threshold=0.05)
optimizers = {"adam": adam, "sgd": sgd}

def save(path, opt):
    sd = opt.state_dict()
    arrays = {f"{i}.{k}": v for i, entry in sd["state"].items()
              for k, v in entry.items() if isinstance(v, np.ndarray)}
    steps = {str(i): entry["step"] for i, entry in sd["state"].items()}
    rest = {"param_groups": sd["param_groups"], "step_count": sd["step_count"],
            "attached": sd["attached"], "steps": steps}
    np.savez(path.with_suffix(".npz"), **arrays)
    path.with_suffix(".json").write_text(json.dumps(rest))

def load(path, opt):
    rest = json.loads(path.with_suffix(".json").read_text())
    state = {int(i): {"step": step} for i, step in rest["steps"].items()}
    with np.load(path.with_suffix(".npz")) as arrays:
        for key in arrays.files:
            index, name = key.split(".")
            state[int(index)][name] = arrays[key]
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"],
                         "step_count": rest["step_count"], "attached": rest["attached"]})

start = 0
if mode == "resume":
    for name, opt in optimizers.items():
        load(directory / name, opt)
    with np.load(directory / "params.npz") as saved:
        for i, param in enumerate(params):
            param[...] = saved[str(i)]
    start = SPLIT
lrs = []
for step in range(start, SPLIT if mode == "first" else STEPS):
    rng = np.random.default_rng(step)
    adam.step([p - 1.0 + 0.1 * rng.normal(size=p.shape) for p in params[:2]])
    sgd.step(params[2] - 2.0)
    plateau.step(float(np.sum((params[2] - 2.0) ** 2)))
    lrs.append([g["lr"] for opt in optimizers.values() for g in opt.param_groups])
if mode == "first":
    for name, opt in optimizers.items():
        save(directory / name, opt)
    np.savez(directory / "params.npz", **{str(i): p for i, p in enumerate(params)})
np.savez(directory / f"{mode}-result.npz", lrs=np.array(lrs),
         **{f"param{i}": p for i, p in enumerate(params)})
"""


def run_resume_script(mode, directory):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, mode, str(directory)],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    return np.load(directory / f"{mode}-result.npz")


@pytest.mark.slow
def test_checkpoint_resumes_schedules_and_plateau_exactly(tmp_path):
    full = run_resume_script("full", tmp_path)
    first = run_resume_script("first", tmp_path)
    resumed = run_resume_script("resume", tmp_path)
    lrs = np.concatenate([first["lrs"], resumed["lrs"]])
    assert lrs.tolist() == full["lrs"].tolist()
    sgd_lrs = full["lrs"][:, 2]
    assert len(set(sgd_lrs[23:].tolist())) > 1, "ReduceLROnPlateau should act after the split"
    for i in range(3):
        assert resumed[f"param{i}"].tolist() == full[f"param{i}"].tolist()
    checkpoint = json.loads((tmp_path / "sgd.json").read_text())
    assert set(checkpoint["attached"]) == {"reduce_lr_on_plateau"}
