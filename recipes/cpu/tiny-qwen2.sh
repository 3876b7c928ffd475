#!/usr/bin/env bash
# ExGRPO on the CPU: tiny Qwen2, toy task, a few steps (settings.sh). No GPU, no downloads.
# Usage: [VAR=value ...] bash recipes/cpu/tiny-qwen2.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
run_recipe exgrpo "$@"
