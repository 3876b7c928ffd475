"""Tiny Qwen2 / Llama models with a byte-level BPE tokenizer, built locally from a seed.

No model hub is reachable on our development and CI machines, so tests and the CPU demo
build their models here: random weights from a config, a tokenizer trained on a small
generated corpus, and the family's chat template, saved as an ordinary Hugging Face
folder that verl, transformers and vLLM load like any other.

The build is deterministic in (family, seed, size) and cached: a second call with the same
arguments returns the existing folder at once.

    python -m exgrpo_verl.tiny_models --family qwen2 --out /tmp/tiny-qwen2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the build changes, so cached folders from an older build are not reused.
BUILD_VERSION = 2
_READY_MARKER = "exgrpo_tiny_model.json"

QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA_CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny model. Defaults give ~0.1M parameters: a training step takes ~1 s on CPU."""

    family: str = "qwen2"  # "qwen2" or "llama"
    seed: int = 0
    vocab_merges: int = 200  # BPE merges on top of the 256 byte symbols
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    # An untrained model almost never samples its one EOS token, so its answers would all be
    # cut at max length. The generation config lists this many extra stop tokens (BPE merges),
    # which ends ~1 in 10 random tokens: short, complete answers, as a trained model gives.
    extra_stop_tokens: int = 40
    # Qwen2's own pre-tokenizer splits numbers into single digits; arithmetic needs that (merged
    # multi-digit tokens make carrying much harder for a tiny model).
    split_digits: bool = False
    # Text the chat template appends after the assistant header, e.g. "<think>\n": the authors'
    # backbone renders prompts ending with it, and the release's reward assumes it.
    generation_prompt_suffix: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"TinyModelSpec.family={self.family!r}: expected one of {sorted(FAMILIES)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                "TinyModelSpec: hidden_size must be divisible by num_heads, and num_heads by num_kv_heads "
                f"(got {self.hidden_size}, {self.num_heads}, {self.num_kv_heads})"
            )


@dataclass(frozen=True)
class _Family:
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    chat_template: str
    config_class: str  # transformers config class name
    tokenizer_class: str


FAMILIES = {
    "qwen2": _Family(
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=QWEN2_CHAT_TEMPLATE,
        config_class="Qwen2Config",
        tokenizer_class="Qwen2Tokenizer",
    ),
    "llama": _Family(
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        chat_template=LLAMA_CHAT_TEMPLATE,
        config_class="LlamaConfig",
        tokenizer_class="PreTrainedTokenizerFast",
    ),
}

# For vLLM's CPU build (`make vllm-venv`): its CPU attention accepts only some head sizes (the
# miniature's 96 / 4 = 24 is refused: "Unsupported CPU attention configuration: head_dim=24");
# 64 hidden / 2 heads = 32 runs.
VLLM_CPU_QWEN2 = TinyModelSpec(family="qwen2", num_heads=2, num_kv_heads=2)


def default_cache_dir() -> Path:
    return Path(os.environ.get("EXGRPO_TINY_MODEL_CACHE", Path.home() / ".cache" / "exgrpo_verl" / "tiny_models"))


def _training_corpus(seed: int, lines: int = 3000) -> list[str]:
    """Text resembling our prompts and answers: words, numbers, LaTeX, think tags, newlines."""
    rng = random.Random(seed)
    words = (
        "the answer is let we find compute solve number sum product of and so therefore question "
        "think step first then value equals total each find integer prime even odd digit letter"
    ).split()
    pieces = ["\\boxed{", "}", "</think>", "<think>", "\\frac{", "^2", "+", "-", "=", "(", ")", ".", ",", ":", "?"]
    corpus = []
    for _ in range(lines):
        tokens = []
        for _ in range(rng.randint(4, 16)):
            kind = rng.random()
            if kind < 0.55:
                tokens.append(rng.choice(words))
            elif kind < 0.8:
                tokens.append(str(rng.randint(0, 999)))
            else:
                tokens.append(rng.choice(pieces))
        corpus.append(" ".join(tokens) + ("\n" if rng.random() < 0.5 else ""))
    return corpus


def _build_tokenizer(spec: TinyModelSpec, family: _Family):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Byte-level BPE keeps "\n" one token, which transformers' Qwen2Tokenizer checks on load.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if spec.split_digits:
        digits = pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(family.special_tokens) + spec.vocab_merges,
        special_tokens=list(family.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(spec.seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        chat_template=_chat_template(family, spec.generation_prompt_suffix),
    )


def _chat_template(family: _Family, generation_prompt_suffix: str) -> str:
    if not generation_prompt_suffix:
        return family.chat_template
    # Append the suffix inside the add_generation_prompt branch (the template's last `{% endif %}`).
    head, endif = family.chat_template.rsplit("{% endif %}", 1)
    return head + "{{ " + json.dumps(generation_prompt_suffix) + " }}{% endif %}" + endif


def _build_model(spec: TinyModelSpec, family: _Family, tokenizer):
    import torch
    import transformers

    config_class = getattr(transformers, family.config_class)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    first_merge = 256 + len(family.special_tokens)
    merges = range(first_merge, len(tokenizer))
    step = max(1, len(merges) // max(spec.extra_stop_tokens, 1))
    stop_tokens = list(merges[::step][: spec.extra_stop_tokens])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, *stop_tokens]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny_model(spec: TinyModelSpec | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """Build (or reuse) a tiny model folder and return its path.

    The folder is written under a temporary name and renamed into place, so a crash or a
    concurrent build never leaves a half-written model that a later call would reuse.
    """
    spec = spec or TinyModelSpec()
    family = FAMILIES[spec.family]
    expected = {"build_version": BUILD_VERSION, **asdict(spec)}
    if out_dir is None:
        digest = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:10]
        out_dir = default_cache_dir() / f"{spec.family}-seed{spec.seed}-h{spec.hidden_size}-l{spec.num_layers}-{digest}"
    out_dir = Path(out_dir)
    marker = out_dir / _READY_MARKER
    if marker.exists() and json.loads(marker.read_text()) == expected:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.exists():
        raise FileExistsError(f"{out_dir} exists and is not a tiny model built by exgrpo_verl; choose another out_dir")

    tokenizer = _build_tokenizer(spec, family)
    model = _build_model(spec, family, tokenizer)

    def fill(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _set_tokenizer_class(staging, family.tokenizer_class)
        (staging / _READY_MARKER).write_text(json.dumps(expected, indent=2))

    write_folder_atomically(out_dir, fill)
    return out_dir


def write_folder_atomically(folder: Path, fill) -> None:
    """Write `folder` by calling fill(staging) on a temporary sibling and renaming it into place,
    so a crash or a concurrent writer never leaves a half-written folder that looks complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _set_tokenizer_class(folder: Path, tokenizer_class: str) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = tokenizer_class
    path.write_text(json.dumps(config, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2", choices=sorted(FAMILIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default: the cache)")
    args = parser.parse_args(argv)
    print(build_tiny_model(TinyModelSpec(family=args.family, seed=args.seed), args.out))


if __name__ == "__main__":
    main()
