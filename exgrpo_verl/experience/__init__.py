"""ExGRPO's experience manager, framework-free (numpy only; no verl, Ray or torch).

Public API (details in docs/experience.md):
    ExperienceConfig            every knob, validated on construction
    ExperienceBuffer            update / sample_questions / candidates / select / mark_replayed /
                                question / is_retired / retired_ids / metrics / save / load /
                                record_operations / take_operations / replay / state_sha256
    GroupResult                 one question's rollouts of one step, the input of update()
    Trajectory, QuestionView    read-only copies handed out by the buffer
    CheckpointError             raised by ExperienceBuffer.load on a bad checkpoint (and on a bad log)
    journal.ExperienceLog       the append-only log of buffer calls between checkpoints
"""

from .buffer import ExperienceBuffer, QuestionView, Trajectory
from .config import ExperienceConfig
from .persistence import CheckpointError
from .results import GroupResult

__all__ = ["CheckpointError", "ExperienceBuffer", "ExperienceConfig", "GroupResult", "QuestionView", "Trajectory"]
