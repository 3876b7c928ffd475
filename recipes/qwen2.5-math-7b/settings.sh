# Qwen2.5-Math-7B, zero RL from the base model: the paper's main run, 1 node x 8 GPUs.
# Sourced by exgrpo.sh and grpo.sh; shared settings in ../common.sh, sources in docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE=qwen2.5-math-7b
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-Math-7B}"
# A 4096-token context cannot hold 1024 + 8192 tokens: train the authors' 16k extension.
EXTEND_CONTEXT="${EXTEND_CONTEXT:-1}"
