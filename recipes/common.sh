# Shared by every recipe; sourced by each recipe folder's settings.sh, never run on its own.
#
#   bash recipes/<model>/exgrpo.sh [hydra overrides...]    # ExGRPO
#   bash recipes/<model>/grpo.sh   [hydra overrides...]    # the on-policy GRPO baseline
#   DRY_RUN=1 bash recipes/<model>/exgrpo.sh               # print the command, run nothing
#
# A recipe's settings.sh names the model and what differs for it (RECIPE_OVERRIDES, defaults
# of the variables below), then exgrpo.sh / grpo.sh call `run_recipe exgrpo|grpo "$@"`.
# The command is `python -m exgrpo_verl.main` with, in this order: the shared overrides, the
# runtime's (GPU or CPU), the recipe's, the algorithm's, and last the user's trailing hydra
# arguments, so anything the recipe sets can be changed on the command line (the last value
# of a key wins). Everything not set here comes from trainer_configs/exgrpo.yaml, whose
# defaults are the release's (B, K, mini-batch, lr, temperatures, ExGRPO settings).
#
# Environment (each has a default; docs/recipes.md has the full list):
#   MODEL_PATH TRAIN_FILES VAL_FILES DATA_DIR        model and data
#   NNODES GPUS_PER_NODE                              cluster (NNODES > 1: an existing Ray cluster)
#   ROLLOUT_TP GPU_MEMORY_UTILIZATION OFFLOAD         vLLM tensor parallel size, its memory share, FSDP offload
#   ATTENTION                                         flash_attention_2 (needs flash-attn) | sdpa
#   MAX_PROMPT_LENGTH MAX_RESPONSE_LENGTH TOTAL_STEPS run size (token budgets follow the lengths)
#   PROJECT EXPERIMENT OUTPUT_ROOT OUTPUT_DIR CKPT_DIR  names and places
#   WANDB=1 TEST_FREQ SAVE_FREQ KEEP_CHECKPOINTS      logging, validation, checkpoints (and how many stay)
#   REWARD_MODULE                                     module whose compute_score is the training reward
#   EXTEND_CONTEXT MODELS_DIR                         Qwen2.5-Math context extension (prepare_model below)
#   PRESET                                            release (GPU default): the authors' release on both
#                                                     arms (+preset=release); none: the project's corrected defaults
#   PYTHON DRY_RUN                                    interpreter; 1 = print the command only
#   REPLAY_STRATEGY                                   exgrpo.strategy of exgrpo.sh (docs/strategies.md)
set -euo pipefail

RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$RECIPES_DIR")"

RECIPE=""             # settings.sh: the recipe's name (experiment names, folders)
RUNTIME=gpu           # settings.sh: gpu | cpu
# The release's format-gated reward (<think> closed, math-verify after it); the lenient one, no
# format gate: REWARD_MODULE=exgrpo_verl.evaluation.reward_function.
REWARD_MODULE="${REWARD_MODULE:-exgrpo_verl.reward}"
RECIPE_OVERRIDES=()   # settings.sh: what this recipe adds
RUN_ENV=()            # NAME=value pairs the training command runs with
# settings.sh may set PRESET_DEFAULT: the GPU (paper-table) recipes run the release preset
# (trainer_configs/preset/release.yaml) unless PRESET=none; the CPU recipes default to none.
PRESET_DEFAULT=release

die() { echo "recipes: $*" >&2; exit 1; }

is_dry_run() { [[ "${DRY_RUN:-0}" == 1 ]]; }

# One line, shell-quoted: what DRY_RUN prints, and what can be pasted back into a shell.
show_command() {
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
}

# A preparation step (building a model folder, writing data): run it, or under DRY_RUN show it.
prepare() {
    if is_dry_run; then
        echo "# prepare: $(show_command "$@")"
    else
        "$@"
    fi
}

# The installed file of a Python module (verl loads the reward function from a file path).
# find_spec imports the parent packages only, not the module itself.
module_file() {
    "$PYTHON" -c 'import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]).origin)' "$1"
}

