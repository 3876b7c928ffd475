#!/usr/bin/env bash
# ExGRPO for the model in settings.sh. Usage: [VAR=value ...] bash exgrpo.sh [hydra overrides...]
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
run_recipe exgrpo "$@"
