#!/usr/bin/env bash
# On the lent H200, after `. bench/gpu_prep_032.sh` (vLLM 0.32, torch 2.13 in /tmp/site): bench/bench.py rows
# named on the command line, each one engine load, all on the same generated corpus, each logged in full
# under $OUT and summed up on stdout. A row is NAME:RUNNER:EXTRA
#   RUNNER  v2 (vLLM's default on CUDA) or v1 (VLLM_USE_V2_MODEL_RUNNER=0)
#   EXTRA   more bench flags, commas for spaces (e.g. --ngram-size,0 or --ngram-impl,vllm)
# Special rows: `guard` runs bench/ngram_bench.py on the GPU; `profile` (as EXTRA word `+profile`)
# samples the engine core with py-spy for 12 s of the steady engine-core run (bench/profile_split.py);
# `+rprofile` samples the engine core and the runner's own process (all its threads) in the runner phase, then
# the runner's process for 12 s more with --gil (the thread holding the GIL); `+dual`: two bench processes
# share the GPU (each the whole corpus, the runner alone, half the GPU's memory, half the CPU workers), their
# runner phases started together at a barrier and summed by bench/combine_rows.py into NAME.json.
set -uo pipefail
export PYTHONPATH=/tmp/site:/tmp/site-x:$PWD PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/tmp/out}
PAGES=${PAGES:-8x32}
TOKENS=${TOKENS:-128-1024}
BATCH=${BATCH:-256}                  # "default": no --batch-pages, the runner's GPU-sized default
ROW_TIMEOUT=${ROW_TIMEOUT:-400}      # seconds per row (bench.py's --budget-s is 20 s less unless EXTRA sets it)
# FlashAttention-2/3 kernels are stripped from the carried vLLM (scripts/gpu_carry.sh): Triton attention
# for the decoder, torch SDPA for the vision encoder, in every row alike.
ATTN=(--attention-backend TRITON_ATTN --mm-encoder-attn-backend TORCH_SDPA)
[ -f /tmp/ckpt/config.json ] || python3 bench/make_full_ckpt.py /tmp/ckpt bench/deepseek_ocr_config.json >/dev/null

spy() {  # pid file [py-spy flags]: 12 s of py-spy samples of every thread of one process
  # --nonblocking: py-spy otherwise pauses the process at each sample, and the rows' figures are measured
  # while it samples (session 10's runner phase had both processes under it for 12 of its 47 s).
  local pid=$1 file=$2; shift 2
  local args=(record --format raw --idle --threads --full-filenames --nonblocking -r 50 -d 12 "$@" -p "$pid"
              -o "$file")
  /tmp/site/bin/py-spy "${args[@]}" >/dev/null 2>&1 || py-spy "${args[@]}" >/dev/null 2>&1
}

profile() {  # log file, name, phase (core|runner): wait for that phase, then sample the engine core for 12 s
  local log=$1 name=$2 phase=${3:-core} pid mark="engine core: .* pre-processed pages" wait_s=6
  [ "$phase" = runner ] && { mark="runner: starting"; wait_s=8; name=$name-runner; }
  for _ in $(seq 600); do grep -q "$mark" "$log" 2>/dev/null && break; sleep 1; done
  sleep $wait_s
  pid=$(pgrep -f "VLLM::EngineCore" | head -1)
  [ -n "$pid" ] || { echo "profile: no engine core"; return; }
  # ^python3: the `timeout 400 python3 bench/bench.py` wrapping it names bench.py too (and has a lower pid)
  local runner_pid; runner_pid=$(pgrep -f "^python3 bench/bench.py" | head -1)
  if [ "$phase" = runner ]; then spy "$runner_pid" "$OUT/$name-main-pyspy.txt" & fi
  spy "$pid" "$OUT/$name-pyspy.txt"
  wait
  # Then only the thread holding the GIL (--gil): in session 10's runner phase all eight input threads and
  # the monitor's /proc reads looked busy, which waiting for the GIL looks like without --gil.
  [ "$phase" = runner ] && spy "$runner_pid" "$OUT/$name-main-gil-pyspy.txt" --gil
  python3 bench/profile_split.py "$OUT/$name-pyspy.txt" --json "$OUT/$name-split.json"
}

