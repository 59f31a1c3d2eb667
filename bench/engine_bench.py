"""Raw vLLM engine throughput for DeepSeek-OCR pages on a GPU (dummy weights, full-size config).

One engine per process: an engine death ends only that process. Modes:

  engine_bench.py proc  --model DIR           input-processor cost per A4 page on this CPU
                                              (serial, thread pool, process pool)
  engine_bench.py engine --model DIR [knobs]  one engine, several runs; prints RESULT/CONFIG JSON lines
  engine_bench.py plan NAME --model DIR --deadline EPOCH
                                              a fixed sequence of the two modes above, each in its
                                              own subprocess with a timeout (what the device calls run)

Engine runs bypass LLM.generate's serial input processing: a few distinct pages are rendered once
through vLLM's own InputProcessor (the cost is measured and printed), and each run submits copies of
them, every copy with its own encoder-cache identifier, so the vision encoder runs for every page.
`--runs` lists K:TOKENS:NGRAM triples: K pages in flight (kept topped up from the client side;
K >= max_num_seqs submits every page at once and lets the scheduler cap it), TOKENS output tokens
per page (ignore_eos), NGRAM 1/0 = DeepSeek-OCR's n-gram guard on/off for that run's requests
(the processor class is registered in every engine; a request without ngram_size skips it).
`--e2e N:TOKENS` adds one plain LLM.generate run over N fresh pages (processor inline).
"""
import argparse
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from ocr.models import PROMPTS  # noqa: E402

PROMPT = PROMPTS["grounded"]


def page_image(seed, w=1241, h=1754):
    """A4 at 150 DPI with ~58 lines of text; distinct per seed."""
    from PIL import Image, ImageDraw
    rnd = random.Random(seed)
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    for y in range(120, h - 120, 28):
        d.text((100, y), " ".join(f"word{rnd.randint(0, 99999)}" for _ in range(14)), fill="black")
    return im


def emit(kind, **kw):
    print(kind + " " + json.dumps(kw), flush=True)


# ---------------------------------------------------------------- processor cost
_PROC = None


def _proc_init(model):
    global _PROC
    import torch
    torch.set_num_threads(1)
    from transformers import AutoTokenizer
    from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor
    _PROC = DeepseekOCRProcessor(tokenizer=AutoTokenizer.from_pretrained(model))


def _proc_one(im):
    out = _PROC(prompt=PROMPT, images=[im])
    return len(out["input_ids"])


def proc_mode(a):
    import torch
    from concurrent.futures import ThreadPoolExecutor
    import multiprocessing as mp
    imgs = [page_image(1000 + i) for i in range(64)]
    _proc_init(a.model)  # also sets torch threads = 1, as vLLM's renderer does around the processor
    _proc_one(imgs[0])
    t = time.perf_counter()
    n = 16
    toks = [_proc_one(im) for im in imgs[:n]]
    s = (time.perf_counter() - t) / n
    emit("RESULT", what="processor_serial", torch_threads=1, s_per_page=round(s, 4),
         pages_per_s=round(1 / s, 2), prompt_tokens=toks[0], cpus=os.cpu_count())
    torch.set_num_threads(min(16, os.cpu_count()))
    t = time.perf_counter()
    for im in imgs[:8]:
        _proc_one(im)
    s = (time.perf_counter() - t) / 8
    emit("RESULT", what="processor_serial", torch_threads=torch.get_num_threads(), s_per_page=round(s, 4),
         pages_per_s=round(1 / s, 2))
    torch.set_num_threads(1)
    for w in (2, 4, 8, 16):
        with ThreadPoolExecutor(w) as ex:
            list(ex.map(_proc_one, imgs[:w]))
            t = time.perf_counter()
            list(ex.map(_proc_one, imgs[:48]))
            dt = time.perf_counter() - t
        emit("RESULT", what="processor_threads", workers=w, pages=48, pages_per_s=round(48 / dt, 2))
    ctx = mp.get_context("fork")
    for w in (8, 16):
        with ctx.Pool(w, initializer=_proc_init, initargs=(a.model,)) as pool:
            pool.map(_proc_one, imgs[:w])
            t = time.perf_counter()
            pool.map(_proc_one, imgs[:64])
            dt = time.perf_counter() - t
        emit("RESULT", what="processor_processes", workers=w, pages=64, pages_per_s=round(64 / dt, 2),
             note="pickled PIL in, token count out (tensors not shipped back)")


