# The tiny Qwen2 model (built locally) on the toy char-hunt task, on the CPU: a few steps through
# verl's real trainer with our CPU runtime, in minutes. Sourced by tiny-qwen2.sh and tiny-qwen2-grpo.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE=cpu-tiny-qwen2
RUNTIME=cpu
# The toy run keeps the project's defaults (PRESET=release applies the release's rules here too).
PRESET_DEFAULT=none
REWARD_MODULE=exgrpo_verl.tasks.char_hunt

MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-64}"
MAX_RESPONSE_LENGTH="${MAX_RESPONSE_LENGTH:-32}"
TOTAL_STEPS="${TOTAL_STEPS:-6}"
TEST_FREQ="${TEST_FREQ:--1}"
SAVE_FREQ="${SAVE_FREQ:-$TOTAL_STEPS}"   # one checkpoint at the end (buffer included)

RECIPE_OVERRIDES=(
    data.train_batch_size=8
    actor_rollout_ref.rollout.n=4
    actor_rollout_ref.actor.ppo_mini_batch_size=8
    # One micro-batch per mini-batch (8 questions x 4 rollouts): no dynamic batching on the CPU.
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32
    # A random tiny model learns nothing at 1e-6 in a few steps; this makes the change visible.
    actor_rollout_ref.actor.optim.lr=1e-3
    # char-hunt's solve rate starts near 0.25, under the release's 0.35: start replay in step 1-2.
    exgrpo.start_solve_rate=0.1
    # Steps take about a second here; verl's 0.5 s poll for finished rollouts would dominate.
    exgrpo.sampler_poll_interval_s=0.05
    # A demo: every run starts from the tiny model (pass trainer.resume_mode=auto to resume).
    trainer.resume_mode=disable
)

# The CPU run's environment (the runtime's switch, no hub, no wandb), read from the package as
# cpu_overrides reads the overrides; then the tiny model and the toy data, unless MODEL_PATH /
# TRAIN_FILES / VAL_FILES are given.
prepare_inputs() {
    mapfile -t RUN_ENV < <("$PYTHON" -c \
        'from exgrpo_verl.cpu_runtime import RUN_ENVIRONMENT; print("\n".join(f"{k}={v}" for k, v in RUN_ENVIRONMENT.items()))')
    ((${#RUN_ENV[@]} > 0)) || die "could not read RUN_ENVIRONMENT with $PYTHON"
    if [[ -z "${MODEL_PATH:-}" ]]; then
        MODEL_PATH="$MODELS_DIR/tiny-qwen2"
        prepare "$PYTHON" -m exgrpo_verl.tiny_models --family qwen2 --out "$MODEL_PATH"
    fi
    if [[ -z "${TRAIN_FILES:-}" || -z "${VAL_FILES:-}" ]]; then
        local data="$OUTPUT_ROOT/data/char_hunt"
        TRAIN_FILES="${TRAIN_FILES:-$data/train.parquet}"
        VAL_FILES="${VAL_FILES:-$data/val.parquet}"
        prepare "$PYTHON" "$RECIPES_DIR/tools/char_hunt_data.py" --out "$data"
    fi
}
