"""A warm-started tiny reasoner: a tiny Qwen2 taught chain arithmetic by supervised learning.

The paper starts RL from a model that already reasons in its format and solves some questions.
This builds the miniature of that: a tiny Qwen2 (digits tokenised one by one, prompts ending
with `<think>\\n`) trained on worked solutions from the warm-up half of the task, a share of them
imperfect (one step off, the error carried to the answer), with more easy than hard questions.
How long it trains sets how strong it starts: `STRENGTHS` names the step counts used by the
miniature study (weak / medium / strong).

Training is deterministic within one environment (seeded data order and initialisation, one
thread pool size), not across machines: the same spec rebuilt on a fresh 2-core VM and venv held
out .363 where the miniature study's first machine had .311 (float kernels and unpinned library
versions differ, and 500 supervised steps amplify small differences). So the study's starts
(`STRENGTHS`, default spec) are not trained but shipped: their weights (~2 MB each) sit in
`shipped_warm_starts/` beside this file, listed with their sha256 in its manifest, and are
installed into the cache after the hash check; every machine starts from the same bytes. Other
specs are trained here. A start is cached by a hash of everything that defines it, and written
atomically, so a second call returns at once:

    python -m exgrpo_verl.tasks.warm_start --strength medium
    python -m exgrpo_verl.tasks.warm_start --ship      # maintainers: train the study's starts, ship them
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from exgrpo_verl.tasks.arithmetic import ArithmeticTask, draw_questions, prompt_messages, sample_question, solution
from exgrpo_verl.tiny_models import TinyModelSpec, build_tiny_model, default_cache_dir, write_folder_atomically

BUILD_VERSION = 1
_READY_MARKER = "exgrpo_warm_start.json"
SHIPPED_DIR = Path(__file__).with_name("shipped_warm_starts")
_MANIFEST = "manifest.json"
# The base model's files a shipped start takes as they are (all but the weights are text built
# from the spec, identical on every machine).
_BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def reasoner_model_spec(seed: int = 0) -> TinyModelSpec:
    """The miniature's model: ~0.5M parameters, digit-split tokenizer, `<think>\\n` prompts, only the
    real EOS stops generation (a trained model ends its own answers)."""
    return TinyModelSpec(
        family="qwen2", seed=seed, hidden_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
        intermediate_size=384, extra_stop_tokens=0, split_digits=True, generation_prompt_suffix="<think>\n",
    )


@dataclass(frozen=True)
class WarmStartSpec:
    """steps: supervised steps (sets the start's strength). level_mix: share of each level in the
    data. error_rate: share of traces with one wrong step."""

    steps: int = 500
    task: ArithmeticTask = field(default_factory=ArithmeticTask)
    model: TinyModelSpec = field(default_factory=reasoner_model_spec)
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    level_mix: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    error_rate: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if len(self.level_mix) != len(self.task.levels) or abs(sum(self.level_mix) - 1) > 1e-6:
            raise ValueError(
                f"WarmStartSpec.level_mix={self.level_mix!r}: needs one share per task level ({len(self.task.levels)}), summing to 1"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"WarmStartSpec: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")

    def digest(self) -> str:
        payload = {"build_version": BUILD_VERSION, **asdict(self)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# Supervised steps for each start strength. Pass@1 at temperature 1 on 200 reserved-half questions x 4
# (`--measure`): 300 steps .06 (L1-L4 .08/.07/.05/.04), 500 steps .31 (.54/.35/.25/.10), 700 steps .50
# (.75/.57/.44/.26); the window is narrow (400 steps: .21, 900: .65).
STRENGTHS = {"weak": 300, "medium": 500, "strong": 700}


def warm_start(spec: WarmStartSpec, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The warm-started model folder for `spec`, trained now unless it is cached."""
    return warm_starts(spec, [spec.steps], cache_dir, progress)[spec.steps]


def warm_starts(spec: WarmStartSpec, steps: list[int], cache_dir=None, progress: bool = True,
                shipped_dir: Path | None = SHIPPED_DIR) -> dict[int, Path]:
    """Models after each of `steps` supervised steps: the shipped weights where `shipped_dir` has
    them (hash-checked), the rest from one training run (the learning rate is constant after
    warm-up, so a prefix of a longer run is the shorter run)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir().parent / "warm_starts"
    shipped = shipped_starts(shipped_dir)
    folders = {n: cache_dir / f"reasoner-{replace(spec, steps=n).digest()}" for n in steps}
    missing = []
    for n, folder in sorted(folders.items()):
        entry = shipped.get(replace(spec, steps=n).digest())
        if _is_ready(folder, replace(spec, steps=n), entry):
            continue
        if entry is None:
            missing.append(n)
        else:
            _install_shipped(replace(spec, steps=n), folder, shipped_dir / entry["weights"], entry["weights_sha256"])
    if missing:
        _train(replace(spec, steps=max(missing)), {n: folders[n] for n in missing}, progress)
    return folders


def shipped_starts(shipped_dir: Path | None) -> dict[str, dict]:
    """{spec digest: manifest entry} of the starts shipped in `shipped_dir` (none without one)."""
    manifest = Path(shipped_dir) / _MANIFEST if shipped_dir else None
    return json.loads(manifest.read_text()) if manifest and manifest.exists() else {}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _is_ready(folder: Path, spec: WarmStartSpec, shipped_entry: dict | None = None) -> bool:
    """The cached folder holds this spec's start; for a shipped spec, the shipped bytes (a start
    trained here before the weights were shipped is replaced)."""
    marker = folder / _READY_MARKER
    if not marker.exists():
        return False
    info = json.loads(marker.read_text())
    if info.get("digest") != spec.digest():
        return False
    return shipped_entry is None or info.get("weights_sha256") == shipped_entry["weights_sha256"]


def _install_shipped(spec: WarmStartSpec, folder: Path, weights: Path, sha256: str) -> None:
    """The shipped start in `folder`: the base model's text files (tokenizer, configs) with the
    shipped weights, refused unless their sha256 is the manifest's."""
    actual = file_sha256(weights) if weights.exists() else "missing"
    if actual != sha256:
        raise ValueError(
            f"{weights}: sha256 {actual}, the manifest ({weights.parent / _MANIFEST}) lists {sha256}; the shipped "
            "warm start is damaged: reinstall exgrpo-verl (or restore the file from git)"
        )
    base = build_tiny_model(spec.model)

    def fill(staging: Path) -> None:
        for name in _BASE_FILES:
            shutil.copy(base / name, staging / name)
        shutil.copy(weights, staging / "model.safetensors")
        info = {"digest": spec.digest(), "spec": asdict(spec), "source": "shipped", "weights_sha256": sha256}
        (staging / _READY_MARKER).write_text(json.dumps(info, indent=2))

    write_folder_atomically(folder, fill)


