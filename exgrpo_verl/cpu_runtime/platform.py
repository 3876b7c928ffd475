"""A verl platform for machines without an accelerator: torch on the CPU, gloo collectives.

verl asks its platform for a device name, a torch device module and a Ray resource name.
Ray still schedules the actor and rollout workers by "GPU" resources, so a CPU run starts
Ray with a fake GPU count (`+ray_kwargs.ray_init.num_gpus=N`); the resource name stays "GPU".
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import torch

from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


class CPUDeviceModule:
    """What verl calls on `torch.cuda`, answered for the CPU.

    Memory queries report zero (verl logs them around every stage); the RNG state is the
    CPU generator's, so a resumed run restores sampling state like a GPU run does.
    Anything else is looked up on `torch.cpu`.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def get_device_name(device=None) -> str:
        return "CPU"

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def set_device(device=None) -> None:
        pass

    @staticmethod
    def synchronize(device=None) -> None:
        pass

    @staticmethod
    def empty_cache() -> None:
        pass

    @staticmethod
    def memory_allocated(device=None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        pass

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        return 0, 0

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def get_rng_state(device=None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device=None) -> None:
        torch.set_rng_state(state)


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    _device_module = CPUDeviceModule()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Never auto-detected: the CPU runtime is chosen explicitly (VERL_PLATFORM=cpu).
        return False

    def current_device(self) -> str:
        # verl moves tensors with `.to(get_device_id())`; "cpu" (like torch.cpu.current_device())
        # keeps them on the CPU, where an index 0 would mean the absent accelerator.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index=None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def rollout_env_vars(self) -> dict[str, str]:
        # verl's vLLM server (rollout.name=vllm): vLLM's CPU build sizes its KV cache from this
        # (GiB); 1 is ample for the tiny models and keeps the shared machine's memory free.
        return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
