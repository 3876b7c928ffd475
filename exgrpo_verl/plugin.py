"""verl plugin entry point (`verl.plugins` group): registers exgrpo-verl in every process.

`import verl` loads this module in every process that imports verl: the driver, the task
runner, FSDP workers and vLLM's workers. Most of them never train, so registration is lazy:
each component is registered the moment verl's own registry module is imported, and not
before. A registry nobody imports costs nothing; one that is imported has our entry before
anyone can look it up.

    verl.trainer.ppo.core_algos   <- advantage estimator "exgrpo"
    verl.trainer.ppo.v1           <- trainer mode "exgrpo" (after the package has fully loaded)
    verl.workers.engine.fsdp.transformer_impl  <- the FSDP actor engine that can skip large
                                     gradient norms (verl_adapters/grad_norm_guard.py)

The worker loss needs no registration: the trainer hands it to the workers (set_loss_fn).
The CPU runtime (EXGRPO_CPU_RUNTIME=1) is still installed at once: it replaces the platform
that verl's workers ask for first. `scripts/bench_plugin_import.py` measures what this
module adds to `import verl`.

verl swallows a plugin's import error at DEBUG level, so a failure here is logged at ERROR
with its traceback and re-raised: a run must never go on silently without its components.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import sys
from typing import Callable

logger = logging.getLogger("exgrpo_verl")

ADVANTAGE_REGISTRY_MODULE = "verl.trainer.ppo.core_algos"
TRAINER_REGISTRY_MODULE = "verl.trainer.ppo.v1"
ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"


def _import(module_name: str) -> Callable[[], None]:
    """A callback importing one of our adapter modules; each registers itself when its import
    completes. (When the adapter itself imported verl's registry module, this callback runs
    while the adapter is still half-imported: importing it again is then a no-op, and the
    adapter's own last line registers it.)"""
    return lambda: importlib.import_module(module_name)


class _RunAfterExecLoader(importlib.abc.Loader):
    """The module's own loader, then `callback` once the module has executed completely."""

    def __init__(self, loader, callback: Callable[[], None]):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name):  # get_source, is_package, get_resource_reader, ...
        return getattr(self._loader, name)


class _PostImportHooks(importlib.abc.MetaPathFinder):
    """Runs a callback right after a named module is first imported (one finder, many names)."""

    def __init__(self):
        self._callbacks: dict[str, Callable[[], None]] = {}

    def add(self, module_name: str, callback: Callable[[], None]) -> None:
        self._callbacks[module_name] = callback

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._callbacks:
            return None
        # The spec the rest of sys.meta_path would give, with its loader wrapped. The callback
        # leaves the table when it runs, not here: find_spec alone does not import anything.
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RunAfterExecLoader(spec.loader, lambda: self._callbacks.pop(fullname, _nothing)())
                return spec
        return None


def _nothing() -> None:
    pass


_hooks = _PostImportHooks()


def _loud(register: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            register()
        except Exception:
            logger.exception("exgrpo-verl: registering the verl plugin failed; ExGRPO components are unavailable")
            raise

    return run


def when_imported(module_name: str, register: Callable[[], None]) -> None:
    """Call `register` once `module_name` has been imported: now if it already is, else right after."""
    if module_name in sys.modules:
        _loud(register)()
        return
    if _hooks not in sys.meta_path:
        sys.meta_path.insert(0, _hooks)
    _hooks.add(module_name, _loud(register))


def register_all() -> None:
    """Register our components with verl's registries, each when its registry loads. Idempotent."""
    from exgrpo_verl import cpu_runtime_requested, quiet_logs

    if quiet_logs.requested():
        quiet_logs.install()
    if cpu_runtime_requested():
        from exgrpo_verl import cpu_runtime

        _loud(cpu_runtime.activate)()
    when_imported(ADVANTAGE_REGISTRY_MODULE, _import("exgrpo_verl.verl_adapters.advantage"))
    when_imported(TRAINER_REGISTRY_MODULE, _import("exgrpo_verl.verl_adapters.trainer"))  # registers trainer_mode "exgrpo"
    when_imported(ENGINE_MODULE, _import("exgrpo_verl.verl_adapters.grad_norm_guard"))


register_all()
