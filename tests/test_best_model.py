"""The best-by-validation model's folder rules (exgrpo_verl.best_model), without a trainer; the
CPU end-to-end run (tests/test_e2e_exgrpo_cpu.py) keeps one through verl's real engine and resume."""

import json
import os

import pytest

from exgrpo_verl import best_model


def _val(**scores):
    """verl's validation metrics: val-core/<source>/reward/mean@1 per source, and aux noise."""
    metrics = {f"val-core/{source}/reward/mean@1": score for source, score in scores.items()}
    metrics.update({f"val-aux/{source}/reward/std@1": 9.0 for source in scores})
    return metrics


def _saved_model(folder):
    """What the engine writes into a best folder: huggingface/ with a config."""
    (folder / "huggingface").mkdir(parents=True)
    (folder / "huggingface" / "config.json").write_text("{}")
    return folder


def test_the_score_is_the_mean_over_sources_without_minerva():
    scores = best_model.validation_scores(_val(aime=0.2, math500=0.6, minerva=0.9))
    assert scores == {"aime": 0.2, "math500": 0.6}
    assert best_model.improves(scores, None) and best_model.improves(scores, {"score": 0.39})
    assert not best_model.improves(scores, {"score": 0.4}) and not best_model.improves({}, None)


def test_publish_points_best_at_the_new_model_and_removes_the_old_and_leftovers(tmp_path):
    first = _saved_model(best_model.new_folder(tmp_path, 10))
    best_model.publish(tmp_path, first, 10, {"aime": 0.3})
    leftover = _saved_model(best_model.new_folder(tmp_path, 15))  # a save killed before its publish
    second = _saved_model(best_model.new_folder(tmp_path, 20))
    record = best_model.publish(tmp_path, second, 20, {"aime": 0.5, "amc": 0.7})
    assert os.readlink(tmp_path / "best") == second.name
    assert json.loads((tmp_path / "best" / "best.json").read_text()) == record
    assert record["step"] == 20 and record["score"] == pytest.approx(0.6)
    assert not first.exists() and not leftover.exists()
    assert best_model.read_best(tmp_path) == record
    assert best_model.resolve_model(str(tmp_path)) == str(tmp_path / "best" / "huggingface")
    assert best_model.resolve_model("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"


def test_a_kill_before_the_swap_leaves_the_previous_best_whole(tmp_path):
    kept = _saved_model(best_model.new_folder(tmp_path, 10))
    best_model.publish(tmp_path, kept, 10, {"aime": 0.3})
    best_model.new_folder(tmp_path, 20).mkdir()  # killed while the engine was saving
    assert best_model.read_best(tmp_path)["step"] == 10
    assert best_model.resolve_model(str(tmp_path)) == str(tmp_path / "best" / "huggingface")


def test_an_unsaved_model_is_never_published(tmp_path):
    folder = best_model.new_folder(tmp_path, 10)
    folder.mkdir()
    with pytest.raises(RuntimeError, match="the model was not saved"):
        best_model.publish(tmp_path, folder, 10, {"aime": 0.3})
    assert best_model.read_best(tmp_path) is None


def test_a_corrupt_record_names_the_file_and_the_fix(tmp_path):
    folder = _saved_model(best_model.new_folder(tmp_path, 10))
    best_model.publish(tmp_path, folder, 10, {"aime": 0.3})
    (folder / "best.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"best\.json: unreadable best-model record .* move .*best aside"):
        best_model.read_best(tmp_path)


def test_best_folders_are_told_apart_from_step_folders(tmp_path):
    assert best_model.is_best_folder(best_model.new_folder(tmp_path, 3))
    assert not best_model.is_best_folder(tmp_path / "global_step_3" / "actor")
