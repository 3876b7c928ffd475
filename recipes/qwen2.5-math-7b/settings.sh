# Qwen2.5-Math-7B, zero RL from the base model: the paper's main run, 1 node x 8 GPUs.
# Sourced by exgrpo.sh and grpo.sh; shared settings in ../common.sh, sources in docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE=qwen2.5-math-7b
# The backbone the release trained: Qwen2.5-Math-7B with a 16k context (rope_theta 40000) and a
# chat template whose prompt ends with `<think>\n`, which the release's reward assumes.
MODEL_PATH="${MODEL_PATH:-Elliott/Qwen2.5-Math-7B-16k-think}"
EXTEND_CONTEXT="${EXTEND_CONTEXT:-0}"
# Fallback, the same two edits made here to the base model (docs/recipes.md):
#   EXTEND_CONTEXT=1 MODEL_PATH=Qwen/Qwen2.5-Math-7B bash recipes/qwen2.5-math-7b/exgrpo.sh
CHAT_TEMPLATE="${CHAT_TEMPLATE:-$RECIPES_DIR/templates/qwen2.5-math-think.jinja}"
