"""One process of the torch.distributed test: ``torchrun --nproc-per-node 2 torch_zero_worker.py
OUT.npz``. Every fastopt.torch rule trains a small model under DistributedDataParallel (gloo),
alone and as the ``optimizer_class`` of torch's ZeroRedundancyOptimizer; torch.optim's rule,
where torch has it, in the same two settings. Rank 0 writes the final parameters."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import fastopt.torch as fastopt_torch

STEPS = 8
# (name, keyword arguments); Muon steps matrices only: its model has no biases.
RULES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("Adagrad", {"lr": 0.05}),
    ("Adadelta", {"lr": 1.0}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01}),
    ("Adamax", {"lr": 0.01}),
    ("NAdam", {"lr": 0.01}),
    ("RAdam", {"lr": 0.01}),
    ("Rprop", {"lr": 0.01}),
    ("ASGD", {"lr": 0.05}),
    ("Lion", {"lr": 0.001, "weight_decay": 0.1}),
    ("AdEMAMix", {"lr": 0.01}),
    ("Adan", {"lr": 0.01}),
    ("Lamb", {"lr": 0.01}),
    ("LARS", {"lr": 0.1}),
    ("Muon", {"lr": 0.02}),
    ("Adafactor", {"lr": 0.01, "weight_decay": 0.01}),
    ("ScheduleFreeSGD", {"lr": 0.1}),
    ("ScheduleFreeAdamW", {"lr": 0.01}),
]


def model(bias: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(5, 7, bias=bias), torch.nn.Tanh(), torch.nn.Linear(7, 3, bias=bias)]
    return torch.nn.Sequential(*layers).double()


def train(cls, kwargs, zero: bool, bias: bool, rank: int) -> np.ndarray:
    net = DistributedDataParallel(model(bias))
    if zero:
        opt = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=cls, **kwargs)
        local = opt.optim
    else:
        opt = local = cls(net.parameters(), **kwargs)
    if hasattr(local, "train"):  # Schedule-Free
        local.train()
        if zero:  # torch's ZeRO copies its groups' values into the local ones at each step
            for shared, own in zip(opt.param_groups, local.param_groups, strict=True):
                shared["train_mode"] = own["train_mode"]
    for step in range(STEPS):
        data = torch.Generator().manual_seed(step * 100 + rank)
        loss = net(torch.randn(4, 5, generator=data, dtype=torch.float64)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy()


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}
    for name, kwargs in RULES:
        bias = name != "Muon"
        for zero in (False, True):
            setting = "zero" if zero else "ddp"
            results[f"fastopt/{name}/{setting}"] = train(
                getattr(fastopt_torch, name), kwargs, zero, bias, rank
            )
            if hasattr(torch.optim, name):
                results[f"torch/{name}/{setting}"] = train(
                    getattr(torch.optim, name), kwargs, zero, bias, rank
                )
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if rank == 0:
        for other in gathered[1:]:
            for key, value in other.items():
                assert np.array_equal(value, results[key]), f"ranks differ: {key}"
        np.savez(out, **results)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
