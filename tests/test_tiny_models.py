import json

import torch
import transformers

from exgrpo_verl.tiny_models import TinyModelSpec, build_tiny_model


def test_build_is_deterministic_cached_and_loads_as_its_family(tmp_path):
    for family, tokenizer_name, config_name in (("qwen2", "Qwen2Tokenizer", "Qwen2Config"), ("llama", None, "LlamaConfig")):
        first = build_tiny_model(TinyModelSpec(family=family, seed=3), tmp_path / f"{family}-a")
        second = build_tiny_model(TinyModelSpec(family=family, seed=3), tmp_path / f"{family}-b")
        weights_a = transformers.AutoModelForCausalLM.from_pretrained(first).state_dict()
        weights_b = transformers.AutoModelForCausalLM.from_pretrained(second).state_dict()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
        assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
        assert type(transformers.AutoConfig.from_pretrained(first)).__name__ == config_name

        mtime = (first / "model.safetensors").stat().st_mtime_ns
        assert build_tiny_model(TinyModelSpec(family=family, seed=3), first) == first
        assert (first / "model.safetensors").stat().st_mtime_ns == mtime, "a cached build must not be rewritten"

        tokenizer = transformers.AutoTokenizer.from_pretrained(first)
        if tokenizer_name:
            assert type(tokenizer).__name__ == tokenizer_name
        assert tokenizer.encode("\n", add_special_tokens=False) == [tokenizer.encode("\n", add_special_tokens=False)[0]]
        text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text, "byte-level BPE must round-trip the chat text"
        assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None


def test_other_seed_gives_other_weights(tmp_path):
    a = build_tiny_model(TinyModelSpec(seed=0), tmp_path / "a")
    b = build_tiny_model(TinyModelSpec(seed=1), tmp_path / "b")
    wa = transformers.AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = transformers.AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert not torch.equal(wa["model.embed_tokens.weight"], wb["model.embed_tokens.weight"])


def test_refuses_to_overwrite_a_foreign_folder_and_rebuilds_a_stale_one(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    try:
        build_tiny_model(TinyModelSpec(), foreign)
    except FileExistsError as error:
        assert "not a tiny model" in str(error)
    else:
        raise AssertionError("expected FileExistsError")
    assert (foreign / "notes.txt").read_text() == "mine"

    built = build_tiny_model(TinyModelSpec(hidden_size=64), tmp_path / "m")
    marker = built / "exgrpo_tiny_model.json"
    spec = json.loads(marker.read_text())
    spec["hidden_size"] = 32  # as if built by another spec
    marker.write_text(json.dumps(spec))
    build_tiny_model(TinyModelSpec(hidden_size=64), built)
    assert json.loads(marker.read_text())["hidden_size"] == 64
