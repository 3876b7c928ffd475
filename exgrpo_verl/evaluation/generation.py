"""Sample n responses per prompt: vLLM's offline `LLM` when vLLM imports, else the CPU engine.

The CPU engine (`exgrpo_verl.hf_generation`) is imported only when vLLM is missing (or
asked for with backend="hf"), so a GPU machine never loads it. Both paths take prompts as token
ids (chat messages are rendered with the model's own chat template first) and decode responses
the way verl's reward loop does: `tokenizer.decode(ids, skip_special_tokens=True)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from numbers import Integral
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Response:
    text: str
    num_tokens: int  # generated tokens, the stop token included
    finish_reason: str  # "stop" (a stop token) or "length" (hit max_tokens)


def vllm_import_error() -> str | None:
    """Why `import vllm` fails here ("<type>: <message>"), or None when it imports."""
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def vllm_available() -> bool:
    return vllm_import_error() is None


LARGE_MODEL_PARAMETERS = 1e9  # the CPU engine (fp32, no KV-cache paging) is for tiny models
BYTES_PER_PARAMETER = {"float32": 4, "float16": 2, "bfloat16": 2}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_parameters(model_path: str) -> float | None:
    """A local model folder's parameter count, from its weights' size (the sharded-checkpoint
    index's metadata.total_size, else the weight files) over the bytes per parameter of its
    config's torch_dtype; None for a hub id or a folder without weights."""
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        return None
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    per_parameter = BYTES_PER_PARAMETER.get(str(config.get("torch_dtype") or config.get("dtype")), 4)
    total = None
    for index in sorted(folder.glob("*.index.json")):
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if total:
            break
    if not total:
        total = sum(path.stat().st_size for path in folder.iterdir() if path.name.endswith(WEIGHT_SUFFIXES))
    return total / per_parameter if total else None


class CPUFallbackRefused(RuntimeError):
    """backend="auto" found no vLLM and the model is too large for the CPU engine."""


def checked_backend(backend: str, model_path: str) -> str:
    """resolve_backend, refusing the silent CPU fallback for a large model: "auto" without vLLM
    raises CPUFallbackRefused (naming the import error and both fixes) when the model has over
    LARGE_MODEL_PARAMETERS parameters; backend="hf" asks for the CPU engine explicitly."""
    if backend != "auto":
        return resolve_backend(backend)
    error = vllm_import_error()
    if error is None:
        return "vllm"
    parameters = model_parameters(model_path)
    if parameters is not None and parameters > LARGE_MODEL_PARAMETERS:
        raise CPUFallbackRefused(
            f"--backend auto: vLLM does not import here (import vllm: {error}), and the fallback, the CPU engine in "
            f"fp32, would not finish a {parameters / 1e9:.1f}B-parameter model ({model_path}); fix: run on a GPU "
            "machine with vLLM (pip install -e '.[gpu]'), or pass --backend hf to use the CPU engine anyway"
        )
    print(f"evaluate: vLLM does not import ({error}): generating with the CPU engine", flush=True)
    return "hf"


def resolve_backend(backend: str = "auto") -> str:
    """ "auto" -> "vllm" when vLLM imports, else "hf" (the CPU engine)."""
    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend={backend!r}: expected 'auto', 'vllm' or 'hf'")
    if backend == "auto":
        return "vllm" if vllm_available() else "hf"
    return backend


def prompt_token_ids(tokenizer, prompt) -> list[int]:
    """Token ids of one prompt: given as ids, or as chat messages [{role, content}, ...] that are
    rendered with the tokenizer's chat template and the assistant turn opened."""
    items = list(prompt)
    if items and all(isinstance(item, Integral) for item in items):  # numpy ints from parquet included
        return [int(item) for item in items]
    if items and all(isinstance(item, Mapping) for item in items):
        messages = [{"role": message["role"], "content": message["content"]} for message in items]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)
    raise TypeError(
        "prompt must be a non-empty list of token ids or of chat messages {'role': ..., 'content': ...}; "
        f"got {type(prompt).__name__} starting with {items[:1]!r}"
    )


