"""How many training questions a run sees fresh, under exgrpo.unused_fresh_questions=carry and
discard (the release's), counting the draws only (no retirement, which removes solved questions
from both alike):

    python scripts/fresh_coverage.py [--questions 46000] [--steps 701] [--warm-up-steps 10] [--batch 128]
    python scripts/fresh_coverage.py --questions 640 --steps 160 --warm-up-steps 20 --batch 8   # the miniature

Each step uses B fresh questions during warm-up and B - B/2 once replay runs (B/2 experience
questions at rho 0.5, the pool being full); GRPO is --warm-up-steps equal to --steps. carry: the data loader's shuffled order is used up in turn, the
unused rest of a fetched batch waiting for the next step. discard: every step draws B questions
(shuffled epochs of floor(N / B) batches, drop_last as the release's loader), uses the first ones
and drops the rest.
"""

from __future__ import annotations

import argparse

import numpy as np


def fresh_counts(questions: int, steps: int, warm_up_steps: int, rule: str, seed: int = 0, batch: int = 128) -> np.ndarray:
    """How many times each question is used fresh."""
    rng, used = np.random.default_rng(seed), np.zeros(questions, dtype=np.int64)
    order, position, carry = rng.permutation(questions), 0, []

    def draw() -> list[int]:
        nonlocal order, position
        if position + batch > questions:  # a new shuffled epoch (the last partial batch dropped)
            order, position = rng.permutation(questions), 0
        position += batch
        return order[position - batch:position].tolist()

    for step in range(1, steps + 1):
        need = batch if step <= warm_up_steps else batch - batch // 2
        if rule == "discard":
            carry = []
        taken = []
        while len(taken) < need:
            if not carry:
                carry = draw()
            taken.append(carry.pop(0))
        used[taken] += 1
    return used


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=46000)
    parser.add_argument("--steps", type=int, default=701)
    parser.add_argument("--warm-up-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    result = {}
    for rule in ("carry", "discard"):
        used = fresh_counts(args.questions, args.steps, args.warm_up_steps, rule, batch=args.batch)
        result[rule] = {"never": int((used == 0).sum()), "once": int((used == 1).sum()),
                        "twice_or_more": int((used >= 2).sum()), "fresh_uses": int(used.sum())}
        print(f"{rule}: {result[rule]}")
    return result


if __name__ == "__main__":
    main()