python_bool() { if [[ "$1" == 1 || "$1" == [Tt]rue ]]; then echo True; else echo False; fi; }

# verl's max_actor_ckpt_to_keep: a count, or null (keep all) for 0.
checkpoints_to_keep() {
    [[ "$1" =~ ^[0-9]+$ ]] || die "KEEP_CHECKPOINTS=$1: give a whole number of checkpoints to keep (0 = all)"
    if (("$1" == 0)); then echo null; else echo "$1"; fi
}

# Defaults for everything a settings.sh did not set and the environment does not give:
# first where things live (what prepare_inputs needs), then the run itself.
apply_place_defaults() {
    PYTHON="${PYTHON:-python3}"
    OUTPUT_ROOT="${OUTPUT_ROOT:-$REPO_ROOT/outputs}"
    DATA_DIR="${DATA_DIR:-$REPO_ROOT/data}"
    MODELS_DIR="${MODELS_DIR:-$OUTPUT_ROOT/models}"
}

apply_run_defaults() {
    local algorithm=$1
    # Training questions: scripts/prepare_data.py --dataset openr1 --out data/ (Elliott/Openr1-Math-46k-8192).
    TRAIN_FILES="${TRAIN_FILES:-$DATA_DIR/openr1.parquet}"
    # In-training validation, the release's mix (AIME24/25 x8, AMC x4, MATH-500, Minerva, OlympiadBench):
    # scripts/prepare_data.py --dataset valid --out data/.
    VAL_FILES="${VAL_FILES:-$DATA_DIR/math_valid.parquet}"
    NNODES="${NNODES:-1}"
    GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
    ROLLOUT_TP="${ROLLOUT_TP:-2}"
    GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.6}"
    OFFLOAD="${OFFLOAD:-0}"
    MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-1024}"
    MAX_RESPONSE_LENGTH="${MAX_RESPONSE_LENGTH:-8192}"
    TOTAL_STEPS="${TOTAL_STEPS:-701}"
    # The release: validation every 10 steps, none before training, a save every 50 steps.
    TEST_FREQ="${TEST_FREQ:-10}"
    VAL_BEFORE_TRAIN="${VAL_BEFORE_TRAIN:-0}"
    SAVE_FREQ="${SAVE_FREQ:-50}"
    # Checkpoints kept on disk (older ones are deleted); 0 keeps all. A 7B save is ~107 GB.
    KEEP_CHECKPOINTS="${KEEP_CHECKPOINTS:-2}"
    WANDB="${WANDB:-0}"
    PRESET="${PRESET:-$PRESET_DEFAULT}"
    [[ "$PRESET" == release || "$PRESET" == none ]] ||
        die "PRESET=$PRESET: give release (the authors' release, trainer_configs/preset/release.yaml) or none (the project's defaults)"
    PROJECT="${PROJECT:-exgrpo}"
    EXPERIMENT="${EXPERIMENT:-$RECIPE-$algorithm}"
    OUTPUT_DIR="${OUTPUT_DIR:-$OUTPUT_ROOT/$PROJECT/$EXPERIMENT}"
    CKPT_DIR="${CKPT_DIR:-$OUTPUT_DIR/checkpoints}"
}

# Qwen2.5-Math ships a 4096-token context; the release's 1024 + 8192 tokens need more. The
# LUFFY/ExGRPO authors edited config.json (rope_theta 40000, 16384 positions): with
# EXTEND_CONTEXT=1 we build that folder (weights symlinked, not copied) and train it, with the
# chat template CHAT_TEMPLATE (a jinja file) when a settings.sh names one. EXTEND_CONTEXT=0
# trains MODEL_PATH as is.
prepare_model() {
    [[ "${EXTEND_CONTEXT:-0}" == 1 ]] || return 0
    local rope_theta=40000 positions=16384
    local extended="$MODELS_DIR/$(basename "$MODEL_PATH")-rope$rope_theta-ctx$positions"
    local template=()
    if [[ -n "${CHAT_TEMPLATE:-}" ]]; then
        [[ -f "$CHAT_TEMPLATE" ]] || die "CHAT_TEMPLATE=$CHAT_TEMPLATE: no such file"
        template=(--chat-template "$CHAT_TEMPLATE")
        extended="$extended-$(basename "$CHAT_TEMPLATE" .jinja)"
    fi
    prepare "$PYTHON" "$RECIPES_DIR/tools/extend_context.py" --model "$MODEL_PATH" --out "$extended" \
        --rope-theta "$rope_theta" --max-position-embeddings "$positions" "${template[@]}"
    MODEL_PATH="$extended"
}

