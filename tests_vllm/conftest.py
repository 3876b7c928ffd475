"""Fixtures of the vLLM profile's tests (run in .venv-vllm by `make test-vllm`): a tiny Qwen2
whose head size vLLM's CPU attention accepts, and the toy task's data."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    from exgrpo_verl.tiny_models import VLLM_CPU_QWEN2, build_tiny_model

    return build_tiny_model(VLLM_CPU_QWEN2, tmp_path_factory.mktemp("models") / "tiny-qwen2-head32")


@pytest.fixture(scope="session")
def char_hunt_files(tmp_path_factory) -> tuple[Path, Path]:
    from exgrpo_verl.tasks import char_hunt

    folder = tmp_path_factory.mktemp("char_hunt")
    train = char_hunt.write_parquet(folder / "train.parquet", 64, seed=0)
    val = char_hunt.write_parquet(folder / "val.parquet", 8, seed=1, split="test", first_index=10_000)
    return train, val
