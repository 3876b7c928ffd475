"""The fault-injection harness, short: a 3-step CPU ExGRPO run with a checkpoint every step,
SIGKILLed once at a random moment and once inside a checkpoint save, resumed each time; every
resume must load the latest complete checkpoint with hash-equal ExGRPO state, and the run must
finish (scripts/fault_injection.py; the long version is in the closing notes)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

import fault_injection  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # eight trainer launches: `make test-slow`


def test_kills_at_random_and_inside_a_save_resume_from_the_latest_complete_checkpoint(tmp_path):
    out = tmp_path / "faults"
    code = fault_injection.main(["--kills", "2", "--save-kills", "1", "--steps", "3", "--seed", "1",
                                 "--random-window", "20", "60", "--out", str(out)])
    kills = json.loads((out / "kills.json").read_text())
    assert code == 0, (out / "table.md").read_text()
    assert len(kills) == 2 and {k["phase"] for k in kills} == {"random", "in save"}
    for kill in kills:
        assert kill["resumed_from"] == kill["latest_complete"] and kill["digest_equal"] and kill["reload_equal"]
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    # No temporary folder of a killed save survives the later saves.
    assert not list((out / "checkpoints").glob("global_step_*/exgrpo/.*"))


def test_with_the_experience_log_a_kill_between_checkpoints_loses_no_experience(tmp_path):
    """Checkpoints every 2 steps and the experience log on: one kill right after a step only the
    log holds, one inside a save. Each resumed buffer (checkpoint + log) must be hash-equal to the
    buffer the killed run recorded after its last logged step."""
    out = tmp_path / "faults"
    code = fault_injection.main(["--kills", "2", "--save-kills", "1", "--between-kills", "1", "--steps", "4",
                                 "--save-freq", "2", "--experience-log", "--seed", "1", "--out", str(out)])
    kills = json.loads((out / "kills.json").read_text())
    assert code == 0, (out / "table.md").read_text()
    between = next(k for k in kills if k["phase"] == "between checkpoints")
    assert between["log_step"] > between["latest_complete"]  # the log held a step the checkpoint did not
    for kill in kills:
        assert kill["log_equal"] and kill["digest_equal"] and kill["resumed_from"] == kill["latest_complete"]
    assert "buffer = buffer at that step" in (out / "table.md").read_text()
