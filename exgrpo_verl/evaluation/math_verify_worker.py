"""math-verify from any thread: directly on the main thread, else in a child process.

math-verify bounds its sympy work with `signal.alarm`, which works only on a process's main
thread. verl's own wrapper gets around that with a `spawn` process pool, which scores 0 without
a word in any script lacking an `if __name__ == "__main__":` guard; and verl's reward loop calls
the reward function from a thread pool, off the main thread. So `compare` calls math-verify
directly on the main thread, with its own timeouts; on any other thread it sends the comparison
to a child process (one per process, `exgrpo_verl.child_process`: started with `python -m`, so it
never re-imports the caller's script), which runs math-verify on its own main thread, answers in
JSON lines over pipes, and is killed and restarted if it misses its deadline. No pool, no pickling, no
`__main__` guard needed by callers. POSIX only.
"""

import atexit
import threading
from dataclasses import asdict
from itertools import product

from exgrpo_verl.child_process import ChildProcess, ChildStartError, serve
from exgrpo_verl.evaluation.outcomes import CORRECT, GRADER_ERROR, INCORRECT, NO_ANSWER, GradeResult

MATH_VERIFY_TIMEOUT_S = 5  # per parse / per comparison; an int because signal.alarm takes whole seconds


def compare(ground_truth: str, prediction: str, timeout_s: int = MATH_VERIFY_TIMEOUT_S) -> GradeResult:
    """math-verify's verdict on prediction (text holding an answer) against ground_truth, from any thread."""
    if not isinstance(timeout_s, int) or timeout_s < 1:
        raise ValueError(f"timeout_s={timeout_s!r}: must be a whole number of seconds >= 1 (signal.alarm)")
    if threading.current_thread() is threading.main_thread():
        return math_verify_compare(ground_truth, prediction, timeout_s)
    return _worker.compare(ground_truth, prediction, timeout_s)


def math_verify_compare(ground_truth: str, prediction: str, timeout_s: int) -> GradeResult:
    """Parse both sides with math-verify and compare every pair of parses.

    Runs math-verify with its SIGALRM timeouts, so it must run on the main thread (the child
    worker calls it on its own main thread). Errors and timeouts become GRADER_ERROR.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException  # a BaseException: `except Exception` misses it

    try:
        gold = parse(
            "\\boxed{" + ground_truth + "}", [LatexExtractionConfig()], parsing_timeout=timeout_s, raise_on_error=True
        )
        predicted = parse(
            prediction,
            [LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=timeout_s,
            raise_on_error=True,
        )
    except (Exception, TimeoutException) as error:
        return GradeResult(GRADER_ERROR, detail=f"math-verify parse: {type(error).__name__}: {error}"[:500])
    if not gold:
        return GradeResult(GRADER_ERROR, detail=f"math-verify cannot parse the ground truth {ground_truth!r}")
    if not predicted:
        return GradeResult(NO_ANSWER, detail="math-verify found no answer in the response")

    extracted = str(predicted[-1])  # parse returns [sympy value, the text it came from]
    errors = []
    for gold_value, predicted_value in product(gold, predicted):
        try:
            if verify(gold_value, predicted_value, timeout_seconds=timeout_s, raise_on_error=True):
                return GradeResult(CORRECT, extracted)
        except (Exception, TimeoutException) as error:
            errors.append(f"{type(error).__name__}: {error}")
    if errors:
        return GradeResult(GRADER_ERROR, extracted, ("math-verify compare: " + "; ".join(errors))[:500])
    return GradeResult(INCORRECT, extracted)


class MathVerifyWorker:
    """A child process that runs `math_verify_compare` on its main thread, for callers on other threads.

    One per process, started on first use, shared by all threads (one request at a time: sympy
    holds the GIL anyway). A reply later than the deadline kills the child; the next call starts
    a new one. The deadline counts from the request, not from the wait for the lock. (The reward
    guard runs training rewards in children of their own, on their main threads, so those never
    queue here: `exgrpo_verl.reward_sandbox`.)
    """

    DEADLINE_PER_TIMEOUT = 8  # two parses and up to four comparisons, each bounded by timeout_s, plus slack

    def __init__(self):
        self._lock = threading.Lock()
        self._child = ChildProcess("exgrpo_verl.evaluation.math_verify_worker")

    def compare(self, ground_truth: str, prediction: str, timeout_s: int) -> GradeResult:
        request = {"ground_truth": ground_truth, "prediction": prediction, "timeout_s": timeout_s}
        with self._lock:
            try:
                return GradeResult(**self._child.request(request, self.DEADLINE_PER_TIMEOUT * timeout_s))
            except (OSError, TimeoutError, EOFError, ValueError, ChildStartError) as error:
                return GradeResult(GRADER_ERROR, detail=f"math-verify worker: {type(error).__name__}: {error}")

    def close(self) -> None:
        with self._lock:
            self._child.stop()


_worker = MathVerifyWorker()
atexit.register(_worker.close)


def _handler():
    import math_verify  # noqa: F401  (import before announcing readiness: it takes a second or two)

    return lambda request: asdict(math_verify_compare(request["ground_truth"], request["prediction"], request["timeout_s"]))


if __name__ == "__main__":  # started by MathVerifyWorker: JSON lines on stdin and stdout
    serve(_handler)
