"""Known-harmless warnings filtered out of every process of a run, so the lines that matter show.

verl imports every training engine it knows when its engine package loads, and warns for each
one whose package is not installed, in every Ray process, on every start (five lines each:
torchtitan, veomni, automodel, mindspeed, megatron). A run on FSDP does not use them. The filter
is installed by the plugin (which `import verl` loads in every process, before the engines) when
the CPU runtime is on, or when the entry point found an FSDP strategy and set QUIET_SWITCH for
the processes it starts. Only "not installed" (ModuleNotFoundError) is hidden: an engine that is
installed but fails to import still warns, and so does every other warning.
"""

from __future__ import annotations

import os
import warnings

OPTIONAL_ENGINES = ("torchtitan", "veomni", "automodel", "mindspeed", "megatron")
QUIET_SWITCH = "EXGRPO_QUIET_OPTIONAL_ENGINES"
NOT_INSTALLED = rf"({'|'.join(OPTIONAL_ENGINES)}) engine is not available: ModuleNotFoundError"


def requested() -> bool:
    from exgrpo_verl import cpu_runtime_requested

    return cpu_runtime_requested() or os.environ.get(QUIET_SWITCH) == "1"


def install() -> None:
    """Ignore verl's warnings about optional engines that are not installed (idempotent)."""
    warnings.filterwarnings("ignore", message=NOT_INSTALLED, category=UserWarning)


def request_for_run(actor_strategy) -> None:
    """Called by the entry point before verl starts: quiet the run's processes when the actor
    trains on FSDP (on any other engine that engine's import warning may be the cause of a failure)."""
    if str(actor_strategy) in ("fsdp", "fsdp2"):
        os.environ[QUIET_SWITCH] = "1"