shared_overrides() {
    local logger='[console]'
    if [[ "$WANDB" == 1 ]]; then logger='[console,wandb]'; fi
    OVERRIDES+=(
        "actor_rollout_ref.model.path=$MODEL_PATH"
        "data.train_files=$TRAIN_FILES"
        "data.val_files=$VAL_FILES"
        # Set here (not only in the config) because the token budgets below are computed from them.
        "data.max_prompt_length=$MAX_PROMPT_LENGTH"
        "data.max_response_length=$MAX_RESPONSE_LENGTH"
        "reward.custom_reward_function.path=$(module_file "$REWARD_MODULE")"
        reward.custom_reward_function.name=compute_score
        "trainer.total_training_steps=$TOTAL_STEPS"
        "trainer.project_name=$PROJECT"
        "trainer.experiment_name=$EXPERIMENT"
        "trainer.default_local_dir=$CKPT_DIR"
        "trainer.logger=$logger"
        "trainer.test_freq=$TEST_FREQ"
        "trainer.val_before_train=$(python_bool "$VAL_BEFORE_TRAIN")"
        "trainer.save_freq=$SAVE_FREQ"
        "trainer.max_actor_ckpt_to_keep=$(checkpoints_to_keep "$KEEP_CHECKPOINTS")"
        # Checkpoints carry a Hugging Face copy of the actor, which scripts/evaluate.py loads as is.
        'actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]'
    )
    # The release's loss, buffer, reward and micro-batch rules on both arms (docs/fidelity.md).
    if [[ "$PRESET" == release ]]; then OVERRIDES+=(+preset=release); fi
}

gpu_overrides() {
    local seq_len=$((MAX_PROMPT_LENGTH + MAX_RESPONSE_LENGTH))
    local offload
    offload="$(python_bool "$OFFLOAD")"
    OVERRIDES+=(
        "trainer.nnodes=$NNODES"
        "trainer.n_gpus_per_node=$GPUS_PER_NODE"
        # FSDP2: the strategy the CPU runtime (and so the test suite) runs as well.
        actor_rollout_ref.actor.strategy=fsdp2
        actor_rollout_ref.model.enable_gradient_checkpointing=True
        "actor_rollout_ref.actor.fsdp_config.param_offload=$offload"
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=$offload"
    )
    attention_overrides "$seq_len"
    OVERRIDES+=(
        actor_rollout_ref.rollout.name=vllm
        "actor_rollout_ref.rollout.tensor_model_parallel_size=$ROLLOUT_TP"
        "actor_rollout_ref.rollout.gpu_memory_utilization=$GPU_MEMORY_UTILIZATION"
        # vLLM would otherwise size for the model's whole context (128k for Llama-3.1); verl also
        # checks this against the model's max_position_embeddings before vLLM starts.
        "actor_rollout_ref.rollout.max_model_len=$seq_len"
    )
    # Several nodes: join the Ray cluster started beforehand (ray start --head / --address=...);
    # "auto" fails fast when there is none, where a bare ray.init() would start a 1-node cluster.
    # RAY_ADDRESS, when set, takes precedence (Ray's rule for address=auto).
    if ((NNODES > 1)); then
        OVERRIDES+=(++ray_kwargs.ray_init.address=auto)
    fi
}

