#!/usr/bin/env bash
# One command that sets everything up: a virtual environment in .venv with the runner, vLLM and the
# test tools. Default: the CPU build of vLLM (tests, CI, laptops). `scripts/setup_env.sh gpu` for NVIDIA.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-cpu}
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
# uv ignores pip's local wheel folders; the system python3 (3.11+) is used, no interpreter download.
[ -x .venv/bin/python ] || uv venv --quiet --python "$(command -v python3)" .venv
export VIRTUAL_ENV="$PWD/.venv"
case "$target" in
  cpu) uv pip install --quiet --override requirements/cpu-overrides.txt -e ".[cpu,test]" ;;
  gpu) uv pip install --quiet -e ".[gpu,test]" ;;
  *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac
.venv/bin/python -c "import vllm, pymupdf; print('ready: vllm', vllm.__version__, '| pymupdf', pymupdf.VersionBind)"
