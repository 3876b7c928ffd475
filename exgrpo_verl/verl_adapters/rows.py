"""Conversions between verl's TransferQueue trajectory rows and the experience buffer.

A row of verl's V1 trainer holds, per token, `prompts` (un-padded), `responses`,
`input_ids` (prompt + response), `position_ids`, `response_mask`, `loss_mask`, `rm_scores`
(the reward on the last response token) and `rollout_log_probs`; and per row the prompt's
dataset fields (`uid`, `index`, `data_source`, ...) plus `session_id`. A replayed
trajectory becomes a row by copying a fresh sibling of its group (same prompt, same
dataset fields) and replacing the response part, as verl builds its own padding rows.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch

from exgrpo_verl.experience import ExperienceBuffer, GroupResult, Trajectory
from exgrpo_verl.strategies import GroupOutcome
from verl.trainer.ppo.padding_utils import build_padding_position_ids

# Per-token data recorded at generation time (MoE routing, distillation targets) that a
# stored trajectory does not have: rows carrying them cannot be replayed.
UNSUPPORTED_FIELDS = ("routed_experts", "teacher_ids", "teacher_logprobs")
# Set on each prompt row (1: drawn from the buffer) and copied by verl onto its trajectory rows.
EXPERIENCE_MARKER = "exgrpo_experience"
GROUP_FIELDS = ["index", "rm_scores", EXPERIENCE_MARKER]
STEP_FIELDS = ["uid", "index", "prompts", "responses", "response_mask", "rm_scores", "old_log_probs", "entropy", "is_replay"]


def trajectory_key(uid: str, session_id: int, index: int = 0) -> str:
    """A trajectory row's TransferQueue key, in verl's format `{uid}_{session_id}_{index}`
    (uid a UUID4 without underscores, session_id the rollout within the group, index the turn)."""
    return f"{uid}_{session_id}_{index}"


def uid_of_key(key: str) -> str:
    """The group id (`uid`) of a key made by `trajectory_key` or verl's agent loop."""
    return key.rsplit("_", 2)[0]


def session_of_key(key: str) -> int:
    """The session id (rollout within the group) of a key made by `trajectory_key` or verl's agent loop."""
    return int(key.rsplit("_", 2)[1])


def build_replayed_row(sibling: dict, response_ids: torch.Tensor, log_probs: torch.Tensor, reward: float, session_id: int) -> dict:
    """A trajectory row for a stored response, on the prompt of a fresh `sibling` row.

    The row is the one carrier of the stored behaviour log-probs: they go in `rollout_log_probs`,
    from where the trainer copies them into `old_log_probs` after verl's old-log-prob pass. The
    reward sits on the last response token, as verl's reward loop puts it; `is_replay` = 1 marks
    the row for the loss (its tag says so too, see `replayed_row_tag`).
    """
    prompt = sibling["prompts"]
    response_ids = response_ids.to(prompt.dtype)
    if response_ids.ndim != 1 or log_probs.shape != response_ids.shape:
        raise ValueError(f"replayed response ({tuple(response_ids.shape)}) and log-probs ({tuple(log_probs.shape)}) must be 1-D of one length")
    unsupported = [key for key in UNSUPPORTED_FIELDS if sibling.get(key) is not None]
    if unsupported:
        raise ValueError(f"rows with {unsupported} (per-token data of the generation) cannot be replayed")

    row = {key: value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value) for key, value in sibling.items()}
    input_ids = torch.cat([prompt, response_ids])
    full_mask = torch.ones_like(input_ids)
    response_mask = torch.ones_like(response_ids)
    rm_scores = torch.zeros(response_ids.shape, dtype=torch.float32)
    rm_scores[-1] = reward
    row.update(
        responses=response_ids,
        input_ids=input_ids,
        position_ids=build_padding_position_ids(sibling.get("position_ids"), full_mask),
        response_mask=response_mask,
        loss_mask=response_mask.clone(),
        rm_scores=rm_scores,
        rollout_log_probs=log_probs.to(torch.float32),
        session_id=session_id,
        is_replay=torch.tensor(1, dtype=torch.int64),
    )
    if "attention_mask" in sibling:
        row["attention_mask"] = full_mask
    return row


def replayable_candidates(source: ExperienceBuffer, qid: int, candidates: list[Trajectory], prompt_ids: np.ndarray,
                          max_response_length: int) -> list[Trajectory]:
    """The `candidates` of question `qid` in `source` that can be replayed on a row with these prompt tokens.

    A stored trajectory's log-probs were taken on the prompt it was collected with, so another
    prompt rules out all of them; a response longer than verl's max_response_length rules out
    that one. The trainer scores and selects among the rest only.
    """
    question = source.question(qid)
    if question is None or question.num_trajectories == 0:
        return []
    if question.prompt_ids is not None and not np.array_equal(question.prompt_ids, prompt_ids):
        return []
    return [c for c in candidates if len(c.response_ids) <= max_response_length]


