#!/usr/bin/env bash
# The on-policy GRPO baseline: exgrpo.sh's settings with replay off (exgrpo.replay_ratio=0).
# Usage: [VAR=value ...] bash grpo.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
run_recipe grpo "$@"