# ATTENTION=flash_attention_2 (default): padding removal on flash-attn's varlen kernels, micro-batches
# by token count, budgets 2x (update) and 3x (log-probs, no grads) the longest sequence (the ratios of
# verl's DAPO recipe; the log-prob and ref settings follow use_dynamic_bsz). Needs the flash-attn package.
# ATTENTION=sdpa: PyTorch's attention, no flash-attn. Without padding removal every row is padded to
# the longest sequence, so a token budget (which counts real tokens) could pack many short rows into
# several times its size: fixed micro-batches instead, 1 sequence for the update and 2 for log-probs
# (at most 1x and 2x the longest sequence, under the budgets above). These override the preset's
# token-budget micro-batches, so under sdpa the entropy term's weight is not the release's.
attention_overrides() {
    local seq_len=$1
    case "${ATTENTION:=flash_attention_2}" in
    flash_attention_2)
        OVERRIDES+=(
            actor_rollout_ref.model.use_remove_padding=True
            actor_rollout_ref.actor.use_dynamic_bsz=True
            "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=$((3 * seq_len))"
        )
        # The update's budget: the preset's (the release's 32,768 tokens: with the entropy term per
        # micro-batch, the budget sets its weight), else 2x the longest sequence.
        if [[ "$PRESET" == none ]]; then
            OVERRIDES+=("actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$((2 * seq_len))")
        fi ;;
    sdpa) OVERRIDES+=(
        +actor_rollout_ref.model.override_config.attn_implementation=sdpa
        actor_rollout_ref.model.use_remove_padding=False
        actor_rollout_ref.actor.use_dynamic_bsz=False
        actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1
        actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=False
        actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2
    ) ;;
    *) die "ATTENTION=$ATTENTION: give flash_attention_2 (needs flash-attn) or sdpa" ;;
    esac
}

cpu_overrides() {
    # Every setting a CPU run needs, from the package itself so that this list cannot drift.
    local cpu_list
    mapfile -t cpu_list < <("$PYTHON" -c \
        'from exgrpo_verl.cpu_runtime.launch import CPU_RUNTIME_OVERRIDES; print("\n".join(CPU_RUNTIME_OVERRIDES))')
    ((${#cpu_list[@]} > 0)) || die "could not read CPU_RUNTIME_OVERRIDES with $PYTHON"
    OVERRIDES+=("${cpu_list[@]}")
}

# The model folder / data a recipe needs before training; settings.sh may redefine it.
prepare_inputs() { prepare_model; }

# run_recipe exgrpo|grpo [user hydra overrides...]
run_recipe() {
    local algorithm=$1
    shift
    [[ -n "$RECIPE" ]] || die "settings.sh must set RECIPE"
    [[ "$algorithm" == exgrpo || "$algorithm" == grpo ]] || die "unknown algorithm '$algorithm' (exgrpo | grpo)"
    apply_place_defaults
    prepare_inputs
    apply_run_defaults "$algorithm"

    OVERRIDES=()
    shared_overrides
    "${RUNTIME}_overrides"
    OVERRIDES+=("${RECIPE_OVERRIDES[@]}")
    # The baseline: the same trainer and settings with replay off. rho = 0 runs plain GRPO with
    # ExGRPO's loss as it is before replay starts (PPO clip kept; under the preset the release's
    # gradient scale, plain clip and grad-norm skip) and the same advantage, A = r - mean(r); no
    # experience is collected, so nothing is retired either. The only difference is replay.
    if [[ "$algorithm" == grpo ]]; then OVERRIDES+=(exgrpo.replay_ratio=0); fi
    if [[ "$algorithm" == exgrpo && -n "${REPLAY_STRATEGY:-}" ]]; then OVERRIDES+=("exgrpo.strategy=$REPLAY_STRATEGY"); fi

    local command=(env PYTHONUNBUFFERED=1 "${RUN_ENV[@]}" "$PYTHON" -m exgrpo_verl.main "${OVERRIDES[@]}" "$@")
    if is_dry_run; then
        show_command "${command[@]}"
        return 0
    fi
    mkdir -p "$OUTPUT_DIR"
    echo "recipes: $EXPERIMENT -> $OUTPUT_DIR (log: $OUTPUT_DIR/train.log)"
    "${command[@]}" 2>&1 | tee -a "$OUTPUT_DIR/train.log"
}
