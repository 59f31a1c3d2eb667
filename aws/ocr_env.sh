# shellcheck shell=bash
# Environment for the DeepSeek-OCR runner. Source it, do not run it:   . aws/ocr_env.sh
# Sourced by aws/setup_multi_gpu_env.sh, by launch_workers.py for every worker (--env-file), and by ~/.bashrc
# once the setup script has added it there. Safe to source twice. It replaces the manual LD_LIBRARY_PATH export.

# Machine-specific values written by aws/setup_multi_gpu_env.sh (OCR_MODEL, ...; never secrets).
_ocr_local="${OCR_ENV_LOCAL:-${XDG_CONFIG_HOME:-${HOME:-/root}/.config}/deepseek-ocr/env.sh}"
if [ -f "$_ocr_local" ]; then
  # shellcheck source=/dev/null
  . "$_ocr_local"
fi

# A libjpeg-turbo build (only for Pillow-SIMD; the PyMuPDF and Pillow wheels bring their own libjpeg):
# its lib folder goes first on LD_LIBRARY_PATH, and only if it exists.
OCR_LIBJPEG_TURBO_DIR="${OCR_LIBJPEG_TURBO_DIR:-/opt/libjpeg-turbo}"
for _ocr_lib in "$OCR_LIBJPEG_TURBO_DIR/lib" "$OCR_LIBJPEG_TURBO_DIR/lib64"; do
  if [ -d "$_ocr_lib" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in
      *":$_ocr_lib:"*) ;;
      *) export LD_LIBRARY_PATH="$_ocr_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
  fi
done

# Hugging Face: no telemetry; fast downloads. huggingface_hub >= 1.0 downloads through Xet
# (HF_XET_HIGH_PERFORMANCE) and warns about HF_HUB_ENABLE_HF_TRANSFER, which older hubs honour only where the
# hf_transfer package is installed (and fail without it): so it is 1 only where .venv has hf_transfer.
export HF_HUB_DISABLE_TELEMETRY=1
export HF_XET_HIGH_PERFORMANCE="${HF_XET_HIGH_PERFORMANCE:-1}"
_ocr_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${HF_HUB_ENABLE_HF_TRANSFER:-}" ]; then
  if compgen -G "$_ocr_root/.venv/lib/python3*/site-packages/hf_transfer" >/dev/null; then
    export HF_HUB_ENABLE_HF_TRANSFER=1
  else
    export HF_HUB_ENABLE_HF_TRANSFER=0
  fi
fi

# vLLM: tensor-parallel workers start with spawn (CUDA does not survive fork); no usage reporting.
export VLLM_WORKER_MULTIPROC_METHOD="${VLLM_WORKER_MULTIPROC_METHOD:-spawn}"
export VLLM_NO_USAGE_STATS=1
export DO_NOT_TRACK=1
# Worker logs (launch_workers.py) show lines as they happen.
export PYTHONUNBUFFERED=1

unset _ocr_local _ocr_lib _ocr_root
