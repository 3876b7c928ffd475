"""Batched token-in / token-out sampling with a Hugging Face causal LM on the CPU.

The generation core of both the CPU rollout backend (`cpu_runtime/hf_rollout.py` wraps it in
a verl rollout server) and CPU evaluation (`evaluation/generation.py`). No verl or Ray.

Sampling follows vLLM's conventions so that a CPU run behaves like a GPU run:
- logits are divided by the temperature, then top-k and then top-p filter the distribution;
  temperature 0 means greedy decoding;
- the log-prob returned for a token is log softmax(logits / temperature), taken *before*
  top-k/top-p filtering. That is the distribution verl's actor scores with the same
  temperature, so rollout and actor log-probs agree up to numerics when the weights agree.
- generation of a sequence stops at the first stop token (included in the output, reason
  "stop") or after max_tokens (reason "length").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: no top-k filter
    logprobs: bool = False
    stop_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's / generation config's EOS ids

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens={self.max_tokens}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p={self.top_p}: must be in (0, 1]")


def eos_token_ids(tokenizer, generation_config=None) -> tuple[int, ...]:
    """The ids that end a response: the tokenizer's EOS and the generation config's (an int or a
    list; chat models often list the end-of-turn token there), sorted, without duplicates."""
    ids: set[int] = set()
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Iterable):
            ids.update(int(item) for item in value)
    return tuple(sorted(ids))


@dataclass
class GenerationOutput:
    token_ids: list[int]
    log_probs: list[float] | None
    finish_reason: str  # "stop" or "length"


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the logits outside the top-k set and outside the smallest set whose
    probability mass reaches top_p (the most likely token is always kept)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth_value = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_value, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Remove a token when the mass of the tokens ranked above it already reaches top_p.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        remove_sorted = mass_before >= top_p
        remove = remove_sorted.scatter(-1, sorted_index, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


class HFGenerationEngine:
    """Holds one model and generates for a batch of prompts of different lengths at once.

    Prompts are left-padded so that every row's next token sits in the last column, and a
    KV cache carries the state between decoding steps. Thread-safe: one batch runs at a time.
    """

    def __init__(self, model_path: str, seed: int = 0, max_batch_size: int = 64, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model.eval()
        self.max_batch_size = max_batch_size
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.default_stop_ids = eos_token_ids(self.tokenizer, self.model.generation_config)
        self.generator = torch.Generator().manual_seed(seed)
        self._lock = threading.Lock()

    @torch.no_grad()
    def load_weights(self, named_tensors) -> int:
        """Copy (name, tensor) pairs into the model; returns how many were loaded.

        Unknown names raise, and so does an update that leaves a parameter out: either would
        let the rollout sample from stale weights without anyone noticing.
        """
        named_tensors = list(named_tensors)
        targets = dict(self.model.named_parameters())
        targets.update(dict(self.model.named_buffers()))
        unknown = [name for name, _ in named_tensors if name not in targets]
        missing = sorted(set(dict(self.model.named_parameters())) - {name for name, _ in named_tensors})
        if unknown or missing:
            raise KeyError(f"weight update does not match the rollout model: unknown {unknown[:5]}, missing {missing[:5]}")
        with self._lock:
            for name, tensor in named_tensors:
                targets[name].copy_(tensor.to(targets[name].dtype))
        return len(named_tensors)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        outputs: list[GenerationOutput] = []
        for start in range(0, len(prompt_ids), self.max_batch_size):
            with self._lock:
                outputs.extend(self._generate_batch(prompt_ids[start : start + self.max_batch_size], params))
        return outputs

    @torch.no_grad()
    def _generate_batch(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("HFGenerationEngine.generate: every prompt needs at least one token")
        batch_size = len(prompt_ids)
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((batch_size, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        stop_ids = torch.tensor(params.stop_token_ids or self.default_stop_ids or (-1,), dtype=torch.long)

        tokens = torch.empty((batch_size, params.max_tokens), dtype=torch.long)
        log_probs = torch.empty((batch_size, params.max_tokens), dtype=torch.float32)
        finished = torch.zeros(batch_size, dtype=torch.bool)
        lengths = torch.full((batch_size,), params.max_tokens, dtype=torch.long)
        stopped = torch.zeros(batch_size, dtype=torch.bool)

        past_key_values = None
        step_input = input_ids
        for step in range(params.max_tokens):
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_input.shape[1] :]
            out = self.model(
                input_ids=step_input,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=True,
            )
            past_key_values = out.past_key_values
            next_token, next_log_prob = self._sample(out.logits[:, -1, :].float(), params)
            # Finished rows keep emitting padding; their outputs are cut at `lengths` below.
            next_token = torch.where(finished, torch.full_like(next_token, self.pad_token_id), next_token)
            tokens[:, step] = next_token
            log_probs[:, step] = next_log_prob
            hit_stop = torch.isin(next_token, stop_ids) & ~finished
            lengths = torch.where(hit_stop, torch.full_like(lengths, step + 1), lengths)
            stopped |= hit_stop
            finished |= hit_stop
            if bool(finished.all()):
                break
            step_input = next_token[:, None]
            attention_mask = torch.cat([attention_mask, (~finished).long()[:, None]], dim=1)

        results = []
        for row in range(batch_size):
            n = int(lengths[row])
            results.append(
                GenerationOutput(
                    token_ids=tokens[row, :n].tolist(),
                    log_probs=log_probs[row, :n].tolist() if params.logprobs else None,
                    finish_reason="stop" if bool(stopped[row]) else "length",
                )
            )
        return results

    def _sample(self, logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        if params.temperature == 0:
            log_probs = logits.log_softmax(dim=-1)
            token = logits.argmax(dim=-1)
        else:
            scaled = logits / params.temperature
            log_probs = scaled.log_softmax(dim=-1)
            filtered = filter_top_k_top_p(scaled, params.top_k, params.top_p)
            token = torch.multinomial(filtered.softmax(dim=-1), 1, generator=self.generator).squeeze(-1)
        return token, log_probs.gather(-1, token[:, None]).squeeze(-1)
