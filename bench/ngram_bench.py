"""Per-step cost of the no-repeat n-gram guard: vLLM's NGramPerReqLogitsProcessor against the runner's
batched guard (ocr/engines/ngram.py, its V1 class and, where this vLLM has Model Runner V2's interface,
its V2 class), on the same token streams, checking on every timed step that all ban the same tokens.

  python bench/ngram_bench.py [--device cuda] [--rows 64,128,256] [--ngram 30,20] [--window 90]
                              [--steps 200] [--vocab 129280] [--json PATH]

Needs only torch and vllm (and Triton for the kernel rows). Exits 1 if any timed step bans
different tokens. Times are wall time per step with the device synchronized: update_state + apply for
the V1 classes, apply for V2 (whose token history the model runner writes on the device)."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def table_tags(vocab: int) -> list[int]:
    """Stand-ins for the 8 whitelisted table tags' ids: the top of the vocabulary."""
    return list(range(vocab - 8, vocab))
MAX_LEN = 4096


def load_guard_module():
    sys.path.insert(0, str(ROOT))
    from ocr.engines import ngram
    return ngram


class Stream:
    """A page's output: prose with now and then a table (cell tags every few tokens) or a loop (a span
    repeated over and over, what the guard is for)."""

    def __init__(self, rng: random.Random, vocab: int, tables: bool):
        self.rng, self.vocab, self.tables = rng, vocab, tables
        self.loop: list[int] = []
        self.pos = 0

    def next(self, out: list[int]) -> int:
        rng = self.rng
        if self.loop:
            token = self.loop[self.pos % len(self.loop)]
            self.pos += 1
            if rng.random() < 0.01:
                self.loop = []
            return token
        roll = rng.random()
        if roll < 0.01 and len(out) > 40:
            span = rng.randint(3, 40)
            self.loop, self.pos = out[-span:], 0
        if self.tables and roll < 0.3:
            return rng.choice(table_tags(self.vocab))
        return rng.randrange(self.vocab - 8)


def params_for(sp_cls, n: int, window: int, tables: bool, vocab: int):
    extra = {"ngram_size": n, "window_size": window}
    if tables:
        extra["whitelist_token_ids"] = table_tags(vocab)
    return sp_cls(temperature=0.0, extra_args=extra)


