"""`scripts/evaluate.py --backend auto` never falls back to the CPU engine silently, and refuses it
for a large model, naming the vLLM import error and both fixes (this machine has no vLLM)."""

from __future__ import annotations

import json

import pytest

from exgrpo_verl.evaluation.generation import checked_backend, model_parameters, vllm_import_error

QWEN_7B_BYTES = 15_231_233_024  # Qwen2.5-Math-7B's model.safetensors.index.json: metadata.total_size (bf16)


@pytest.fixture
def seven_b_folder(tmp_path):
    """A Qwen2.5-Math-7B folder as sharded checkpoints ship (config + index; the shards' bytes are not needed)."""
    folder = tmp_path / "Qwen2.5-Math-7B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "torch_dtype": "bfloat16"}))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": QWEN_7B_BYTES},
                                                                      "weight_map": {}}))
    return folder


@pytest.fixture(autouse=True)
def no_vllm():
    if vllm_import_error() is None:
        pytest.skip("vLLM imports here: the fallback cannot be shown")


def test_model_size_is_read_from_the_index_or_the_weight_files(seven_b_folder, tiny_qwen2):
    assert model_parameters(str(seven_b_folder)) == pytest.approx(7.6e9, rel=0.01)
    assert 0 < model_parameters(str(tiny_qwen2)) < 1e7
    assert model_parameters("Qwen/Qwen2.5-Math-7B") is None  # a hub id: not known before download


def test_evaluating_a_7b_folder_with_backend_auto_is_refused_naming_the_import_error(seven_b_folder, load_script, tmp_path):
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as refused:
        load_script("evaluate").main(["--model", str(seven_b_folder), "--data", "unused.parquet", "--out", str(out)])
    assert str(refused.value) == (
        "evaluate.py: --backend auto: vLLM does not import here (import vllm: ModuleNotFoundError: No module named "
        f"'vllm'), and the fallback, the CPU engine in fp32, would not finish a 7.6B-parameter model ({seven_b_folder}); "
        "fix: run on a GPU machine with vLLM (pip install -e '.[gpu]'), or pass --backend hf to use the CPU engine anyway")
    assert not out.exists()  # refused before anything was written
    assert checked_backend("hf", str(seven_b_folder)) == "hf"  # asked for explicitly


def test_a_small_model_falls_back_to_the_cpu_engine_with_a_line_saying_why(tiny_qwen2, capsys):
    assert checked_backend("auto", str(tiny_qwen2)) == "hf"
    assert "evaluate: vLLM does not import (ModuleNotFoundError: No module named 'vllm'): generating with the CPU engine" \
        in capsys.readouterr().out
