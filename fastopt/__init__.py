"""fastopt: fused, in-place, compiled optimizer updates for large flat arrays.

Each rule is a class with torch.optim's names, defaults and formulas (``SGD``, ``Adagrad``,
``RMSprop``, ``Adam``, ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam``, ``Adadelta``, ``Rprop``,
``ASGD``, ``Muon``, ``Adafactor``; ``Lion``, ``AdEMAMix``, ``Adan``, ``Lamb``, ``LARS``,
``ScheduleFreeSGD`` and ``ScheduleFreeAdamW`` as their reference packages compute them) and a
functional step (``adam_step`` and so on) for code that manages its own state. Every rule is
declared once (:mod:`fastopt.rule`) and its kernels, class and step are derived. The updates
are numba kernels: one multithreaded, vectorized, in-place pass over parameter, gradient and
state (two for the rules with per-tensor trust ratios).
``fastopt.reference`` holds the plain NumPy implementation of every rule. ``FlatParams`` packs
many arrays into one buffer so that one launch updates all of them (every parameter group with
its own settings); ``fastopt.torch`` (imported on its own, torch optional) steps PyTorch models
with the same kernels.

Parameters may be float32, float64, bfloat16 (``ml_dtypes.bfloat16``) or float16, with state in
float32 or bfloat16, a float32 master copy, Kahan summation or stochastic rounding, all in the
one pass (:mod:`fastopt.precision`).

Around the step: non-finite gradient policies, loss unscaling and gradient clipping fused into
one read pass plus the update (:mod:`fastopt.gradients`), dynamic loss scaling
(:class:`LossScaler`) and atomic, checksummed, pickle-free checkpoints (:func:`save`,
:func:`load`).
"""

from fastopt import precision
from fastopt.checkpoint import Checkpoint, CheckpointError, load, save
from fastopt.flat import FlatParams
from fastopt.gradients import NonfiniteGradientError, StepStats, global_norm
from fastopt.loss_scaling import LossScaler
from fastopt.optimizer import Optimizer
from fastopt.rules.adadelta import Adadelta, adadelta_step
from fastopt.rules.adafactor import Adafactor, adafactor_step
from fastopt.rules.adagrad import Adagrad, adagrad_step
from fastopt.rules.adam import Adam, AdamW, adam_step
from fastopt.rules.adamax import Adamax, adamax_step
from fastopt.rules.adan import Adan, adan_step
from fastopt.rules.ademamix import AdEMAMix, ademamix_step
from fastopt.rules.asgd import ASGD, asgd_step
from fastopt.rules.lamb import Lamb, lamb_step
from fastopt.rules.lars import LARS, lars_step
from fastopt.rules.lion import Lion, lion_step
from fastopt.rules.muon import Muon, muon_step
from fastopt.rules.nadam import NAdam, nadam_step
from fastopt.rules.radam import RAdam, radam_step
from fastopt.rules.rmsprop import RMSprop, rmsprop_step
from fastopt.rules.rprop import Rprop, rprop_step
from fastopt.rules.schedule_free_adamw import ScheduleFreeAdamW, schedule_free_adamw_step
from fastopt.rules.schedule_free_sgd import ScheduleFreeSGD, schedule_free_sgd_step
from fastopt.rules.sgd import SGD, sgd_step

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "LARS",
    "SGD",
    "AdEMAMix",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Adan",
    "Checkpoint",
    "CheckpointError",
    "FlatParams",
    "Lamb",
    "Lion",
    "LossScaler",
    "Muon",
    "NAdam",
    "NonfiniteGradientError",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "Rprop",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "StepStats",
    "__version__",
    "adadelta_step",
    "adafactor_step",
    "adagrad_step",
    "adam_step",
    "adamax_step",
    "adan_step",
    "ademamix_step",
    "asgd_step",
    "global_norm",
    "lamb_step",
    "lars_step",
    "lion_step",
    "load",
    "muon_step",
    "nadam_step",
    "precision",
    "radam_step",
    "rmsprop_step",
    "rprop_step",
    "save",
    "schedule_free_adamw_step",
    "schedule_free_sgd_step",
    "sgd_step",
]
