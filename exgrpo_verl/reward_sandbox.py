"""Users' reward functions run in child processes that can be killed: `RewardSandbox`.

A thread cannot be stopped from Python, and a function spinning in C code (a catastrophic
regular expression, a huge sympy power) holds the GIL, so a thread-based time limit never even
gets to run: the reward worker hangs. Here the reward function (reward.custom_reward_function:
a file or pkg:// path, a name, reward_kwargs) runs on the main thread of one of `processes`
children (`exgrpo_verl.child_process`), each owned by one thread of the sandbox's pool:

    time limit   from when a child takes the call to its reply; a miss kills and restarts that
                 child (TimeoutError), the other children go on
    queueing     calls beyond `processes` wait for a free child, uncounted: one slow sample costs
                 one timeout, not the calls behind it
    errors       what the function raises comes back as RewardCallError("<type>: <message>")

On its own main thread the function may use signal-based timeouts too (math-verify grades
directly there, with no shared math-verify child to queue for). Arguments and results cross the
pipe as JSON (numpy values become numbers and lists), nothing is pickled.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from exgrpo_verl.child_process import STARTUP_TIMEOUT_S, ChildProcess, serve

PKG_PREFIX, FILE_PREFIX = "pkg://", "file://"


class RewardCallError(RuntimeError):
    """The reward function raised (or its process died); the message names the error."""


def load_function(path: str, name: str):
    """`name` from a module given as verl gives it: pkg://dotted.module, file://path or a file path."""
    if path.startswith(PKG_PREFIX):
        module = importlib.import_module(path[len(PKG_PREFIX):].replace("/", "."))
    else:
        file = path[len(FILE_PREFIX):] if path.startswith(FILE_PREFIX) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"reward.custom_reward_function.path={path}: no such file")
        spec = importlib.util.spec_from_file_location(f"exgrpo_reward_{abs(hash(os.path.abspath(file)))}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise AttributeError(f"reward.custom_reward_function.name={name}: {path} defines no {name}")
    return getattr(module, name)


class RewardSandbox:
    """The reward function `name` of `path`, called with `reward_kwargs` added, in killable children."""

    def __init__(self, path: str, name: str, reward_kwargs: dict, processes: int, timeout_s: float):
        self.timeout_s = timeout_s
        self._spec = json.dumps({"path": path, "name": name, "reward_kwargs": reward_kwargs})
        self._pool = ThreadPoolExecutor(processes, thread_name_prefix="exgrpo-reward")
        self._local = threading.local()
        self._children: list[ChildProcess] = []
        self._children_lock = threading.Lock()
        # Start every child now, in the background (each start blocks its pool thread, so each lands
        # on its own thread): the reward worker is built long before the first rollouts are scored.
        for _ in range(processes):
            self._pool.submit(self._start_child)

    def _child(self) -> ChildProcess:
        """This pool thread's own child (started on its first call, from this thread, which
        lives as long as the sandbox: the child's parent-death signal is tied to it)."""
        child = getattr(self._local, "child", None)
        if child is None:
            child = self._local.child = ChildProcess("exgrpo_verl.reward_sandbox", (self._spec,))
            with self._children_lock:
                self._children.append(child)
        return child

    def _start_child(self) -> None:
        try:
            self._child().request({"ping": True}, STARTUP_TIMEOUT_S)
        except Exception:  # a child that cannot start says why on the first real call
            pass

    def call(self, **kwargs):
        """One reward call on this thread's child, blocking: the function's result, or TimeoutError
        after timeout_s (the child is killed and restarted), RewardCallError when it raised."""
        try:
            reply = self._child().request({"kwargs": kwargs}, self.timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no result within exgrpo.reward.timeout_s={self.timeout_s} "
                               "(its reward process was killed and is restarted)") from None
        except EOFError as error:
            raise RewardCallError(f"the reward process died: {error}") from None
        if "error" in reply:
            raise RewardCallError(reply["error"])
        return reply["result"]

    async def compute_score(self, **kwargs):
        """verl's async reward-function form of `call` (verl's managers await coroutine functions)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(self.call, **kwargs))

    def close(self) -> None:
        with self._children_lock:
            for child in self._children:
                child.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _handler(spec: str):
    spec = json.loads(spec)
    function = load_function(spec["path"], spec["name"])

    def handle(request: dict) -> dict:
        if request.get("ping"):
            return {"pong": True}
        try:
            result = function(**{**request["kwargs"], **spec["reward_kwargs"]})  # reward_kwargs win, as in verl
            return {"result": asyncio.run(result) if inspect.iscoroutine(result) else result}
        except Exception as error:  # the user's function may raise anything: the parent counts it
            return {"error": f"{type(error).__name__}: {error}"}

    return handle


if __name__ == "__main__":  # started by RewardSandbox: the reward function's spec as the one argument
    serve(partial(_handler, sys.argv[1]), die_with_parent=True)
