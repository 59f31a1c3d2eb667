#!/usr/bin/env bash
# On the lent H200, after `. bench/gpu_prep_032.sh`: launch_workers.py end to end on the bench's corpus (a
# bench/gpu_session_032.sh row leaves it in /tmp/corpus-bench; with PAGES=NxP set, this script generates that
# shape there itself, as the bench would, and runs on it alone) and its full-size checkpoint, the
# launcher and real runner processes, not the bench's. Dummy weights write no end token, so every page runs
# to --max-tokens (TOKENS, 576 = the mean of the bench's 128-1024) with the runaway re-read off.
# Usage: bash bench/gpu_launch_032.sh NAME WORKERS_PER_GPU [more runner flags]
# Writes $OUT/NAME.log (the launcher), NAME-run_report.json (the merged report), NAME-parts.tar.gz (the
# shard reports and every log), NAME-smi.csv (nvidia-smi every 0.5 s) and NAME-mem.csv (the host's used RAM
# every second); prints the merged summary (pages/s
# in total and while engines were up) and the GPU's busy share.
set -uo pipefail
export PYTHONPATH=/tmp/site:/tmp/site-x:$PWD PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/tmp/out}
TOKENS=${TOKENS:-576}
ROW_TIMEOUT=${ROW_TIMEOUT:-400}
name=$1 per=$2; shift 2
out=/tmp/launch-$name
[ -d /tmp/corpus-bench ] || [ -n "${PAGES:-}" ] || { echo "gpu_launch: no /tmp/corpus-bench: set PAGES or run a bench row first"; exit 1; }
corpus=/tmp/corpus-bench
if [ -n "${PAGES:-}" ]; then
  corpus=/tmp/corpus-bench/scan-$PAGES-b8    # the bench's own folder for that shape (bench.prepare_corpus)
  python3 bench/corpus.py "$corpus" "$PAGES" || exit 1
fi
[ -f /tmp/ckpt/config.json ] || python3 bench/make_full_ckpt.py /tmp/ckpt bench/deepseek_ocr_config.json >/dev/null
rm -rf "$out"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
  > "$OUT/$name-smi.csv" 2>/dev/null & smi=$!
# the host's used RAM every second (MiB): N workers of 256 pages in flight each hold ~35 GB (session 10)
(while sleep 1; do echo "$(date +%s),$(free -m | awk '/^Mem:/ { print $3 }')"; done) > "$OUT/$name-mem.csv" & mem=$!
start=$(date +%s)
timeout "$ROW_TIMEOUT" python3 launch_workers.py --gpus 0 --workers-per-gpu "$per" --no-env-file -- \
  --input-dir "$corpus" --output-dir "$out" --model /tmp/ckpt --load-format dummy \
  --max-tokens "$TOKENS" --runaway-retry off --attention-backend TRITON_ATTN --mm-encoder-attn-backend TORCH_SDPA \
  "$@" > "$OUT/$name.log" 2>&1
code=$?
kill "$smi" "$mem" 2>/dev/null
echo "== $name ($per per GPU $*): exit $code in $(( $(date +%s) - start )) s"
tail -20 "$OUT/$name.log" | cut -c1-300
# At most 8 files come back from a call: the merged report alone, the shard reports and logs in one tar.
[ -e "$out/run_report.json" ] && cp "$out/run_report.json" "$OUT/$name-run_report.json"
(cd "$out" && tar -czf "$OUT/$name-parts.tar.gz" run_report.shard-*.json logs 2>/dev/null)
for f in "$out"/logs/worker-*.log; do grep -m3 -E "engine: ready in|Traceback|Error" "$f" | cut -c1-250; done
# busy share over the samples while any engine held GPU memory (its load and the run, not the corpus)
awk -F', ' '$3 > 2000 { n++; s += $2 } END { if (n) printf "GPU busy %.1f%% over %d samples with an engine loaded\n", s / n, n }' \
  "$OUT/$name-smi.csv"
awk -F, '$2 > m { m = $2 } END { if (m) printf "host RAM used at most %.1f GiB\n", m / 1024 }' "$OUT/$name-mem.csv"
