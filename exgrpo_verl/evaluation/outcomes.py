"""What every grader returns: an outcome, the answer it compared, and why."""

# No `from __future__ import annotations`: verl may load a reward file by path without
# registering it in sys.modules, and dataclasses cannot resolve string annotations then.
from dataclasses import dataclass

CORRECT = "correct"
INCORRECT = "incorrect"
NO_ANSWER = "no_answer"
GRADER_ERROR = "grader_error"


@dataclass(frozen=True)
class GradeResult:
    outcome: str  # CORRECT, INCORRECT, NO_ANSWER or GRADER_ERROR
    extracted: str | None = None  # the answer text the grader compared, when it found one
    detail: str = ""  # why: for no_answer and grader_error

    @property
    def score(self) -> float:
        return 1.0 if self.outcome == CORRECT else 0.0
