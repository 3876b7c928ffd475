"""Fixtures for the evaluation and data tests: the scripts as modules, the release's files shipped
in exgrpo_verl/data/eval/, and a small real-data fixture cut from them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def load_script():
    """A function importing scripts/<name>.py as a module, so tests call its main(argv) in-process."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"scripts_{name}", REPO_ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def eval_data_dir() -> Path:
    from exgrpo_verl.data import EVAL_DATA_DIR

    return EVAL_DATA_DIR


@pytest.fixture(scope="session")
def small_eval_parquet(eval_data_dir, tmp_path_factory) -> Path:
    """Real rows: question 0 of every in-distribution benchmark (AIME/AMC with all their 32
    repeats, to exercise deduplication) and the first two ARC-c questions."""
    math_rows = pd.read_parquet(eval_data_dir / "math_test_id.parquet")
    first_questions = math_rows[[extra["index"] == 0 for extra in math_rows["extra_info"]]]
    arc_rows = pd.read_parquet(eval_data_dir / "arc_c.parquet").head(2)
    path = tmp_path_factory.mktemp("eval_fixture") / "small_eval.parquet"
    pd.concat([first_questions, arc_rows], ignore_index=True).to_parquet(path)
    return path
