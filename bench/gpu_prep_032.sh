# shellcheck shell=bash
# Source on the lent H200 once the 14 parts of scripts/gpu_carry.sh are in /tmp/g32 (carry .g32/p15 then),
# or on a warm machine where an earlier call installed it: vLLM 0.32 + torch 2.13 in /tmp/site, the wheels
# in .g32x/{rf,spy} (rapidfuzz and latex2mathml for post-processing, py-spy for profiles), the device's
# two work-arounds, and the variables every bench call needs. Returns non-zero if anything is missing.
# shellcheck disable=SC1091  # both files exist only on the device
if [ -e /tmp/site/g32_env.sh ]; then . /tmp/site/g32_env.sh; else . .g32/p15/install.sh || return 1; fi
# Into a folder of their own: pip --target --upgrade replaces whole top-level folders, and rapidfuzz's
# bin/ took /tmp/site/bin/py-spy with it (session 9 lost its profiles so).
for whl in .g32x/rf/*.whl .g32x/spy/*.whl; do
  [ -e "$whl" ] || continue
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-x "$whl" \
    2>&1 | grep -v "WARNING: Target directory" || true
done
# The carried vLLM has no FlashAttention kernels (stripped for size); its vllm_flash_attn package raises at
# import even when no FlashAttention backend is chosen.
sed -i 's/^if not (FA2_AVAILABLE or FA3_AVAILABLE):/if False:/' /tmp/site/vllm/vllm_flash_attn/__init__.py
# vLLM 0.32's deepencoder_rel_pos_attention Triton kernel reads a global LOG2E, which Triton 3.7.1 refuses.
export VLLM_USE_FLASHINFER_SAMPLER=0 TRITON_ALLOW_NON_CONSTEXPR_GLOBALS=1 PYTHONPATH=/tmp/site:/tmp/site-x:$PWD PYTHONUNBUFFERED=1
python3 -c "import vllm, rapidfuzz; print('vllm', vllm.__version__)"
