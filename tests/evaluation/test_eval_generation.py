"""The generation front end: prompt rendering, the CPU engine path, and the vLLM call it would make."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from exgrpo_verl.data import chat_prompt
from exgrpo_verl.evaluation.generation import generate, prompt_token_ids, resolve_backend


def test_prompt_token_ids_renders_chat_messages_with_the_models_template(tiny_qwen2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    messages = chat_prompt("What is 1+1?")
    ids = prompt_token_ids(tokenizer, messages)
    assert tokenizer.decode(ids).endswith("What is 1+1?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_token_ids(tokenizer, ids) == ids
    with pytest.raises(TypeError, match="token ids or of chat messages"):
        prompt_token_ids(tokenizer, "What is 1+1?")


def test_cpu_generation_gives_n_samples_per_prompt_reproducibly(tiny_qwen2):
    prompts = [chat_prompt("What is 1+1?"), chat_prompt("Name a prime.")]
    settings = dict(n=[1, 3], max_tokens=8, temperature=1.0, seed=3, backend="hf", batch_size=2)
    first = generate(str(tiny_qwen2), prompts, **settings)
    assert [len(samples) for samples in first] == [1, 3]
    for response in (r for samples in first for r in samples):
        assert 1 <= response.num_tokens <= 8
        assert response.finish_reason in ("stop", "length")
        assert (response.finish_reason == "length") == (response.num_tokens == 8)
    assert generate(str(tiny_qwen2), prompts, **settings) == first
    assert len({response.text for response in first[1]}) > 1  # three draws, not one repeated


def test_n_must_match_the_prompts(tiny_qwen2):
    with pytest.raises(ValueError, match="one int >= 1 per prompt"):
        generate(str(tiny_qwen2), [[1, 2, 3]], n=[1, 2], backend="hf")


def test_vllm_path_passes_token_ids_and_per_prompt_n(tiny_qwen2, monkeypatch):
    # vLLM cannot run here; a stand-in records the calls the front end makes to vllm.LLM.
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def generate(self, prompts, params, use_tqdm):
            calls["prompts"], calls["params"] = prompts, params
            return [
                SimpleNamespace(outputs=[SimpleNamespace(token_ids=(40, 41), finish_reason="length")] * p.n)
                for p in params
            ]

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=LLM, SamplingParams=SimpleNamespace))
    assert resolve_backend("auto") == "vllm"
    responses = generate(str(tiny_qwen2), [[5, 6, 7], [8]], n=[2, 1], temperature=0.6, top_p=1.0, max_tokens=99, seed=4)
    assert calls["init"] == {"model": str(tiny_qwen2), "seed": 4, "tensor_parallel_size": 1, "dtype": "auto"}
    assert calls["prompts"] == [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [8]}]
    sampling = [(p.n, p.temperature, p.top_p, p.max_tokens) for p in calls["params"]]
    assert sampling == [(2, 0.6, 1.0, 99), (1, 0.6, 1.0, 99)]
    assert [[r.num_tokens for r in samples] for samples in responses] == [[2, 2], [2]]


def test_auto_backend_without_vllm_is_the_cpu_engine(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    assert resolve_backend("auto") == "hf"
    with pytest.raises(ValueError, match="'auto', 'vllm' or 'hf'"):
        resolve_backend("cuda")
