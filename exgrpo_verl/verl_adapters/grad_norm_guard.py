"""Skip optimiser steps whose gradient norm exceeds a threshold (the release: 500), in verl 0.9.1's engine.

The seam: verl's `FSDPEngine.optimizer_step` computes the norm while clipping and steps right
after, with no hook in between (it only skips non-finite norms). So `GradNormGuardedEngine`, a
subclass of verl's FSDP actor engine, measures the norm first (the same total 2-norm, sharded
gradients included) and, above the threshold, zeroes the gradients and returns without stepping;
otherwise verl's own optimizer_step runs unchanged (clip at actor.optim.clip_grad, step). The plugin
puts the subclass in verl's EngineRegistry in place of the FSDP language-model engine (and the CPU
runtime builds its checked engine on it), so it serves any run; without a threshold it only
delegates.

The threshold travels with the worker loss (`with_max_grad_norm`): the trainer sends the loss to
the workers at start and when replay starts (set_loss_fn), and the engine receives it with every
batch; verl's optimizer config rejects keys it does not know.

Metric: `exgrpo/update_skipped`, 1 for a skipped optimiser step, 0 otherwise; verl averages it
over the step's mini-batches (the fraction of updates skipped). It is reported as a one-element
list, the shape of verl's own per-micro-batch metrics: verl's worker gathers each metric over the
data-parallel ranks and flattens those lists (a bare float there fails the first update with
"TypeError: 'float' object is not iterable").

The same engine saves the best-by-validation model (exgrpo_verl.best_model): a save into a best
folder writes the Hugging Face model only and stays out of verl's checkpoint retention.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.tensor import DTensor

from exgrpo_verl.best_model import is_best_folder
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

MAX_GRAD_NORM_ATTRIBUTE = "exgrpo_max_grad_norm"
SKIPPED_METRIC = "exgrpo/update_skipped"


def with_max_grad_norm(loss_fn: partial, max_grad_norm: float | None) -> partial:
    """`loss_fn`, carrying the threshold to the engine (a partial's attributes pickle with it)."""
    setattr(loss_fn, MAX_GRAD_NORM_ATTRIBUTE, max_grad_norm)
    return loss_fn


def skip_update(grad_norm: float, max_grad_norm: float | None) -> bool:
    """Skip when ||g||_2 > max_grad_norm (non-finite norms verl skips itself)."""
    return max_grad_norm is not None and math.isfinite(grad_norm) and grad_norm > max_grad_norm


class GradNormGuardedEngine(FSDPEngineWithLMHead):
    _max_grad_norm: float | None = None
    _skipped = False

    def train_batch(self, data, loss_function):
        self._max_grad_norm = getattr(loss_function, MAX_GRAD_NORM_ATTRIBUTE, None)
        outputs = super().train_batch(data, loss_function)
        if self._max_grad_norm is not None and self.is_mp_src_rank_with_outputs():
            outputs["metrics"][SKIPPED_METRIC] = [float(self._skipped)]
        return outputs

    def optimizer_step(self):
        self._skipped = False
        if self._max_grad_norm is None:
            return super().optimizer_step()
        if getattr(self, "scaler", None) is not None:
            raise ValueError("exgrpo.max_grad_norm needs unscaled gradients: train in bf16/fp32 (no fp16 grad scaler) "
                             "or set exgrpo.max_grad_norm=null")
        grad_norm = self._grad_norm()
        if skip_update(grad_norm, self._max_grad_norm):
            self._skipped = True
            self.optimizer.zero_grad()
            return grad_norm
        return super().optimizer_step()

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None, **kwargs):
        """verl's save; into a best-model folder (exgrpo_verl.best_model) the Hugging Face model only,
        kept out of verl's checkpoint retention (its list of saved paths is left as it was)."""
        if not is_best_folder(local_path):
            return super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep, **kwargs)
        manager = self.checkpoint_manager
        contents, saved_paths = manager.checkpoint_save_contents, list(manager.previous_saved_paths)
        manager.checkpoint_save_contents = ["hf_model"]
        try:
            return super().save_checkpoint(local_path, None, global_step, None, **kwargs)
        finally:
            manager.checkpoint_save_contents, manager.previous_saved_paths = contents, saved_paths

    def _grad_norm(self) -> float:
        """The total 2-norm of the gradients over all shards, gradients left as they are."""
        if isinstance(self.module, FSDP):
            norm = self.module.clip_grad_norm_(math.inf)  # FSDP1's sharded norm; an infinite bound scales by 1
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        return float(norm)


def register(devices=("cuda", "npu")) -> None:
    """Put the guarded engine in verl's registry for the FSDP language model on `devices`. Idempotent."""
    from verl.workers.engine.base import EngineRegistry

    for backend in ("fsdp", "fsdp2"):
        for device in devices:
            EngineRegistry._engines["language_model"][backend][device] = GradNormGuardedEngine


register()  # on import: the plugin imports this module when verl loads the registry
