"""Every fastopt.torch rule under DistributedDataParallel (gloo, 2 processes) and as the
``optimizer_class`` of torch.distributed.optim.ZeroRedundancyOptimizer, against torch.optim's
rule in the same settings (or, for the rules torch lacks, against itself without ZeRO)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

WORKER = Path(__file__).with_name("torch_zero_worker.py")
# torch.optim.Muon has other defaults (its learning-rate adjustment) than the reference
# implementation fastopt's Muon follows: compared with itself only.
OTHER_DEFAULTS = {"Muon"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> np.lib.npyio.NpzFile:
    out = tmp_path_factory.mktemp("torch_zero") / "params.npz"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(_free_port()), str(WORKER), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return np.load(out)


def _rules(results) -> list[str]:
    return sorted({key.split("/")[1] for key in results.files if key.startswith("fastopt/")})


@pytest.mark.slow
def test_every_rule_under_ddp_and_torch_zero(trained):
    from torch_zero_worker import RULES

    assert _rules(trained) == sorted(name for name, _ in RULES)
    for name in _rules(trained):
        ddp, zero = trained[f"fastopt/{name}/ddp"], trained[f"fastopt/{name}/zero"]
        np.testing.assert_allclose(zero, ddp, rtol=1e-12, atol=1e-14, err_msg=name)
        if f"torch/{name}/zero" in trained.files and name not in OTHER_DEFAULTS:
            for setting in ("ddp", "zero"):
                np.testing.assert_allclose(
                    trained[f"fastopt/{name}/{setting}"],
                    trained[f"torch/{name}/{setting}"],
                    rtol=1e-12,
                    atol=1e-14,
                    err_msg=f"{name} {setting}",
                )
    # The runs moved the parameters: the comparisons above are not of untouched models.
    assert not np.allclose(trained["fastopt/Adam/zero"], trained["fastopt/SGD/zero"])
