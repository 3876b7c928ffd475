# Llama-3.1-8B-Instruct, 1 node x 8 GPUs.
# Sourced by exgrpo.sh and grpo.sh; shared settings in ../common.sh, sources in docs/recipes.md.
# Gated on Hugging Face: accept Meta's licence and `huggingface-cli login` first.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE=llama3.1-8b-instruct
MODEL_PATH="${MODEL_PATH:-meta-llama/Llama-3.1-8B-Instruct}"
