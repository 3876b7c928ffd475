# Continual training from LUFFY-Qwen-Math-7B-Zero (Qwen2.5-Math-7B after LUFFY), 1 node x 8 GPUs.
# Sourced by exgrpo.sh and grpo.sh; shared settings in ../common.sh, sources in docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE=luffy-qwen-math-7b-zero
MODEL_PATH="${MODEL_PATH:-Elliott/LUFFY-Qwen-Math-7B-Zero}"
# LUFFY trained it from the 16k extension of Qwen2.5-Math-7B; the edit makes sure it runs with
# that context here too (a no-op if its released config.json already has these two values).
EXTEND_CONTEXT="${EXTEND_CONTEXT:-1}"
