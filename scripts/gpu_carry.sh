#!/usr/bin/env bash
# Builds the carry set that brings vLLM 0.32 (torch 2.13, Triton 3.7.1) to the lent H200, whose image has
# torch 2.11 and no network: .g32/p01 .. pNN in the repo (ignored by git), each one piece of at most
# 60,000,000 bytes of one tar of the wheels (vLLM's and Triton's stripped), with install.sh in the last.
# Wheels are deflated already; recompressing with xz -1 ran at 0.4 MB/s on this loaded 2-core machine.
# Carry one part per device call, in order; the last call sources install.sh (see /work/coord/g32.md).
# Usage: scripts/gpu_carry.sh [REPO]   env: G32_WORK (build folder), G32_WHEELS (wheels already downloaded)
set -euo pipefail
repo=$(git -C "${1:-.}" rev-parse --show-toplevel)
work=${G32_WORK:-/tmp/g32-build}
part_bytes=60000000
py=(--python-version 3.12 --implementation cp --only-binary=:all: --platform any)
for n in 5 17 24 26 27 28 31 34; do py+=(--platform "manylinux_2_${n}_x86_64"); done
py+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# What the H200 image lacks, pinned as `uv pip compile` resolves vllm==0.32.0 for Python 3.12. Reused
# from the image instead (see g32.md): the CUDA 13.0 libraries, cuDNN 9.19, cuSPARSELt 0.8.0, NVSHMEM,
# NCCL 2.28 (plus the stub below), and every package KINDS.md lists. Left out because vLLM imports them
# only for backends, loaders or models we do not use (TRITON_ATTN, TORCH_SDPA, safetensors, DeepSeek-OCR):
# flashinfer, tilelang, nvidia-cutlass-dsl, quack-kernels, humming-kernels, tokenspeed-mla, PyNvVideoCodec,
# torchcodec, torchaudio (the image's 2.11 stays), nvidia-cudnn-frontend, instanttensor, fastsafetensors,
# torch-c-dlpack-ext (torch 2.13 has the DLPack exchange API itself). xgrammar needs apache-tvm-ffi.
reqs=(torch==2.13.0 torchvision==0.28.0 triton==3.7.1 vllm==0.32.0 pymupdf==1.27.2.3 apache-tvm-ffi==0.1.11
  agent-detector==2.0.0 annotated-types==0.8.0 anthropic==2.14.0 astor==0.8.1 blake3==1.0.11
  cachetools==8.0.2 cbor2==6.3.0 cffi==2.1.1 compressed-tensors==0.17.0 cryptography==50.0.2 depyf==0.20.0
  detect-installer==0.2.1 dill==0.4.1 dnspython==2.9.2 docstring-parser==0.18.0 email-validator==2.4.0
  fastapi==0.136.3 fastapi-cli==0.0.34 fastapi-cloud-cli==0.28.0 fastar==0.12.0 googleapis-common-protos==1.76.0
  httpcore2==2.16.2 httptools==0.9.0 httpx2==2.16.2 ijson==3.6.0 interegular==0.3.3 jiter==0.19.0
  jmespath==1.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 lark==1.2.2 llguidance==1.7.6
  lm-format-enforcer==0.11.3 loguru==0.7.3 mcp==2.3.0 mcp-types==2.3.0 mistral-common==1.13.1
  model-hosting-container-standards==0.1.16 msgspec==0.23.0 nvtx==0.2.15 openai==3.57.0
  opentelemetry-api==1.45.2 opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp==1.45.2
  opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-exporter-otlp-proto-grpc==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2
  opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-semantic-conventions-ai==0.5.1 oss-harmony==0.0.11 outlines-core==0.2.14
  partial-json-parser==0.2.1.1.post7 prometheus-fastapi-instrumentator==8.1.0 pybase64==1.5.1
  pycountry==26.2.16 pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-extra-types==2.11.1
  pydantic-settings==2.16.3 pyjwt==2.15.1 python-dotenv==1.2.4 python-json-logger==4.2.0
  python-multipart==0.0.34 pyzmq==27.3.0 referencing==0.37.0 rich-toolkit==0.20.6 rignore==0.8.1
  rpds-py==2026.9.1 sentry-sdk==2.75.0 setproctitle==1.3.8 sniffio==1.3.1 sse-starlette==3.7.0
  starlette==1.10.0 supervisor==4.3.0 truststore==0.10.5 typing-inspection==0.4.5 uvicorn==0.54.0
  watchfiles==1.3.0 websockets==17.4 xgrammar==0.2.8
  py-spy==0.4.3)   # bench/gpu_session_032.sh profiles the engine core with /tmp/site/bin/py-spy
