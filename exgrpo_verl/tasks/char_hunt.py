"""Character hunt: a toy verifiable-reward task that a tiny random model sometimes solves.

Each question names target characters; the reward is 1 when the response contains any of
them. Targets come from groups that an untrained tiny model (byte-level BPE, ~460 tokens)
hits at different rates, from ~90% for a set of common letters down to ~4% for one
punctuation mark, so questions land in every accuracy bucket, the easy ones get solved
K/K and retired within a few steps, and RL can raise the rates. That is what the ExGRPO machinery needs
to be exercised end to end: partly-solved questions, retirements and a rising solve rate.

Rows follow verl's parquet schema (data_source, prompt, ability, reward_model, extra_info)
and the reward function has verl's `compute_score` signature.
"""

from __future__ import annotations

import random
from pathlib import Path

from exgrpo_verl.data.rows import make_row

DATA_SOURCE = "char_hunt"
# Target groups from frequent to rare under an untrained tiny model, with 32-token answers:
# any of four common characters (~90%), then one character: a digit (~25%), a rarer letter
# (~15%), a rare one (~10%), punctuation (~4%).
TARGET_GROUPS = (("etr ", "sno ", "ait "), tuple("0123456789"), tuple("bvgq"), tuple("wkx"), tuple("(\\+="))


def make_rows(num_questions: int, seed: int = 0, split: str = "train", first_index: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for offset in range(num_questions):
        target = rng.choice(TARGET_GROUPS[offset % len(TARGET_GROUPS)])
        question = f"Write any of the characters {target!r} in your answer."
        rows.append(make_row(DATA_SOURCE, question, target, first_index + offset, split, ability="toy", system_prompt=None))
    return rows


def write_parquet(path: str | Path, num_questions: int, seed: int = 0, split: str = "train", first_index: int = 0) -> Path:
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(make_rows(num_questions, seed, split, first_index)).to_parquet(path)
    return path


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """1.0 when the response contains any of the target characters, else 0.0."""
    return 1.0 if any(character in solution_str for character in ground_truth) else 0.0