def supervised_example(tokenizer, task: ArithmeticTask, rng: random.Random, level_mix, error_rate: float) -> tuple[list[int], int]:
    """(token ids of prompt + worked solution + EOS, prompt length) for one warm-up-half question."""
    from exgrpo_verl.tasks.arithmetic import in_reserved_half

    level = rng.choices(range(1, len(task.levels) + 1), weights=level_mix)[0]
    question = sample_question(task, level, rng)
    while in_reserved_half(question.expression):
        question = sample_question(task, level, rng)
    error_step = rng.randrange(len(question.steps)) if rng.random() < error_rate else None
    text = solution(question, error_step, rng.choice((-2, -1, 1, 2)))
    prompt = tokenizer.apply_chat_template(prompt_messages(question), add_generation_prompt=True, tokenize=True, return_dict=False)
    response = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return list(prompt) + response, len(prompt)


def _train(spec: WarmStartSpec, save_at: dict[int, Path], progress: bool) -> None:
    import torch
    from transformers import AutoTokenizer

    base = build_tiny_model(spec.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    # One thread: the result does not depend on the machine's core count or thread settings
    # (matrices this small gain nothing from more, and a busy machine loses a lot).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_steps(spec, base, tokenizer, save_at, progress)
    finally:
        torch.set_num_threads(threads)


def _train_steps(spec: WarmStartSpec, base: Path, tokenizer, save_at: dict[int, Path], progress: bool) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / spec.warmup_steps))
    rng = random.Random(spec.seed)
    started = time.perf_counter()
    bar = tqdm(range(1, spec.steps + 1), desc="warm start (supervised)", disable=not progress, mininterval=2)
    for step in bar:
        batch = [supervised_example(tokenizer, spec.task, rng, spec.level_mix, spec.error_rate) for _ in range(spec.batch_size)]
        input_ids, labels, attention = _collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step in save_at:
            _save(model, tokenizer, base, save_at[step], replace(spec, steps=step), time.perf_counter() - started)