def generate(
    model_path: str,
    prompts: Sequence,
    n: int | Sequence[int] = 1,
    temperature: float = 0.6,
    top_p: float = 1.0,
    max_tokens: int = 8192,
    seed: int = 0,
    backend: str = "auto",
    batch_size: int = 64,
    tensor_parallel_size: int = 1,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
) -> list[list[Response]]:
    """n sampled responses for each prompt (n may differ per prompt), in prompt order.

    prompts: token-id lists or chat-message lists. backend: "auto", "vllm" or "hf" (the CPU
    engine; batch_size prompts per forward pass). tensor_parallel_size and dtype (vLLM's "auto",
    "bfloat16", "float16", "float32") apply to vLLM only; the CPU engine computes in float32.
    gpu_memory_utilization: vLLM's share of accelerator memory (None: vLLM's default); on vLLM's
    CPU build the share of RAM it reserves at start, which it refuses when that much is not free.
    """
    from transformers import AutoTokenizer

    counts = [n] * len(prompts) if isinstance(n, int) else list(n)
    if len(counts) != len(prompts) or any(k < 1 for k in counts):
        raise ValueError(f"n must be an int >= 1 or one int >= 1 per prompt ({len(prompts)} prompts, got {n!r})")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt_ids = [prompt_token_ids(tokenizer, prompt) for prompt in prompts]
    backend = resolve_backend(backend)
    if backend == "vllm":
        sample = _vllm_sampler(model_path, temperature, top_p, max_tokens, seed, tensor_parallel_size, dtype, gpu_memory_utilization)
    else:
        sample = _cpu_sampler(model_path, temperature, top_p, max_tokens, seed, batch_size)
    started = time.perf_counter()
    completions = sample(prompt_ids, counts)
    seconds = time.perf_counter() - started
    print(f"generated {sum(counts)} samples in {seconds:.1f} s: {sum(counts) / seconds:.2f} samples/s ({backend})")
    return [
        [Response(tokenizer.decode(ids, skip_special_tokens=True), len(ids), reason) for ids, reason in per_prompt]
        for per_prompt in completions
    ]


# A sampler maps (prompt ids, samples per prompt) to [[(response ids, finish reason), ...] per prompt].
# Loading the model happens when the sampler is built, so the throughput printed above excludes it.


def _vllm_sampler(model_path, temperature, top_p, max_tokens, seed, tensor_parallel_size, dtype, gpu_memory_utilization):
    from vllm import LLM, SamplingParams

    memory = {} if gpu_memory_utilization is None else {"gpu_memory_utilization": gpu_memory_utilization}
    llm = LLM(model=model_path, seed=seed, tensor_parallel_size=tensor_parallel_size, dtype=dtype, **memory)

    def sample(prompt_ids, counts):
        params = [SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens) for k in counts]
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=True)
        return [[(list(done.token_ids), done.finish_reason) for done in output.outputs] for output in outputs]

    return sample


def _cpu_sampler(model_path, temperature, top_p, max_tokens, seed, batch_size):
    from tqdm import tqdm

    from exgrpo_verl.hf_generation import HFGenerationEngine, SamplingParams

    engine = HFGenerationEngine(model_path, seed=seed, max_batch_size=batch_size)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p)

    def sample(prompt_ids, counts):
        # One row per sample; the engine draws a fresh sample for each copy of a prompt.
        rows = [(index, ids) for index, (ids, k) in enumerate(zip(prompt_ids, counts)) for _ in range(k)]
        completions = [[] for _ in prompt_ids]
        with tqdm(total=len(rows), desc="generating on CPU", unit="sample") as progress:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                for (index, _), output in zip(batch, engine.generate([ids for _, ids in batch], params)):
                    completions[index].append((output.token_ids, output.finish_reason))
                progress.update(len(batch))
        return completions

    return sample
