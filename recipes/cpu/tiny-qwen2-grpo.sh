#!/usr/bin/env bash
# The on-policy GRPO twin of tiny-qwen2.sh: the same settings with replay off (exgrpo.replay_ratio=0).
# Usage: [VAR=value ...] bash recipes/cpu/tiny-qwen2-grpo.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
run_recipe grpo "$@"
