"""exgrpo-verl: ExGRPO (Learning to Reason from Experience) as a plugin for verl 0.9.1."""

import os

__version__ = "0.1.0"

# The one switch of the CPU runtime (exgrpo_verl.cpu_runtime). It lives here so that the
# plugin can read it without importing the runtime: GPU runs never load that package.
CPU_RUNTIME_SWITCH = "EXGRPO_CPU_RUNTIME"


def cpu_runtime_requested() -> bool:
    return os.environ.get(CPU_RUNTIME_SWITCH, "").strip().lower() in ("1", "true", "yes", "on")
