"""Does the per-question trajectory cap bind at paper scale? Runs the paper-scale step generator of
scripts/bench_experience.py (128 questions x 8 rollouts a step, 64 experience questions once the
pool holds them, k ~ U as there) for a paper run's 701 steps through two buffers, one with the
project's cap (16 trajectories, 8 candidates) and one without (the release: every success kept and
scored), and prints how often the cap evicts and how it shrinks what selection picks from.

    python scripts/measure_question_cap.py [--steps 701] [--seed 0]

Responses are 16 tokens: the cap counts trajectories, not tokens, and the global token cap is
off here, so only the per-question rule differs between the two buffers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_experience import StepMaker  # noqa: E402

from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=701)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = argparse.Namespace(response_tokens=16, questions_per_step=128, group_size=8)
    capped = ExperienceBuffer(ExperienceConfig(group_size=8, max_total_tokens=None, seed=args.seed))
    uncapped = ExperienceBuffer(ExperienceConfig(group_size=8, max_total_tokens=None, seed=args.seed,
                                                 max_trajectories_per_question=None, max_candidates_per_question=None))
    maker = StepMaker(settings, np.random.default_rng(args.seed))
    sampled, shrunk, candidates_capped, candidates_all = 0, 0, [], []
    for step in range(1, args.steps + 1):
        qids = uncapped.sample_questions(64)  # the same questions go to both buffers
        for qid in qids:
            stored = uncapped.question(qid).num_trajectories
            held = capped.question(qid).num_trajectories if capped.question(qid) else 0
            sampled += 1
            shrunk += stored > 8
            candidates_all.append(stored)
            candidates_capped.append(min(held, 8))
        groups = maker.step(qids)
        capped.update(step, groups)
        uncapped.update(step, groups)
    per_question = [uncapped.question(q).num_trajectories for q in range(maker.next_question) if uncapped.question(q)]
    result = {
        "steps": args.steps,
        "evicted_by_question_cap": capped.metrics()["evicted/question_cap"],
        "trajectories_capped": capped.metrics()["trajectories"],
        "trajectories_uncapped": uncapped.metrics()["trajectories"],
        "questions_over_16_uncapped": int(sum(n > 16 for n in per_question)),
        "max_per_question_uncapped": int(max(per_question)),
        "sampled_questions": sampled,
        "sampled_with_more_than_8_candidates": shrunk,
        "mean_candidates_capped": float(np.mean(candidates_capped)),
        "mean_candidates_uncapped": float(np.mean(candidates_all)),
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
