#!/usr/bin/env bash
# On the lent GPU machine, after .vb4/install.sh and bench/make_full_ckpt.py /tmp/ckpt: the runner itself
# (run_pdf_ocr_vllm.py, dummy weights, 256 output tokens/page) on a generated 256-page corpus, then the
# raw-engine and LLM.generate references (bench/engine_bench.py) in the same call, then the runner with
# serial input processing. Everything is logged line by line under $OUT.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | grep -v WARN
python3 - <<'PY'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from pdfgen import numbered_pages, make_pdf
for i in range(8):
    make_pdf(Path(f"/tmp/corpus/doc{i}.pdf"), numbered_pages(32, f"Document {i}"))
print("corpus: 8 PDFs x 32 pages", flush=True)
PY
run() {  # name, seconds, extra flags
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 run_pdf_ocr_vllm.py --input-dir /tmp/corpus --output-dir "/tmp/out-$name" \
    --model /tmp/ckpt --load-format dummy --max-tokens 256 --batch-pages 256 --kv-cache-dtype fp8 \
    --render-workers 4 --no-progress "$@" > "$OUT/runner-$name.log" 2>&1
  grep -E "^(INFO|WARNING|ERROR) " "$OUT/runner-$name.log" | tail -12
  cp "/tmp/out-$name/run_report.json" "$OUT/runner-$name.json" 2>/dev/null &&
  python3 -c "import json; r=json.load(open('/tmp/out-$name/run_report.json')); t=r['totals']; print('RUNNER $name', json.dumps({k: t[k] for k in ('pages','tokens','seconds','pages_per_s','pages_per_s_after_load','tokens_per_s')} | r['engine']), flush=True)"
}
run threads8 240 --preprocess-workers 8
timeout 200 python3 bench/engine_bench.py engine --model /tmp/ckpt --kv fp8 --block-size 0 --attn auto \
  --mm-attn auto --runs 256:256:1 --waves 1 --e2e 256:256 --out "$OUT" 2>&1 |
  grep --line-buffered -E "RESULT|CONFIG" | tee "$OUT/engine.log" | cut -c1-400
run threads1 150 --preprocess-workers 1