class V2State:
    """What Model Runner V2 hands its logits processors (LogitsProcRequestState): all_token_ids, prompt_len
    and total_len as device tensors, written here as _post_update_kernel does."""

    def __init__(self, rows: int, device: torch.device):
        self.device, self.max_num_reqs, self.vocab_size = device, rows, 0
        self.all_token_ids = types.SimpleNamespace(gpu=torch.zeros(rows, MAX_LEN, dtype=torch.int32, device=device))
        self.total_len = types.SimpleNamespace(gpu=torch.zeros(rows, dtype=torch.int32, device=device))
        self.prompt_len = types.SimpleNamespace(gpu=torch.zeros(rows, dtype=torch.int32, device=device))
        self.prompt = 16

    def load(self, row: int, out: list[int]) -> None:
        tokens = [0] * self.prompt + out
        self.all_token_ids.gpu[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        self.total_len.gpu[row] = len(tokens)
        self.prompt_len.gpu[row] = self.prompt

    def append(self, tokens: torch.Tensor) -> None:
        rows = torch.arange(tokens.shape[0], device=self.device)
        self.all_token_ids.gpu[rows, self.total_len.gpu.long()] = tokens.to(torch.int32)
        self.total_len.gpu += 1


def run_case(mod, rows: int, n: int, window: int, steps: int, warmup: int, vocab: int, device, seed: int) -> dict:
    from vllm import SamplingParams
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
    from vllm.v1.sample.logits_processor import BatchUpdate

    rng = random.Random(seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # ours_*: one Triton kernel where ngram_kernel.usable (CUDA); ours_*_tensor: the tensor operations
    kernel = mod.ngram_kernel.usable(torch.empty(1, device=device))
    variants = ("", "_tensor") if kernel else ("",)
    impls = {"vllm": NGramPerReqLogitsProcessor(None, device, device.type == "cuda")}
    impls.update({f"ours_v1{v}": mod.NGramGuardV1(None, device, device.type == "cuda") for v in variants})
    v2 = None
    if mod.NGramGuardV2 is not None:
        v2 = V2State(rows, device)
        impls.update({f"ours_v2{v}": mod.NGramGuardV2(None, v2) for v in variants})
    v2_names = [name for name in impls if name.startswith("ours_v2")]
    streams, outs, params = [], [], []

    def new_request(row: int) -> None:
        tables = rng.random() < 0.5
        stream = Stream(rng, vocab, tables)
        out: list[int] = []
        for _ in range(rng.randint(0, 400)):              # requests join mid-page too (resumed, or long)
            out.append(stream.next(out))
        sp = params_for(SamplingParams, n, window, tables, vocab)
        if row < len(streams):
            streams[row], outs[row], params[row] = stream, out, sp
        else:
            streams.append(stream), outs.append(out), params.append(sp)
        if v2 is not None:
            v2.load(row, out)
            for name in v2_names:
                impls[name].add_request(row, sp)

    for row in range(rows):
        new_request(row)
    update = BatchUpdate(rows, [], [(i, params[i], None, outs[i]) for i in range(rows)], [])
    ctx = None
    if v2 is not None:
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext
        idx = torch.arange(rows, dtype=torch.int32, device=device)
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.arange(rows, dtype=np.int32),
                            expanded_local_pos=torch.zeros_like(idx), input_ids=idx, pos=idx,
                            seq_lens_upper_bound_np=np.zeros(rows, dtype=np.int32))
    times = {name: [] for name in impls}
    host = time_host_part(impls["ours_v1"])
    mismatches = banned = 0
    base = torch.empty(rows, vocab, device=device)
    copies = {name: torch.empty_like(base) for name in impls}
    for step in range(warmup + steps):
        for name in v2_names:
            impls[name].apply_staged_writes()
        base.normal_()
        for name, proc in impls.items():
            copies[name].copy_(base)
            if name.endswith("_tensor"):
                os.environ[mod.ngram_kernel.ENV] = "0"
            sync()
            start = time.perf_counter()
            if name in v2_names:
                proc.apply(copies[name], ctx)
            else:
                proc.update_state(update)
                proc.apply(copies[name])
            sync()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
            os.environ.pop(mod.ngram_kernel.ENV, None)
        want = copies["vllm"]
        if step >= warmup:
            banned += int(torch.isinf(want).sum())
            mismatches += sum(not torch.equal(copies[name], want) for name in impls if name != "vllm")
        # next step: one token per row; now and then a page finishes and a new one takes its row
        update = None
        finished = [r for r in range(rows) if rng.random() < 0.004]
        tokens = [streams[r].next(outs[r]) for r in range(rows)]
        for r in range(rows):
            outs[r].append(tokens[r])
        if v2 is not None:
            v2.append(torch.tensor(tokens, device=device))
        for r in finished:
            new_request(r)
        if finished:
            update = BatchUpdate(rows, [], [(r, params[r], None, outs[r]) for r in finished], [])
    ms = {name: statistics.mean(t) * 1e3 for name, t in times.items()}
    return {"rows": rows, "ngram": n, "window": window, "steps": steps, "vocab": vocab,
            "ms_per_step": ms, "median_ms": {name: statistics.median(t) * 1e3 for name, t in times.items()},
            "speedup_vs_vllm": {name: ms["vllm"] / v for name, v in ms.items() if name != "vllm"},
            "ours_v1_host_ms": statistics.mean(host[-steps:]) * 1e3,
            "banned_per_step": banned / steps, "mismatched_steps": mismatches}


def time_host_part(guard) -> list[float]:
    """Wraps the V1 guard's per-step host work (each row's newest token from its output list)."""
    spent: list[float] = []
    inner = guard._new_tokens

    def timed(size):
        start = time.perf_counter()
        result = inner(size)
        spent.append(time.perf_counter() - start)
        return result

    guard._new_tokens = timed
    return spent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", default="64,128,256")
    ap.add_argument("--ngram", default="30,20")
    ap.add_argument("--window", type=int, default=90)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=129280, help="DeepSeek-OCR's vocabulary size")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import vllm
    mod = load_guard_module()
    device = torch.device(args.device)
    results = []
    print(f"vllm {vllm.__version__}, torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, threads {torch.get_num_threads()}")
    print(f"{'rows':>5} {'n':>3} {'vLLM ms':>9} {'ours V1 ms':>11} {'ours V2 ms':>11} {'V1 x':>7} {'V2 x':>7}"
          f" {'V1 host ms':>10} {'bans/step':>9} {'mismatch':>8}")
    for rows in map(int, args.rows.split(",")):
        for n in map(int, args.ngram.split(",")):
            r = run_case(mod, rows, n, args.window, args.steps, args.warmup, args.vocab, device, args.seed)
            ms, x = r["ms_per_step"], r["speedup_vs_vllm"]
            print(f"{rows:>5} {n:>3} {ms['vllm']:>9.3f} {ms['ours_v1']:>11.3f} {ms.get('ours_v2', float('nan')):>11.3f}"
                  f" {x['ours_v1']:>7.1f} {x.get('ours_v2', float('nan')):>7.1f} {r['ours_v1_host_ms']:>10.3f}"
                  f" {r['banned_per_step']:>9.1f}"
                  f" {r['mismatched_steps']:>8}", flush=True)
            results.append(r)
    report = {"vllm": vllm.__version__, "torch": torch.__version__, "device": str(device),
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "args": vars(args), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    bad = sum(r["mismatched_steps"] for r in results)
    if bad:
        print(f"FAIL: {bad} timed steps where our guard banned other tokens than vLLM's", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
