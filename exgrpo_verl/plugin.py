"""verl plugin entry point (`verl.plugins` group): registers exgrpo-verl in every process.

`import verl` loads this module in the driver, the task runner and every Ray worker. verl
swallows a plugin's import error at DEBUG level, so a failure here is logged at ERROR with
its traceback and re-raised: a run must never go on silently without its components.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("exgrpo_verl")


def register_all() -> None:
    """Register our components with verl's registries. Idempotent."""
    from exgrpo_verl import cpu_runtime_requested
    from exgrpo_verl.verl_adapters import advantage

    advantage.register()
    if cpu_runtime_requested():
        from exgrpo_verl import cpu_runtime

        cpu_runtime.activate()
    # After the CPU runtime: importing verl's trainer asks for the platform.
    from exgrpo_verl.verl_adapters import trainer  # noqa: F401  (registers trainer_mode "exgrpo")


try:
    register_all()
except Exception:
    logger.exception("exgrpo-verl: registering the verl plugin failed; ExGRPO components are unavailable")
    raise