def groups_of_rows(keys: list[str], rows) -> dict[str, GroupOutcome]:
    """The step's question groups from its fresh rows (`GROUP_FIELDS`, in `keys` order), before any
    replayed row joins: sessions and rewards (summed token rewards), and the experience marker
    (`EXPERIENCE_MARKER`) their prompt row carried."""
    rewards = [float(score.sum()) for score in rows["rm_scores"].unbind()]
    members: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        members[uid_of_key(key)].append(i)
    markers, indices = rows[EXPERIENCE_MARKER].tolist(), rows["index"]
    return {
        uid: GroupOutcome(uid=uid, question_id=int(indices[positions[0]]),
                          sessions=tuple(session_of_key(keys[i]) for i in positions),
                          rewards=np.asarray([rewards[i] for i in positions], dtype=np.float64),
                          from_buffer=bool(markers[positions[0]]))
        for uid, positions in members.items()
    }


def replayed_row_tag(sibling_tag: dict, prompt_len: int, response_len: int) -> dict:
    """TransferQueue tag of a replayed row: the sibling's, with the lengths `_balance_batch` reads."""
    tag = copy.deepcopy(sibling_tag)
    tag.update(prompt_len=prompt_len, response_len=response_len, seq_len=prompt_len + response_len, is_replay=True)
    return tag


def group_results_from_step(rows, is_padding: list[bool], eos_token_ids: set[int], group_size: int) -> tuple[list[GroupResult], np.ndarray]:
    """Turn the step's trained rows into one GroupResult per question, and the fresh rewards.

    rows: the TensorDict of `STEP_FIELDS` for the step's keys (nested per-token fields);
    is_padding: verl's padding rows, skipped; a replayed row is not a rollout of its group (it
    is stored already) but counts for its accuracy, as `replayed_correct` when its reward is 1,
    where it stands in for one of the K rollouts (ExGRPO's K-1 + 1, a fill's replaced row), so
    the question is graded on K members: replayed_correct <= K - fresh rollouts. Rows a strategy
    adds beside K fresh rollouts (RePO, RLEP) do not count. The behaviour log-probs stored for
    a trajectory are `old_log_probs`: the actor's own log-probs this step, before the update.

    Returns the groups and the rewards of every fresh rollout (for the step's solve rate).
    """
    uids = list(rows["uid"])
    indices = list(rows["index"])
    replay_flags = rows["is_replay"].tolist() if "is_replay" in rows.keys() else [0] * len(uids)
    responses = rows["responses"].unbind()
    masks = rows["response_mask"].unbind()
    old_log_probs = rows["old_log_probs"].unbind()
    entropies = rows["entropy"].unbind()
    scores = rows["rm_scores"].unbind()
    prompts = rows["prompts"].unbind()

    members: dict[str, list[int]] = defaultdict(list)
    replayed_correct: dict[str, int] = defaultdict(int)
    for i, uid in enumerate(uids):
        if is_padding[i]:
            continue
        if replay_flags[i]:
            replayed_correct[uid] += int(float(scores[i].sum()) == 1.0)
        else:
            members[uid].append(i)

    groups, fresh_rewards = [], []
    for uid, rows_of_group in members.items():
        response_ids, log_probs, token_entropies, rewards, ended = [], [], [], [], []
        for i in rows_of_group:
            length = int(masks[i].sum())
            tokens = responses[i][:length]
            response_ids.append(tokens.numpy().astype(np.int64))
            log_probs.append(old_log_probs[i][:length].float().numpy())
            token_entropies.append(entropies[i][:length].float().numpy())
            rewards.append(float(scores[i].sum()))
            ended.append(length > 0 and int(tokens[-1]) in eos_token_ids)
        qid = int(indices[rows_of_group[0]])
        fresh_rewards.extend(rewards)
        groups.append(
            GroupResult(
                question_id=qid,
                response_ids=response_ids,
                log_probs=log_probs,
                rewards=np.asarray(rewards, dtype=np.float64),
                ended_with_eos=np.asarray(ended, dtype=bool),
                entropies=token_entropies,
                prompt_ids=prompts[rows_of_group[0]].numpy().astype(np.int64),
                replayed_correct=min(replayed_correct[uid], group_size - len(rows_of_group)),
            )
        )
    return groups, np.asarray(fresh_rewards, dtype=np.float64)
