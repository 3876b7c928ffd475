"""Write a copy of a model whose config.json has a longer context; weights are symlinked, not copied.

Qwen2.5-Math-1.5B / -7B ship with a 4096-token context (max_position_embeddings 4096,
rope_theta 10000), too short for the release's 1024-token prompts and 8192-token responses.
The LUFFY / ExGRPO authors edited the model's config.json to rope_theta 40000 and
max_position_embeddings 16384 (following OpenR1; LUFFY issue #9). This tool does the same
edit into a new folder: config.json rewritten, every other file a symlink into the source
(a local folder, or the Hugging Face cache after a download), so both verl's FSDP actor and
vLLM load the extended model from one path.

    python recipes/tools/extend_context.py --model Qwen/Qwen2.5-Math-7B \\
        --out outputs/models/Qwen2.5-Math-7B-rope40000-ctx16384 \\
        --chat-template recipes/templates/qwen2.5-math-think.jinja

`--chat-template` also gives the copy the release's chat template, whose rendered prompt ends
with `<think>\n` (the authors' Elliott/Qwen2.5-Math-7B-16k-think has both edits): the
tokenizer's files that hold a template (tokenizer_config.json, chat_template.jinja) are then
written, not linked.

Multi-node runs: every node loads the model from this path, and the symlinks point into
this machine's cache, so put --out and HF_HOME on shared storage (or run the tool on each node).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def resolve_source(model: str) -> Path:
    """A local model folder as is; anything else is a Hugging Face id, downloaded (or found) in the cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=model)).resolve()


def extended_config(config: dict, rope_theta: float, max_position_embeddings: int) -> dict:
    """The config with the new RoPE base and context length. Newer transformers save the RoPE base
    inside `rope_parameters`; older configs (Qwen2.5-Math's) at the top level; set wherever it is."""
    config = json.loads(json.dumps(config))
    config["max_position_embeddings"] = max_position_embeddings
    rope_parameters = config.get("rope_parameters")
    if isinstance(rope_parameters, dict) and "rope_theta" in rope_parameters:
        rope_parameters["rope_theta"] = rope_theta
    if "rope_theta" in config or not isinstance(rope_parameters, dict):
        config["rope_theta"] = rope_theta
    return config


TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja")


def extend_context(
    source: Path, out: Path, rope_theta: float, max_position_embeddings: int, chat_template: str | None = None
) -> Path:
    source, out = source.resolve(), out.expanduser().resolve()
    if out == source:
        raise ValueError(f"--out {out} is the source model folder; choose a new folder")
    config_path = source / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{source} has no config.json: not a Hugging Face model folder")
    out.mkdir(parents=True, exist_ok=True)
    written = {"config.json"} | (set(TEMPLATE_FILES) if chat_template is not None else set())
    for entry in sorted(source.iterdir()):
        link = out / entry.name
        if link.is_symlink():
            link.unlink()  # re-running replaces the links (the source may have moved)
        elif link.exists() and entry.name not in written:
            raise FileExistsError(f"{link} exists and is not a link from an earlier run; use an empty --out")
        if entry.name not in written:
            link.symlink_to(entry.resolve())
    config = extended_config(json.loads(config_path.read_text()), rope_theta, max_position_embeddings)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if chat_template is not None:
        write_chat_template(source, out, chat_template)
    return out


def write_chat_template(source: Path, out: Path, chat_template: str) -> None:
    """The source's tokenizer_config.json with `chat_template` replaced, and the same template in
    chat_template.jinja (transformers reads that file first when it exists)."""
    tokenizer_config_path = source / "tokenizer_config.json"
    if not tokenizer_config_path.is_file():
        raise FileNotFoundError(f"{source} has no tokenizer_config.json: cannot set --chat-template")
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").write_text(chat_template)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hugging Face id")
    parser.add_argument("--out", required=True, type=Path, help="folder to write")
    parser.add_argument("--rope-theta", type=float, default=40000.0)
    parser.add_argument("--max-position-embeddings", type=int, default=16384)
    parser.add_argument("--chat-template", type=Path, help="jinja file: the copy's chat template (default: the source's)")
    args = parser.parse_args(argv)
    rope_theta = int(args.rope_theta) if args.rope_theta.is_integer() else args.rope_theta  # as configs write it
    chat_template = args.chat_template.read_text().rstrip("\n") if args.chat_template else None
    out = extend_context(resolve_source(args.model), args.out, rope_theta, args.max_position_embeddings, chat_template)
    print(out)


if __name__ == "__main__":
    main()