# ---------------------------------------------------------------- engine
def max_loop_run(ids, n=30, max_dist=60):
    """True if some n-gram repeats at distance <= max_dist (what the guard with window n+max_dist bans)."""
    import numpy as np
    a = np.asarray(ids)
    for d in range(1, max_dist + 1):
        if len(a) <= d + n:
            break
        eq = (a[:-d] == a[d:]).astype(np.int8)
        c = np.convolve(eq, np.ones(n, dtype=np.int8), mode="valid")
        if (c >= n).any():
            return True
    return False


def llm_kwargs(a):
    """The runner's LLM(...) recipe (ocr.engines.vllm.engine_kwargs: architecture, head size, n-gram guard,
    platform defaults) for these knobs, with the knobs the runner has no flag for as overrides."""
    from pathlib import Path
    from ocr.config import Config
    from ocr.engines.vllm import MAX_MODEL_LEN, detect_platform, engine_kwargs
    cfg = Config(input_dir=Path("."), output_dir=Path(a.out), model=a.model, load_format="dummy",
                 kv_cache_dtype=a.kv, batch_pages=a.max_num_seqs, gpu_memory_utilization=a.gpu_util,
                 block_size=a.block_size or None, attention_backend=None if a.attn == "auto" else a.attn,
                 enforce_eager=a.eager)
    override = {}
    if a.max_model_len != MAX_MODEL_LEN:
        override["max_model_len"] = a.max_model_len
    if a.mm_attn != "auto":
        override["mm_encoder_attn_backend"] = a.mm_attn
    if a.async_sched != "auto":
        override["async_scheduling"] = a.async_sched == "on"
    if a.mnbt:
        override["max_num_batched_tokens"] = a.mnbt
    override.update(json.loads(a.engine_kwargs))
    kw, _ = engine_kwargs(cfg, detect_platform(), override)
    return kw