def _collate(batch, pad_id: int):
    """Right-padded ids, labels with the prompt and padding masked (-100), attention mask."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        attention[row, : len(ids)] = 1
    return input_ids, labels, attention


def _save(model, tokenizer, base: Path, folder: Path, spec: WarmStartSpec, seconds: float) -> None:
    def fill(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name in ("generation_config.json", "tokenizer_config.json"):  # the base's EOS list and tokenizer class
            shutil.copy(base / name, staging / name)
        info = {"digest": spec.digest(), "spec": asdict(spec), "train_seconds": round(seconds, 1),
                "weights_sha256": file_sha256(staging / "model.safetensors")}
        (staging / _READY_MARKER).write_text(json.dumps(info, indent=2))

    write_folder_atomically(folder, fill)


def ship(spec: WarmStartSpec, steps: list[int], shipped_dir: Path = SHIPPED_DIR) -> dict[str, dict]:
    """Train the starts after `steps` here (fresh, in a temporary cache) and write their weights
    and manifest into `shipped_dir`: what every later `warm_starts` call on any machine installs."""
    import tempfile

    shipped_dir.mkdir(parents=True, exist_ok=True)
    manifest = shipped_starts(shipped_dir)
    with tempfile.TemporaryDirectory() as cache:
        for n, folder in warm_starts(spec, steps, cache, shipped_dir=None).items():
            name = f"reasoner-{replace(spec, steps=n).digest()}.safetensors"
            shutil.copyfile(folder / "model.safetensors", shipped_dir / name)
            manifest[replace(spec, steps=n).digest()] = {"steps": n, "weights": name, "weights_sha256": file_sha256(shipped_dir / name)}
    (shipped_dir / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def solve_rates(model_path: str | Path, task: ArithmeticTask, per_level: int = 50, samples: int = 4, seed: int = 7) -> dict[str, float]:
    """Pass@1 at temperature 1 on reserved-half questions, per level and overall, with the
    release's reward."""
    from exgrpo_verl.evaluation.generation import generate
    from exgrpo_verl.reward import release_reward

    questions = draw_questions(task, per_level, seed=seed, reserved=True)
    responses = generate(str(model_path), [prompt_messages(q) for q in questions], n=samples, temperature=1.0, max_tokens=64, backend="hf", batch_size=128, seed=seed)
    by_level: dict[int, list[float]] = {}
    for question, outs in zip(questions, responses):
        by_level.setdefault(question.level, []).extend(release_reward(out.text, str(question.answer)) for out in outs)
    rates = {f"L{level}": sum(v) / len(v) for level, v in sorted(by_level.items())}
    rates["overall"] = sum(sum(v) for v in by_level.values()) / sum(len(v) for v in by_level.values())
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strength", choices=sorted(STRENGTHS), default="medium")
    parser.add_argument("--steps", type=int, nargs="*", help="supervised step counts instead of --strength (one run, saved at each)")
    parser.add_argument("--measure", action="store_true", help="print solve rates at temperature 1 after training")
    parser.add_argument("--ship", action="store_true", help=f"train every STRENGTHS start here and write them to {SHIPPED_DIR}")
    args = parser.parse_args(argv)
    if args.ship:
        print(json.dumps(ship(WarmStartSpec(), sorted(STRENGTHS.values())), indent=2))
        return
    steps = args.steps or [STRENGTHS[args.strength]]
    folders = warm_starts(WarmStartSpec(steps=max(steps)), steps)
    for n, folder in sorted(folders.items()):
        rates = solve_rates(folder, ArithmeticTask()) if args.measure else {}
        print(json.dumps({"steps": n, "path": str(folder), **{k: round(v, 3) for k, v in rates.items()}}), flush=True)


if __name__ == "__main__":
    main()
