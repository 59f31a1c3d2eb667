#!/usr/bin/env bash
# On the lent GPU machine, after .vb4/install.sh: jobs named on the command line, each logged in full
# under $OUT and summed up on stdout.
#   bench:KV:TOKENS[:EXTRA]  bench/bench.py, raw engine vs runner, dummy weights, 8 PDFs x 32 scan pages,
#                            every page forced to TOKENS output tokens, --kv-cache-dtype KV
#                            (EXTRA: more bench flags, commas for spaces)
#   passes                   the runner in grounded mode with the recovery passes on: every page of the
#                            random-weight model lacks a table block, so each is read again in Large mode
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/tmp/out}
[ -d /tmp/site/pymupdf ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  .whl/*.whl 2>&1 | grep -v WARN
[ -f /tmp/ckpt/config.json ] || python3 bench/make_full_ckpt.py /tmp/ckpt bench/deepseek_ocr_config.json

for job in "$@"; do
  IFS=: read -r kind kv tokens extra <<< "$job"
  start=$(date +%s)
  case $kind in
    bench)
      name="bench-$kv-$tokens"
      # shellcheck disable=SC2086  # EXTRA is a list of flags
      timeout 560 python3 bench/bench.py --model /tmp/ckpt --load-format dummy --generate 8x32 \
        --corpus-dir /tmp/corpus-bench --force-tokens "$tokens" --batch-pages 256 --kv-cache-dtype "$kv" \
        --render-workers 8 --preprocess-workers 8 --budget-s 500 --json "$OUT/$name.json" ${extra//,/ } \
        > "$OUT/$name.log" 2>&1
      echo "== $name: exit $? in $(( $(date +%s) - start )) s"
      grep -v -E "^(INFO|DEBUG|\(EngineCore)|it/s\]|BENCH_JSON" "$OUT/$name.log" | tail -45 | cut -c1-300 ;;
    passes)
      name=passes
      python3 - <<'PY'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from pdfgen import numbered_pages, make_pdf
for i in range(2):
    make_pdf(Path(f"/tmp/corpus-passes/doc{i}.pdf"), numbered_pages(16, f"Document {i}"))
PY
      timeout 400 python3 run_pdf_ocr_vllm.py --input-dir /tmp/corpus-passes --output-dir /tmp/out-passes \
        --model /tmp/ckpt --load-format dummy --mode grounded --max-tokens 128 --batch-pages 64 \
        --retry-large-cap 64 --no-progress > "$OUT/$name.log" 2>&1
      echo "== $name: exit $? in $(( $(date +%s) - start )) s"
      grep -E "^(WARNING|ERROR) |pass:|pages/s|engine: " "$OUT/$name.log" | tail -20 | cut -c1-300
      cp /tmp/out-passes/run_report.json "$OUT/$name-report.json" 2>/dev/null ;;
  esac
done
