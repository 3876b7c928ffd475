"""Skipping optimiser steps above a gradient-norm threshold, in verl's own FSDP engine step.

The engine is verl's FSDPEngineWithLMHead (through our subclass) on a small torch module, built
without its distributed set-up (no process group or FSDP wrapping here): its optimizer_step runs
verl's code path for an unwrapped module (clip at optim.clip_grad, step, non-finite skip).
"""

import math
import pickle
from functools import partial

import pytest
import torch

from exgrpo_verl.verl_adapters.grad_norm_guard import (
    MAX_GRAD_NORM_ATTRIBUTE,
    GradNormGuardedEngine,
    skip_update,
    with_max_grad_norm,
)
from verl.workers.config import FSDPOptimizerConfig


def _engine(gradient: float, max_grad_norm):
    engine = GradNormGuardedEngine.__new__(GradNormGuardedEngine)  # no distributed set-up
    engine.module = torch.nn.Linear(1, 1, bias=False)
    engine.module.weight.data.fill_(1.0)
    engine.module.weight.grad = torch.full((1, 1), gradient)
    engine.optimizer = torch.optim.SGD(engine.module.parameters(), lr=0.1)
    engine.optimizer_config = FSDPOptimizerConfig(lr=0.1, clip_grad=1.0)
    engine._qat_enabled = False
    engine._max_grad_norm = max_grad_norm
    return engine


@pytest.mark.parametrize(
    "gradient, max_grad_norm, weight_after, skipped",
    [
        (600.0, 500.0, 1.0, True),  # above the threshold: no step, gradients zeroed
        (400.0, 500.0, 0.9, False),  # below: verl's step, clipped to norm 1 -> w - 0.1 * 1
        (600.0, None, 0.9, False),  # no threshold: verl's step
        (0.5, 500.0, 0.95, False),  # small: unclipped
    ],
)
def test_steps_above_the_threshold_are_skipped_and_the_rest_are_verls(gradient, max_grad_norm, weight_after, skipped):
    engine = _engine(gradient, max_grad_norm)
    grad_norm = engine.optimizer_step()
    assert grad_norm == pytest.approx(gradient)
    assert engine.module.weight.item() == pytest.approx(weight_after)
    assert engine._skipped is skipped
    if skipped:
        assert engine.module.weight.grad is None or not engine.module.weight.grad.any()


def test_skip_rule():
    assert skip_update(500.1, 500.0) and not skip_update(500.0, 500.0) and not skip_update(1e9, None)
    assert not skip_update(math.inf, 500.0)  # verl skips non-finite norms itself


def test_the_threshold_travels_with_the_loss_to_the_workers():
    loss_fn = with_max_grad_norm(partial(max, 1), 500.0)
    received = pickle.loads(pickle.dumps(loss_fn))  # as Ray sends set_loss_fn's argument
    assert getattr(received, MAX_GRAD_NORM_ATTRIBUTE) == 500.0 and received(3) == 3
