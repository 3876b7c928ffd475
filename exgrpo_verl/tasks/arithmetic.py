"""Chain arithmetic: a synthetic reasoning task with the paper's input/output contract.

A question is a left-to-right chain of additions and subtractions, e.g. `57-3+8`. A worked
solution reasons one step at a time, closes its thinking and boxes the answer:

    57-3=54 54+8=62</think>\\boxed{62}

(the prompt ends with `<think>\\n`, as the authors' backbone renders it, so the response starts
inside the thinking). Difficulty is the number of operations: level L has `levels[L-1]` of them.
Every intermediate value stays in [0, value_max], so a step is always a small, learnable
operation and harder levels differ only in how many steps must all be right.

Splits are deterministic and disjoint. Each expression belongs to one half by a hash of its
text: the warm-up (supervised) half, or the reserved half from which the RL training pool and
the held-out test set are drawn (disjoint from each other). So RL questions are never seen by the
warm-up, as in the paper, where the RL questions are new to the base model.

Rows follow verl's parquet schema; the reward is the release's training reward
(`exgrpo_verl.reward.compute_score`), the same function the GPU recipes train with.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

DATA_SOURCE = "chain_arithmetic"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ArithmeticTask:
    """levels: operations per level (difficulty knob). first_max / operand_max: largest first
    operand / later operand. value_max: intermediate values stay in [0, value_max]."""

    levels: tuple[int, ...] = (1, 2, 3, 5)
    first_max: int = 99
    operand_max: int = 9
    value_max: int = 99

    def __post_init__(self):
        if not self.levels or any(not isinstance(n, int) or n < 1 for n in self.levels):
            raise ValueError(f"ArithmeticTask.levels={self.levels!r}: must be a non-empty tuple of ints >= 1")
        if not (1 <= self.operand_max <= self.first_max <= self.value_max):
            raise ValueError(
                "ArithmeticTask: need 1 <= operand_max <= first_max <= value_max, got "
                f"{self.operand_max}, {self.first_max}, {self.value_max}"
            )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Question:
    expression: str
    level: int  # 1-based
    steps: tuple[tuple[int, str, int, int], ...]  # (left, op, right, result) per operation

    @property
    def answer(self) -> int:
        return self.steps[-1][3]


def sample_question(task: ArithmeticTask, level: int, rng: random.Random) -> Question:
    """A random chain with task.levels[level-1] operations, intermediate values in range."""
    value = rng.randint(1, task.first_max)
    expression = str(value)
    steps = []
    for _ in range(task.levels[level - 1]):
        ops = [op for op in "+-" if _fits(task, value, op)]
        op = rng.choice(ops)
        right = rng.randint(1, _largest_operand(task, value, op))
        result = value + right if op == "+" else value - right
        steps.append((value, op, right, result))
        expression += f"{op}{right}"
        value = result
    return Question(expression, level, tuple(steps))


def _largest_operand(task: ArithmeticTask, value: int, op: str) -> int:
    room = task.value_max - value if op == "+" else value
    return min(task.operand_max, room)


def _fits(task: ArithmeticTask, value: int, op: str) -> bool:
    return _largest_operand(task, value, op) >= 1


def in_reserved_half(expression: str) -> bool:
    """True for expressions kept from the warm-up (RL pool and held-out set come from these)."""
    return hashlib.sha256(expression.encode()).digest()[0] % 2 == 1


def solution(question: Question, error_step: int | None = None, error: int = 0) -> str:
    """A worked solution; with error_step, that step's result is off by `error` and the error is
    carried to the end (an imperfect trace, as a weak teacher would write)."""
    parts = []
    value = question.steps[0][0]
    for index, (_, op, right, result) in enumerate(question.steps):
        new_value = (value + right if op == "+" else value - right) + (error if index == error_step else 0)
        parts.append(f"{value}{op}{right}={new_value}")
        value = new_value
    return " ".join(parts) + f"{THINK_CLOSE}\\boxed{{{value}}}"


def prompt_messages(question: Question) -> list[dict]:
    return [{"role": "user", "content": f"Compute {question.expression}"}]


def draw_questions(task: ArithmeticTask, per_level: int, seed: int, reserved: bool, exclude: set[str] = frozenset(),
                   levels: Sequence[int] | None = None) -> list[Question]:
    """per_level distinct questions of each of `levels` (1-based; None: all) from one half, none in
    `exclude`, in a seeded order."""
    rng = random.Random(seed)
    questions = []
    for level in levels or range(1, len(task.levels) + 1):
        if not 1 <= level <= len(task.levels):
            raise ValueError(f"levels={tuple(levels)}: level {level} does not exist; the task has levels 1..{len(task.levels)}")
        seen: set[str] = set()
        attempts = 0
        while len(seen) < per_level:
            attempts += 1
            if attempts > 200 * per_level:
                raise ValueError(
                    f"ArithmeticTask: level {level} has fewer than {per_level} distinct questions in this half; "
                    "ask for fewer questions per level or widen the operand ranges"
                )
            question = sample_question(task, level, rng)
            if question.expression in seen or question.expression in exclude:
                continue
            if in_reserved_half(question.expression) != reserved:
                continue
            seen.add(question.expression)
            questions.append(question)
    rng.shuffle(questions)
    return questions


def make_rows(questions: list[Question], split: str, first_index: int = 0) -> list[dict]:
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": prompt_messages(question),
            "ability": "math",
            "reward_model": {"ground_truth": str(question.answer), "style": "rule"},
            "extra_info": {"index": first_index + offset, "split": split, "level": question.level},
        }
        for offset, question in enumerate(questions)
    ]


def write_splits(task: ArithmeticTask, out_dir: str | Path, train_per_level: int, test_per_level: int, seed: int = 0,
                 train_levels: Sequence[int] | None = None) -> dict[str, Path]:
    """RL training pool (of `train_levels`, None: all) and held-out test set (every level; both from
    the reserved half, disjoint) as parquet."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = draw_questions(task, test_per_level, seed=seed + 1_000, reserved=True)
    train = draw_questions(task, train_per_level, seed=seed, reserved=True, exclude={q.expression for q in test}, levels=train_levels)
    paths = {"train": out_dir / "train.parquet", "test": out_dir / "test.parquet"}
    pd.DataFrame(make_rows(train, "train")).to_parquet(paths["train"])
    pd.DataFrame(make_rows(test, "test", first_index=1_000_000)).to_parquet(paths["test"])
    return paths
