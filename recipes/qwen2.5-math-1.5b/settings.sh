# Qwen2.5-Math-1.5B, zero RL from the base model, 1 node x 8 GPUs.
# Sourced by exgrpo.sh and grpo.sh; shared settings in ../common.sh, sources in docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE=qwen2.5-math-1.5b
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-Math-1.5B}"
# Same 4096-token context as the 7B: the same two edits as the authors' 7B (16k context and the
# `<think>` chat template; "other Qwen backbones follow the same prompt template", their README).
EXTEND_CONTEXT="${EXTEND_CONTEXT:-1}"
CHAT_TEMPLATE="${CHAT_TEMPLATE:-$RECIPES_DIR/templates/qwen2.5-math-think.jinja}"
# 1.5B fits one GPU for generation; eight vLLM replicas beat four of TP 2.
ROLLOUT_TP="${ROLLOUT_TP:-1}"
