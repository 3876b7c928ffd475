"""The CPU generation engine: log-probs, sampling filters, stopping, batching, weight loading."""

import pytest
import torch

from exgrpo_verl.hf_generation import HFGenerationEngine, SamplingParams, filter_top_k_top_p


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    return HFGenerationEngine(str(tiny_qwen2), seed=0)


def _prompts(engine, count):
    tok = engine.tokenizer
    return [
        tok.apply_chat_template([{"role": "user", "content": "x" * (i + 1)}], add_generation_prompt=True, tokenize=True)["input_ids"]
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def tiny_llama_engine(tmp_path_factory):
    from exgrpo_verl.tiny_models import TinyModelSpec, build_tiny_model

    return HFGenerationEngine(str(build_tiny_model(TinyModelSpec(family="llama"), tmp_path_factory.mktemp("llama") / "m")))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_log_probs_match_a_full_forward_pass_for_left_padded_batches(family, request):
    engine = request.getfixturevalue("engine" if family == "qwen2" else "tiny_llama_engine")
    prompts = _prompts(engine, 6)  # different lengths: exercises left padding and positions
    for temperature in (1.0, 0.7):
        outputs = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=temperature, logprobs=True))
        for prompt, output in zip(prompts, outputs):
            ids = torch.tensor([prompt + output.token_ids])
            with torch.no_grad():
                logits = engine.model(ids).logits[0, len(prompt) - 1 : -1] / temperature
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(output.token_ids)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(output.log_probs), expected, atol=1e-5)


def test_greedy_batched_equals_one_at_a_time(engine):
    prompts = _prompts(engine, 5)
    params = SamplingParams(max_tokens=10, temperature=0)
    batched = [o.token_ids for o in engine.generate(prompts, params)]
    single = [engine.generate([p], params)[0].token_ids for p in prompts]
    assert batched == single


def test_stop_tokens_end_a_sequence_and_are_kept(engine):
    prompt = _prompts(engine, 1)[0]
    free = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=0, stop_token_ids=(-5,)))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    stop = free.token_ids[3]
    first = free.token_ids.index(stop)
    stopped = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=0, stop_token_ids=(stop,)))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: first + 1]


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logits, top_k=2, top_p=1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_top_k_top_p(logits, top_k=-1, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    kept = ~torch.isinf(filter_top_k_top_p(logits, top_k=-1, top_p=0.1))
    assert kept.tolist() == [[True, False, False, False]]  # the top token always stays


def test_top_k_one_samples_the_argmax(engine):
    prompts = _prompts(engine, 3)
    greedy = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0))
    top1 = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=1.0, top_k=1))
    assert [o.token_ids for o in greedy] == [o.token_ids for o in top1]


def test_load_weights_changes_outputs_and_rejects_unknown_or_missing_names(tiny_qwen2):
    engine = HFGenerationEngine(str(tiny_qwen2))
    prompt = _prompts(engine, 1)[0]
    before = engine.generate([prompt], SamplingParams(max_tokens=6, temperature=0, logprobs=True))[0]
    update = {name: value.clone() for name, value in engine.model.named_parameters()}
    update["lm_head.weight"] = torch.randn_like(update["lm_head.weight"])
    assert engine.load_weights(update.items()) == len(update)
    assert torch.equal(engine.model.lm_head.weight, update["lm_head.weight"])
    after = engine.generate([prompt], SamplingParams(max_tokens=6, temperature=0, logprobs=True))[0]
    assert after.log_probs != before.log_probs
    with pytest.raises(KeyError, match=r"unknown \['model.not_a_layer.weight'\]"):
        engine.load_weights([*update.items(), ("model.not_a_layer.weight", update["lm_head.weight"])])
    with pytest.raises(KeyError, match=r"missing \['lm_head.weight'\]"):
        engine.load_weights([(name, value) for name, value in update.items() if name != "lm_head.weight"])
    assert torch.equal(engine.model.lm_head.weight, update["lm_head.weight"]), "a refused update changes nothing"


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(max_tokens=4, temperature=-1), dict(max_tokens=4, top_p=0)])
def test_bad_sampling_params_name_the_field(bad):
    field = next(k for k in bad if k != "max_tokens") if len(bad) > 1 else "max_tokens"
    with pytest.raises(ValueError, match=field):
        SamplingParams(**bad)


def test_eos_token_ids_joins_the_tokenizer_and_the_generation_config(engine):
    from transformers import GenerationConfig

    from exgrpo_verl.hf_generation import eos_token_ids

    tokenizer = engine.tokenizer
    eos = tokenizer.eos_token_id
    assert eos_token_ids(tokenizer) == (eos,)
    assert eos_token_ids(tokenizer, GenerationConfig(eos_token_id=[eos + 1, eos, 3])) == tuple(sorted({3, eos, eos + 1}))
    assert eos_token_ids(tokenizer, GenerationConfig(eos_token_id=7)) == tuple(sorted({7, eos}))
    assert engine.default_stop_ids == eos_token_ids(tokenizer, engine.model.generation_config)