def engine_mode(a):
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    import msgspec
    import vllm
    t_start = time.time()
    budget_end = t_start + a.budget if a.budget else float("inf")
    kw = llm_kwargs(a)
    shown = {k: v for k, v in kw.items() if k not in ("logits_processors",)}
    shown["logits_processors"] = [c.__name__ for c in kw.get("logits_processors", [])]
    emit("LLM_KWARGS", tag=a.tag, **shown)
    t0 = time.perf_counter()
    llm = LLM(**kw)
    load_s = time.perf_counter() - t0
    eng = llm.llm_engine
    vc = eng.vllm_config
    def g(obj, *path):
        try:
            for name in path:
                obj = getattr(obj, name)
            return obj if isinstance(obj, (int, float, str, bool, type(None))) else str(obj)
        except Exception:  # noqa: BLE001
            return None
    cfg = dict(tag=a.tag, vllm=vllm.__version__, load_s=round(load_s, 1),
               max_num_batched_tokens=g(vc, "scheduler_config", "max_num_batched_tokens"),
               async_scheduling=g(vc, "scheduler_config", "async_scheduling"),
               block_size=g(vc, "cache_config", "block_size"), kv_cache_dtype=g(vc, "cache_config", "cache_dtype"),
               num_gpu_blocks=g(vc, "cache_config", "num_gpu_blocks"),
               cudagraph_mode=g(vc, "compilation_config", "cudagraph_mode"),
               max_cudagraph_capture_size=g(vc, "compilation_config", "max_cudagraph_capture_size"),
               enforce_eager=g(vc, "model_config", "enforce_eager"),
               attention_backend=g(vc, "attention_config", "backend"),
               model_head_size=vc.model_config.get_head_size(),
               text_config_head_dim=g(vc, "model_config", "hf_text_config", "head_dim"))
    try:
        cfg["kv_tokens"] = cfg["num_gpu_blocks"] * cfg["block_size"]
    except Exception:  # noqa: BLE001
        pass
    emit("CONFIG", **cfg)

    tok = llm.get_tokenizer()
    wl = [tok.convert_tokens_to_ids("<td>"), tok.convert_tokens_to_ids("</td>")]
    tasks = eng.get_supported_tasks()

    def params(n_tok, ngram):
        extra = {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": wl} if ngram else None
        sp = SamplingParams(temperature=0.0, max_tokens=n_tok, ignore_eos=True, skip_special_tokens=False,
                            extra_args=extra)
        sp.output_kind = RequestOutputKind.FINAL_ONLY
        return sp

    # Render distinct pages once through vLLM's own input processor (what LLM.generate does serially).
    imgs = [page_image(i) for i in range(a.distinct)]
    base = []
    t = time.perf_counter()

    def render(rid, im, sp):  # what LLM.generate does per prompt: renderer, then InputProcessor
        prompt = {"prompt": PROMPT, "multi_modal_data": {"image": im}}
        if hasattr(llm, "_preprocess_cmpl_one"):
            prompt = llm._preprocess_cmpl_one(prompt)
        return eng.input_processor.process_inputs(rid, prompt, sp, supported_tasks=tasks)

    for i, im in enumerate(imgs):
        base.append(render(f"base{i}", im, params(16, 0)))
    render_s = (time.perf_counter() - t) / len(imgs)
    emit("RESULT", tag=a.tag, what="vllm_render_s_per_page", value=round(render_s, 4),
         pages_per_s=round(1 / render_s, 2), prompt_tokens=len(base[0].prompt_token_ids))

    counter = [0]

    def make(i, sp):
        counter[0] += 1
        b = base[i % len(base)]
        feats = [dataclasses.replace(f, identifier=f"{f.identifier}-u{counter[0]}") for f in b.mm_features]
        return msgspec.structs.replace(b, request_id=f"q{counter[0]}", sampling_params=sp, mm_features=feats,
                                       arrival_time=time.time(), external_req_id=None)

    def run(n_pages, k, n_tok, ngram):
        sp_proc = render("sp", imgs[0], params(n_tok, ngram)).sampling_params
        try:
            eng.reset_encoder_cache()
        except Exception as e:  # noqa: BLE001
            print("reset_encoder_cache failed:", e, flush=True)
        outs = []
        nxt = inflight = 0
        t = time.perf_counter()
        while nxt < n_pages and inflight < k:
            r = make(nxt, sp_proc)
            eng.add_request(r.request_id, r, sp_proc)
            nxt += 1
            inflight += 1
        while eng.has_unfinished_requests():
            for o in eng.step():
                if o.finished:
                    outs.append(o)
                    inflight -= 1
            while nxt < n_pages and inflight < k:
                r = make(nxt, sp_proc)
                eng.add_request(r.request_id, r, sp_proc)
                nxt += 1
                inflight += 1
        dt = time.perf_counter() - t
        gen = sum(len(o.outputs[0].token_ids) for o in outs)
        sample = outs[:48]
        loops = sum(max_loop_run(list(o.outputs[0].token_ids)) for o in sample)
        return dt, gen, len(outs), loops, len(sample)

    # warm-up: first encoder/prefill shapes, Triton JIT of large prefill chunks
    dt, gen, n, _, _ = run(min(64, a.max_num_seqs), 64, 32, 1)
    emit("WARMUP", tag=a.tag, seconds=round(dt, 1))

    specs = [s for s in a.runs.split(",") if s]
    rate = {}  # out tokens per page -> last measured pages/s
    for spec in specs:
        k, n_tok, ngram = (int(x) for x in spec.split(":"))
        k_eff = min(k, a.max_num_seqs)
        n_pages = max(a.min_pages, a.waves * k_eff)
        est = n_pages / rate[n_tok] * 1.3 if n_tok in rate else n_pages * n_tok / max(a.est_tok_s, 1) + n_pages * 0.03
        if time.time() + est > budget_end:
            emit("SKIP", tag=a.tag, run=spec, reason=f"budget (est {est:.0f}s)")
            continue
        dt, gen, n, loops, nsample = run(n_pages, k if k < a.max_num_seqs else 10 ** 9, n_tok, ngram)
        rate[n_tok] = min(rate.get(n_tok, 1e9), n / dt)
        emit("RESULT", tag=a.tag, what="engine", kv=a.kv, eager=a.eager, block_size=a.block_size,
             async_sched=cfg["async_scheduling"], max_num_seqs=a.max_num_seqs, in_flight=k_eff, ngram=ngram,
             pages=n, out_tokens_per_page=n_tok, seconds=round(dt, 2), pages_per_s=round(n / dt, 2),
             out_tok_per_s=round(gen / dt, 1), looping_outputs=f"{loops}/{nsample}", load_s=round(load_s, 1))

    if a.e2e:
        n_pages, n_tok = (int(x) for x in a.e2e.split(":"))
        est = n_pages * 0.15 + 20
        if time.time() + est > budget_end:
            emit("SKIP", tag=a.tag, run="e2e", reason="budget")
        else:
            fresh = [page_image(50000 + i) for i in range(n_pages)]
            sp = SamplingParams(temperature=0.0, max_tokens=n_tok, ignore_eos=True, skip_special_tokens=False,
                                extra_args={"ngram_size": 30, "window_size": 90, "whitelist_token_ids": wl})
            t = time.perf_counter()
            outs = llm.generate([{"prompt": PROMPT, "multi_modal_data": {"image": im}} for im in fresh], sp,
                                use_tqdm=False)
            dt = time.perf_counter() - t
            gen = sum(len(o.outputs[0].token_ids) for o in outs)
            emit("RESULT", tag=a.tag, what="e2e_LLM.generate", kv=a.kv, max_num_seqs=a.max_num_seqs, ngram=1,
                 pages=len(outs), out_tokens_per_page=n_tok, seconds=round(dt, 2),
                 pages_per_s=round(len(outs) / dt, 2), out_tok_per_s=round(gen / dt, 1))
    emit("DONE", tag=a.tag, total_s=round(time.time() - t_start, 1))
    os._exit(0)  # skip the slow engine shutdown


# ---------------------------------------------------------------- plans (device calls)
def engine_cmd(model, tag, runs, extra=(), e2e=None):
    c = [sys.executable, os.path.join(HERE, "engine_bench.py"), "engine", "--model", model, "--tag", tag,
         "--runs", runs] + list(extra)
    if e2e:
        c += ["--e2e", e2e]
    return c


RUNS_TOP = "256:1024:1,256:256:1,256:1024:0,256:256:0"
RUNS_FP8 = "256:1024:1,256:256:1,256:1024:0"
RUNS_SWEEP = "128:1024:1,64:1024:1,128:256:1,64:256:1"
RUNS_PROBE = "32:64:1,256:256:1"
FA3 = ["--attn", "auto", "--mm-attn", "auto", "--block-size", "0"]  # vLLM's own choices
FIX: list = []   # was --fix-head-dim: the runner's recipe (engine_kwargs) now always sets the real head size

# name: list of (tag, extra argv or callable(state) -> argv/None, runs, e2e, min seconds to start, cap seconds)
PLANS = {
    "A": [  # 2026-11-23 call 1: TRITON_ATTN + block 256 WITHOUT the head_dim fix; both engines died
        ("proc", None, None, None, 60, 100),
        ("bf16_graphs", [], "256:1024:1,256:256:1", None, 200, 250),
        ("bf16_eager", ["--eager"], "256:1024:1,256:256:1", None, 150, 250),
    ],
    "C": [  # call 2: with the fix, vLLM's own backends (FA3, block 16) vs TRITON_ATTN + block 256
        ("fa3_fix_bf16", FA3 + FIX, RUNS_TOP, None, 150, 250),
        ("triton_fix_bf16", FIX, RUNS_TOP, "128:256", 150, 10 ** 6),
    ],
    "D": [  # call 3: the winner (WIN) with FP8 KV and the in-flight sweep; TRITON + block 16
        ("WIN_fix_fp8", "WIN", RUNS_FP8, None, 150, 230),
        ("WIN_fix_bf16_sweep", "WIN", RUNS_SWEEP, "E2E", 150, 230),
        ("triton_fix_bs16", FIX + ["--block-size", "0"], RUNS_PROBE, None, 100, 150),
    ],
}


def plan_mode(a):
    state_f = "/tmp/bench_state.json"
    state = json.load(open(state_f)) if os.path.exists(state_f) else {}
    for tag, extra, runs, e2e, need, cap in PLANS[a.name]:
        if extra == "WIN":
            win = "fa3" if state.get("fa3_fix_bf16") == "ok" else "triton"
            extra = (FA3 if win == "fa3" else []) + FIX
            tag = tag.replace("WIN", win)
            if tag.endswith("fp8"):
                extra = extra + ["--kv", "fp8"]
        if e2e == "E2E":
            e2e = None if state.get("e2e_done") else "128:256"
        left = a.deadline - time.time()
        if left < need:
            emit("SKIP", tag=tag, reason=f"only {left:.0f}s left")
            continue
        tmo = int(min(cap, left - 5))
        if extra is None:
            cmd = [sys.executable, os.path.join(HERE, "engine_bench.py"), "proc", "--model", a.model]
        else:
            cmd = engine_cmd(a.model, tag, runs, list(extra) + ["--budget", str(tmo - 20)], e2e)
        print(f"=== {tag}: timeout {tmo}s: {' '.join(cmd[1:])}", flush=True)
        t = time.time()
        logf = f"/tmp/bench_{tag}.log"
        with open(logf, "w") as lf:
            p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = p.wait(timeout=tmo)
            except subprocess.TimeoutExpired:
                rc = "timeout"
            try:  # the engine-core child too: its own process group, started here
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        for _ in range(30):  # let the driver free the dead engine's GPU memory before the next one
            q = subprocess.run("nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits", shell=True,
                               stdout=subprocess.PIPE, text=True).stdout.strip()
            if not q or int(q.splitlines()[0]) < 2000:
                break
            time.sleep(1)
        out = open(logf, errors="replace").read()
        with open(os.path.join(a.out, "log"), "a") as f:
            f.write(f"\n===== {tag} rc={rc} {time.time() - t:.0f}s\n{out}")
        ok = rc == 0 and "DONE " in out
        state[tag] = "ok" if ok else "failed"
        if '"e2e_LLM.generate"' in out:
            state["e2e_done"] = True
        json.dump(state, open(state_f, "w"))
        lines = [l for l in out.splitlines() if l.split(" ", 1)[0] in
                 ("RESULT", "CONFIG", "SKIP", "DONE", "WARMUP", "LLM_KWARGS")]
        with open(os.path.join(a.out, "results.jsonl"), "a") as f:
            for l in lines:
                f.write(l + "\n")
        print(f"=== {tag}: rc={rc} in {time.time() - t:.0f}s {'OK' if ok else 'FAILED'}", flush=True)
        for l in lines:
            if not l.startswith("LLM_KWARGS"):
                print(l, flush=True)
        if not ok and extra is not None:
            keys = ("Error", "error", "Traceback", "illegal", "divide", "CUDA", "Killed", "signal", "died")
            bad = [l for l in out.splitlines() if any(k in l for k in keys)]
            print("--- failure lines (last 12):", flush=True)
            for l in bad[-12:]:
                print("   ", l[:300], flush=True)
            print("--- last 6 lines:", flush=True)
            for l in out.splitlines()[-6:]:
                print("   ", l[:300], flush=True)
            dm = subprocess.run("dmesg 2>/dev/null | tail -3", shell=True, stdout=subprocess.PIPE, text=True).stdout
            print("--- dmesg tail:\n" + dm, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["proc", "engine", "plan"])
    ap.add_argument("name", nargs="?", default="A")
    ap.add_argument("--model", required=True)
    ap.add_argument("--tag", default="engine")
    ap.add_argument("--kv", default="auto")
    ap.add_argument("--block-size", type=int, default=256, help="0 = vLLM's default (16)")
    ap.add_argument("--attn", default="TRITON_ATTN", help="'auto' = vLLM's choice (FA3 on Hopper)")
    ap.add_argument("--mm-attn", default="TORCH_SDPA", help="'auto' = vLLM's choice")
    ap.add_argument("--async-sched", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--engine-kwargs", default="{}", metavar="JSON", help="LLM(...) overrides over the recipe")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--gpu-util", type=float, default=0.9)
    ap.add_argument("--mnbt", type=int, default=0)
    ap.add_argument("--runs", default="256:256:1")
    ap.add_argument("--waves", type=int, default=2, help="pages per run = waves x in-flight")
    ap.add_argument("--min-pages", type=int, default=128)
    ap.add_argument("--distinct", type=int, default=24, help="distinct rendered pages reused across copies")
    ap.add_argument("--e2e", default="")
    ap.add_argument("--budget", type=float, default=0, help="seconds; later runs are skipped past it")
    ap.add_argument("--est-tok-s", type=float, default=6000, help="pessimistic rate for the budget check")
    ap.add_argument("--deadline", type=float, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    a = ap.parse_args()
    {"proc": proc_mode, "engine": engine_mode, "plan": plan_mode}[a.mode](a)


if __name__ == "__main__":
    main()