# Not used with TRITON_ATTN attention, TORCH_SDPA vision attention and bf16 weights on sm_90 (saves about
# 250 MB): FlashAttention-2/3 kernels, Blackwell FMHA, DeepGEMM, the Rust frontend; Triton's Blackwell
# ptxas, its profiler (proton, CUPTI) and test tools (the AMD backend stays: Triton imports every backend
# its entry points name). Deleted from the wheels without recompressing, and from RECORD.
strip_vllm=('vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' 'vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so'
  'vllm/vllm-rs' 'vllm/third_party/fmha_sm100/*' 'vllm/third_party/deep_gemm/*')
strip_triton=('triton/backends/nvidia/bin/ptxas-blackwell' 'triton/backends/nvidia/lib/cupti/*'
  'triton/_C/libproton.so' 'triton/instrumentation/*' 'triton/FileCheck')

mkdir -p "$work/whl"
if [ -n "${G32_WHEELS:-}" ]; then cp -n "$G32_WHEELS"/*.whl "$work/whl/"; fi
echo "downloading wheels (about 1.1 GB the first time) ..."
python3 -m pip download -q --no-deps "${py[@]}" -d "$work/whl" "${reqs[@]}"
rm -rf "$work/carry" && mkdir -p "$work/carry"
for r in "${reqs[@]}"; do   # exactly the pinned files: the folder may hold other versions from earlier runs
  name=$(echo "${r%%==*}" | tr - _); ver=${r#*==}
  f=$(find "$work/whl" -maxdepth 1 -iname "${name}-${ver}-*.whl" | head -1)
  [ -n "$f" ] || { echo "gpu_carry: no wheel for $r in $work/whl" >&2; exit 1; }
  cp "$f" "$work/carry/"
done

strip_wheel() {   # strip_wheel WHEEL PATTERN...: delete members (no recompression) and their RECORD rows
  local whl=$1 record tmp pat; shift
  zip -q -d "$whl" "$@"
  record=$(unzip -Z1 "$whl" | grep '\.dist-info/RECORD$')
  tmp=$(mktemp -d)
  unzip -q "$whl" "$record" -d "$tmp"
  for pat in "$@"; do grep -v "^${pat%\*}" "$tmp/$record" > "$tmp/r" || true; mv "$tmp/r" "$tmp/$record"; done
  (cd "$tmp" && zip -q "$whl" "$record")
  rm -rf "$tmp"
}
strip_wheel "$(find "$work/carry" -name 'vllm-*.whl')" "${strip_vllm[@]}"
strip_wheel "$(find "$work/carry" -name 'triton-*.whl')" "${strip_triton[@]}"

# NCCL 2.28 (the image's, pinned by torch 2.11) lacks eight NCCL 2.29 functions that torch 2.13 links,
# so libtorch_cuda.so fails to load. install.sh preloads these stubs when the image's NCCL lacks them;
# they answer ncclInvalidUsage, and one-GPU runs never call them.
for s in ncclCommMemStats ncclCommResume ncclCommSuspend ncclGetLsaMultimemDevicePointer \
         ncclGetPeerDevicePointer ncclPutSignal ncclSignal ncclWaitSignal; do
  echo "int $s(void) { return 5; }"
done > "$work/nccl_compat.c"
gcc -shared -fPIC -O2 -nostdlib -o "$work/carry/libnccl_compat.so" "$work/nccl_compat.c"

(cd "$work/carry" && sha256sum -- * > SHA256SUMS)
tar -C "$work/carry" -cf "$work/g32.tar" .
rm -rf "$repo/.g32" "$work/parts" && mkdir -p "$repo/.g32" "$work/parts"
split -b "$part_bytes" -d -a 2 --numeric-suffixes=1 "$work/g32.tar" "$work/parts/g32.tar."
n=0
for p in "$work"/parts/g32.tar.*; do
  n=$((n + 1)); d=$(printf '%s/.g32/p%02d' "$repo" "$n"); mkdir -p "$d"; mv "$p" "$d/"
done
last=$(printf 'p%02d' "$n")
sum=$(sha256sum "$work/g32.tar" | cut -d' ' -f1)
sed -e "s/@PARTS@/$n/g" -e "s/@SHA256@/$sum/" -e "s/@LAST@/$last/" > "$repo/.g32/$last/install.sh" <<'EOF'
# Source on the device (". .g32/pNN/install.sh") once every earlier part is in /tmp/g32. Installs torch
# 2.13, Triton 3.7.1, vLLM 0.32 and their missing deps into /tmp/site, ahead of the image's torch 2.11.
g32_fail() { echo "g32: $*" >&2; return 1; }
g32_install() {
  mkdir -p /tmp/g32 && cp .g32/p*/g32.tar.* /tmp/g32/ 2>/dev/null
  [ -e /tmp/site/vllm/__init__.py ] && return 0
  local parts=(/tmp/g32/g32.tar.*)
  [ "${#parts[@]}" = @PARTS@ ] || g32_fail "${#parts[@]} of @PARTS@ parts in /tmp/g32" || return 1
  [ "$(cat "${parts[@]}" | sha256sum | cut -d' ' -f1)" = @SHA256@ ] ||
    g32_fail "the parts in /tmp/g32 do not reassemble to the built tar (sha256)" || return 1
  # unpack.py unzips the wheels in parallel, as pip --target would one by one (2.7x faster on 2 cores).
  mkdir -p /tmp/g32/w /tmp/site && cat "${parts[@]}" | tar -x -C /tmp/g32/w &&
    (cd /tmp/g32/w && sha256sum -c --quiet SHA256SUMS) &&
    python3 .g32/@LAST@/unpack.py /tmp/g32/w /tmp/site &&
    cp /tmp/g32/w/libnccl_compat.so /tmp/site/ && rm -rf /tmp/g32/w
}
g32_install || return 1
G32_SYS=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# torch's RPATH ($ORIGIN/../../nvidia/*/lib) points into /tmp/site: point it at the image's CUDA libraries.
[ -e /tmp/site/nvidia ] || ln -s "$G32_SYS/nvidia" /tmp/site/nvidia
G32_LIBS=$(printf '%s:' "$G32_SYS"/nvidia/*/lib)
export LD_LIBRARY_PATH="${G32_LIBS%:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! python3 -c 'import ctypes, sys; l = ctypes.CDLL(sys.argv[1]); l.ncclPutSignal; l.ncclCommMemStats' \
     "$G32_SYS/nvidia/nccl/lib/libnccl.so.2" 2>/dev/null; then
  export LD_PRELOAD="/tmp/site/libnccl_compat.so${LD_PRELOAD:+:$LD_PRELOAD}"
fi
# torch 2.13 was built with cuDNN 9.20; the image's 9.19 has every function it calls (checked with nm).
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTORCH_SKIP_CUDNN_COMPATIBILITY_CHECK=1
# Later calls on the same warm machine carry nothing: ". /tmp/site/g32_env.sh" sets the same variables.
export -p | grep -E ' (LD_LIBRARY_PATH|LD_PRELOAD|PYTHONPATH|PYTHONUNBUFFERED|PYTORCH_SKIP_CUDNN_COMPATIBILITY_CHECK)=' \
  > /tmp/site/g32_env.sh
python3 -c "import torch, vllm; print(torch.__version__, torch.cuda.is_available(), vllm.__version__)"
EOF
cp "$work/carry/SHA256SUMS" "$repo/.g32/$last/"
cat > "$repo/.g32/$last/unpack.py" <<'EOF'
"""Unpack wheels into a folder in parallel, as pip --target would (scripts into bin/), without RECORD."""
import concurrent.futures, os, re, shutil, sys, zipfile
from pathlib import Path


def target(name: str) -> str:
    """Where a wheel member goes: NAME.data/scripts/x -> bin/x, NAME.data/purelib|platlib/x -> x."""
    m = re.match(r"[^/]+\.data/(scripts|purelib|platlib)/(.+)", name)
    return name if m is None else (f"bin/{m.group(2)}" if m.group(1) == "scripts" else m.group(2))


def unpack(wheel: str, dest: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            path = os.path.join(dest, target(info.filename))
            with z.open(info) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            if mode & 0o111 or path.startswith(os.path.join(dest, "bin", "")):   # ptxas, py-spy
                os.chmod(path, mode | 0o755)
    return wheel


if __name__ == "__main__":
    src, dest = Path(sys.argv[1]), sys.argv[2]
    wheels = sorted(map(str, src.glob("*.whl")), key=os.path.getsize, reverse=True)
    for wheel in wheels:   # folders first, so parallel extraction never races on os.makedirs
        with zipfile.ZipFile(wheel) as z:
            for name in {os.path.dirname(target(n)) for n in z.namelist()} - {""}:
                os.makedirs(os.path.join(dest, name), exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        for _ in pool.map(unpack, wheels, [dest] * len(wheels)):
            pass
EOF
gitdir=$(cd "$repo" && cd "$(git rev-parse --git-common-dir)" && pwd)
mkdir -p "$gitdir/info" && { grep -qx '/.g32/' "$gitdir/info/exclude" 2>/dev/null || echo '/.g32/' >> "$gitdir/info/exclude"; }
du -sb "$repo"/.g32/p*
echo "gpu_carry: $n parts, $(stat -c %s "$work/g32.tar") bytes, last part $last holds install.sh"