bench_row() {  # json log flags...: one bench.py process of a row, on the shared corpus
  local json=$1 log=$2; shift 2
  # shellcheck disable=SC2086  # flags is a list
  env "${env[@]}" timeout "$ROW_TIMEOUT" python3 bench/bench.py --model /tmp/ckpt --load-format dummy \
    --generate "$PAGES" --corpus-dir /tmp/corpus-bench --force-tokens "$TOKENS" "${batch[@]}" --kv-cache-dtype fp8 \
    --render-workers 8 --preprocess-workers 8 --engine-runs core --proc-sample 2 --budget-s $((ROW_TIMEOUT - 20)) \
    "${ATTN[@]}" --json "$json" "$@" > "$log" 2>&1
}

dual() {  # name flags: two processes on the one GPU; the second loads once the first has (vLLM sizes its
  # KV cache from the GPU memory it finds free), both wait at the barrier before the runner phase
  local name=$1 flags=$2 bar=/tmp/barrier-$1 a b
  local two=(--engine-runs none --barrier "$bar:2" --gpu-memory-utilization 0.44 --render-workers 4
             --preprocess-workers 6)
  rm -rf "$bar"
  # shellcheck disable=SC2086  # flags is a list
  bench_row "$OUT/$name-a.json" "$OUT/$name-a.log" "${two[@]}" $flags & a=$!
  for _ in $(seq "$ROW_TIMEOUT"); do
    grep -q "engine loaded in" "$OUT/$name-a.log" 2>/dev/null && break
    kill -0 $a 2>/dev/null || break
    sleep 1
  done
  # shellcheck disable=SC2086
  bench_row "$OUT/$name-b.json" "$OUT/$name-b.log" "${two[@]}" $flags & b=$!
  wait $a; echo "   $name-a: exit $?"
  wait $b; echo "   $name-b: exit $?"
  python3 bench/combine_rows.py "$OUT/$name-a.json" "$OUT/$name-b.json" --json "$OUT/$name.json"
  for side in a b; do grep -m1 "runner: {" "$OUT/$name-$side.log" | cut -c1-400; done
}

for job in "$@"; do
  start=$(date +%s)
  if [ "$job" = guard ]; then
    timeout 120 python3 bench/ngram_bench.py --device cuda --json "$OUT/ngram-bench.json" 2>&1 | tail -12
    echo "== guard: exit $? in $(( $(date +%s) - start )) s"
    continue
  fi
  IFS=: read -r name runner extra <<< "$job"
  env=()
  [ "$runner" = v1 ] && env=(VLLM_USE_V2_MODEL_RUNNER=0)
  flags=${extra//,/ }
  want_profile=0 phase=core
  [[ $flags == *+rprofile* ]] && { want_profile=1; phase=runner; flags=${flags//+rprofile/}; }
  [[ $flags == *+profile* ]] && { want_profile=1; flags=${flags//+profile/}; }
  batch=(--batch-pages "$BATCH")
  [ "$BATCH" = default ] && batch=()
  if [[ $flags == *+dual* ]]; then
    dual "$name" "${flags//+dual/}"
    echo "== $name ($runner $flags): in $(( $(date +%s) - start )) s"
    continue
  fi
  log="$OUT/$name.log"
  prof=
  if [ $want_profile = 1 ]; then profile "$log" "$name" "$phase" > "$OUT/$name-profile.txt" 2>&1 & prof=$!; fi
  # shellcheck disable=SC2086  # flags is a list
  bench_row "$OUT/$name.json" "$log" $flags
  echo "== $name ($runner $flags): exit $? in $(( $(date +%s) - start )) s"
  [ -n "$prof" ] && { sleep 1; kill "$prof" 2>/dev/null; wait "$prof" 2>/dev/null; }
  grep -m3 -E "V2 Model Runner|V1 Model Runner|model runner|guard" "$log" | cut -c1-200
  sed -n '/^=\{86\}$/,/^=\{86\}$/p' "$log" | grep -vE "^ {2}(main|threads|workers|bench|stage|[a-z_.+ ]+ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$)" | cut -c1-300
  [ -f "$OUT/$name-split.json" ] || [ -f "$OUT/$name-runner-split.json" ] && cat "$OUT/$name-profile.txt"
done
