"""scripts/fresh_coverage.py: how often each training question is used fresh under each rule."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

from fresh_coverage import fresh_counts  # noqa: E402


def test_grpo_uses_every_miniature_question_twice_and_replay_halves_the_fresh_draws():
    grpo = fresh_counts(640, 160, warm_up_steps=160, rule="discard", batch=8)
    assert grpo.tolist() == [2] * 640
    for rule in ("carry", "discard"):
        exgrpo = fresh_counts(640, 160, warm_up_steps=20, rule=rule, batch=8)
        assert exgrpo.sum() == 20 * 8 + 140 * 4
    # carry uses the loader's order up in turn (none skipped); discard drops each batch's unused half.
    assert (fresh_counts(640, 160, 20, "carry", batch=8) >= 1).all()
    assert (fresh_counts(640, 160, 20, "discard", batch=8) == 0).sum() > 50
