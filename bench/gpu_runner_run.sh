#!/usr/bin/env bash
# On the lent GPU machine, after .vb4/install.sh and bench/make_full_ckpt.py /tmp/ckpt: the runner itself
# (run_pdf_ocr_vllm.py, dummy weights, 256 output tokens/page) on a generated 256-page corpus, with and
# without threaded input processing. Writes the run reports and logs under $OUT.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | grep -v WARN
python3 - <<'PY'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from pdfgen import numbered_pages, make_pdf
for i in range(8):
    make_pdf(Path(f"/tmp/corpus/doc{i}.pdf"), numbered_pages(32, f"Document {i}") )
print("corpus: 8 PDFs x 32 pages")
PY
run() {  # name, extra flags
  local name=$1; shift
  timeout 280 python3 run_pdf_ocr_vllm.py --input-dir /tmp/corpus --output-dir "/tmp/out-$name" \
    --model /tmp/ckpt --load-format dummy --max-tokens 256 --batch-pages 256 --kv-cache-dtype fp8 \
    --render-workers 4 --no-progress "$@" 2>&1 | grep -v -E "^\(EngineCore|^INFO [0-9]" | tail -25
  cp "/tmp/out-$name/run_report.json" "$OUT/runner-$name.json" 2>/dev/null
  python3 -c "import json,sys; t=json.load(open('/tmp/out-$name/run_report.json'))['totals']; e=json.load(open('/tmp/out-$name/run_report.json'))['engine']; print('RUNNER', '$name', json.dumps({k: t[k] for k in ('pages','tokens','seconds','pages_per_s','pages_per_s_after_load','tokens_per_s')} | e))"
}
run threads8 --preprocess-workers 8
run threads1 --preprocess-workers 1
