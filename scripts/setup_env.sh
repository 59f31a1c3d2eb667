#!/usr/bin/env bash
# One command that sets everything up: a virtual environment in .venv with the runner, vLLM and the
# test tools. Default: the CPU build of vLLM (tests, CI, laptops). `scripts/setup_env.sh gpu` for NVIDIA.
# Air-gapped: `scripts/setup_env.sh gpu --offline DIR` installs from a wheelhouse that
# scripts/wheelhouse.sh built on a connected machine, with no network (docs/offline-install.md).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: $0 [cpu|gpu] [--offline WHEELHOUSE_DIR]" >&2; exit 2; }
target=cpu offline=
while [ $# -gt 0 ]; do
  case "$1" in
    cpu|gpu) target=$1; shift ;;
    --offline) offline=${2:-}; [ -n "$offline" ] || usage; shift 2 ;;
    *) usage ;;
  esac
done
overrides=()
[ "$target" = cpu ] && overrides=(--override requirements/cpu-overrides.txt)
from=()
if [ -n "$offline" ]; then
  lock="$offline/requirements.lock"
  [ -f "$lock" ] || { echo "setup_env: $lock not found: build it with scripts/wheelhouse.sh $target DIR" >&2; exit 1; }
  built=$(head -1 "$lock")
  [[ $built == "# wheelhouse: $target install, "* ]] ||
    { echo "setup_env: $offline holds a different install (${built#\# wheelhouse: }), not $target" >&2; exit 1; }
  want=$(sed -E 's/.*Python ([0-9.]+),.*/\1/' <<< "$built")
  have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$want" = "$have" ] || { echo "setup_env: the wheelhouse is for Python $want but python3 here is $have:" \
    "rebuild it with scripts/wheelhouse.sh $target DIR --python $have" >&2; exit 1; }
  # Nothing may come from the network: only the wheelhouse, pinned by its lock.
  export UV_OFFLINE=1 PIP_NO_INDEX=1
  from=(--no-index --find-links "$offline" --constraint "$lock")
  command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet --no-index --find-links "$offline" uv
else
  command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
fi
# uv ignores pip's local wheel folders; the system python3 (3.11+) is used, no interpreter download.
[ -x .venv/bin/python ] || uv venv --quiet --python "$(command -v python3)" .venv
export VIRTUAL_ENV="$PWD/.venv"
# Bytecode compiled at install: Ray's dashboard agent otherwise compiles its sources on every start, and
# with PYTHONDONTWRITEBYTECODE set the raylet gave up waiting for it (~15 s) on this 2-core machine.
uv pip install --quiet --compile-bytecode "${from[@]}" "${overrides[@]}" -e ".[$target,test,cluster]"
.venv/bin/python -c "${SETUP_ENV_CHECK:-import vllm, pymupdf; print('ready: vllm', vllm.__version__, '| pymupdf', pymupdf.VersionBind)}"
if [ "$target" = gpu ] && [ -z "${SETUP_ENV_CHECK:-}" ]; then .venv/bin/python doctor.py --driver || true; fi
