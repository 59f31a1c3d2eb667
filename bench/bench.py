#!/usr/bin/env python
"""Throughput benchmark: the raw vLLM engine against the full runner, in one run and one engine load.

    python bench/bench.py --model DIR (--pdfs DIR | --generate 8x32) [--force-tokens 256|128-1024] [--json OUT.json]
    python bench/bench.py --memory-scaling [--sizes 10,100,1000]

Engine mode, in this order, all in this process:
  1. corpus   --pdfs DIR, or --generate N_PDFSxPAGES (A4 scan-like pages, every --blank-every-th blank)
  2. stages   every page rendered with the runner's own ocr.render.render_page at the runner's DPI and
              blank-checked with ocr.blank.is_mostly_blank (blank pages are left out, as the runner
              leaves them out); vLLM's DeepseekOCRProcessor timed on a sample of pages
  3. load     one ocr.engines.vllm.VllmEngine from the runner's Config (the runner's own flags, declared once
              in ocr/config.py; --load-format dummy for a weightless full-size checkpoint; --force-tokens N:
              max_tokens=N and ignore_eos in every run, LO-HI: per page, through VllmHooks; --engine-kwargs
              JSON: LLM(...) overrides for experiments)
  4. engine   the raw engine: all non-blank page images in ONE LLM.generate call with the runner's own
              sampling params (LLM.generate processes every input serially before its first step)
     core     (--engine-runs) the same pages with their inputs processed beforehand in threads, then
              added with LLMEngine.add_request and stepped to the end: the engine alone
     core-noguard  the same again in the same load, every request without the n-gram guard's extra_args
              (the guard's own cost, free of load-to-load noise; a logits processor that vLLM merely
              has loaded still costs what it costs while idle)
              --large-every K: every K-th page of the core runs is a Large-mode request (1280 view)
     core-vllmenc  the same again in the same load with vLLM's own vision-encoder code: the runner's
              host-sync fixes (ocr/engines/vision_encoder.py) switched off in the engine's workers for
              the run, through LLM.collective_rpc (needs VLLM_ALLOW_INSECURE_SERIALIZATION=1, set here);
              the mixed-batch split of Large pages under encoder graphs stays the runner's
              then ocr.finish.finish_page and the runner's journal/Markdown writes over those outputs
  5. runner   ocr.cli.run(cfg, engine_factory) over the same folder with a factory that hands out the
              already-loaded engine; the runner's time is split per stage (main thread: waiting for
              renders and engine steps, collecting post-processed pages, writes; beside it: input
              processing in the engine's threads, render + blank check in the render workers,
              post-processing and the runaway check in the post workers)
It prints pages/s and output tokens/s of each (and the steady rate: pages finished between a quarter and
three quarters of the run, which leaves out the filling of the batch and its draining tail), the ratios runner/engine, per-stage CPU seconds, peak RSS
(getrusage, children included, and sampled per phase) and GPU utilization per phase (nvidia-smi, when
there is one). --json writes every figure (after each phase too); the same JSON is printed on the last
line (BENCH_JSON ...). bench/README.md has the CPU and GPU recipes.

Memory mode (--memory-scaling): the runner with a fast scripted engine (no vLLM) on one generated PDF of
each size, each in a fresh subprocess; prints the peak RSS of each (issue 8: "peak RSS stays flat as PDF
length grows").
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import os
import platform as pyplatform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402  (bench/corpus.py)

MB = 1024 * 1024


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------------------- timers
@dataclasses.dataclass
class Stage:
    count: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0      # CPU time of the calling thread

    def add(self, wall: float, cpu: float, n: int = 1) -> None:
        self.count += n
        self.wall_s += wall
        self.cpu_s += cpu

    def to_json(self) -> dict[str, Any]:
        per = self.count or 1
        return {"count": self.count, "wall_s": round(self.wall_s, 4), "cpu_s": round(self.cpu_s, 4),
                "wall_s_per_item": round(self.wall_s / per, 5), "cpu_s_per_item": round(self.cpu_s / per, 5)}


class Timers:
    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}
        self._lock = threading.Lock()

    def add(self, name: str, wall: float, cpu: float = 0.0, n: int = 1) -> None:
        with self._lock:
            self.stages.setdefault(name, Stage()).add(wall, cpu, n)

    @contextmanager
    def timed(self, name: str, n: int = 1):
        w, c = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - w, time.thread_time() - c, n)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed_fn(*args: Any, **kwargs: Any) -> Any:
            with self.timed(name):
                return fn(*args, **kwargs)
        timed_fn.__wrapped__ = fn
        return timed_fn

    def to_json(self) -> dict[str, Any]:
        return {k: v.to_json() for k, v in self.stages.items()}


# --------------------------------------------------------------------------------------- memory / GPU
def rusage_peaks() -> dict[str, float]:
    """Peak RSS in MiB: this process, and the largest of its waited-for children (render workers, the
    engine core once reaped). ru_maxrss is in KiB on Linux."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / MB
    return {"self_mb": round(self_kb * scale, 1), "children_max_mb": round(child_kb * scale, 1)}


def reap_children(timeout_s: float = 30.0) -> None:
    """Wait for this process's multiprocessing children (the runner's render workers, shut down without
    waiting) to exit and reap them, so that RUSAGE_CHILDREN includes their peaks."""
    import multiprocessing

    def exists(pid: int) -> bool:     # a child someone else reaped (psutil, in VllmEngine.close) is gone
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not [p for p in multiprocessing.active_children() if p.pid and exists(p.pid)]:   # reaps the finished
            return
        time.sleep(0.1)


# psutil lists a process's descendants by reading every /proc/<pid>/stat in Python: on the H200 box (session
# 10) the monitor thread was in that listing in 31% of the runner phase's samples, holding the GIL the runner's
# input threads need. The list is read again only this often; each sample still reads every listed RSS.
CHILDREN_REFRESH_S = 2.0
_children: dict[str, Any] = {"at": -1e9, "procs": []}


def _tree_rss() -> tuple[float, float]:
    """(this process, this process + all descendants) resident memory in MiB, right now (descendants as
    listed at most CHILDREN_REFRESH_S ago)."""
    try:
        import psutil
        me = psutil.Process()
        own = me.memory_info().rss
        total = own
        for child in _descendants(me):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return own / MB, total / MB
    except Exception:
        with open("/proc/self/statm") as f:
            own = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
        return own, own


def _descendants(me: Any) -> list[Any]:
    if time.monotonic() - _children["at"] >= CHILDREN_REFRESH_S:
        _children.update(at=time.monotonic(), procs=me.children(recursive=True))
    return _children["procs"]


def cpu_mark() -> tuple[float, float, float, dict[str, tuple[int, float]]]:
    """(monotonic time, CPU seconds used so far by this process, by it with its descendants (those alive
    now: an ended child's time is not counted), by its threads by name), read back to back."""
    now, times, threads = time.monotonic(), os.times(), thread_cpu()
    own = times.user + times.system
    tree = own
    try:
        import psutil
        for child in _descendants(psutil.Process()):
            try:
                tree += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
    except Exception:
        pass
    return now, own, tree, threads


def thread_cpu() -> dict[str, tuple[int, float]]:
    """CPU seconds (user + system) of this process's live Python threads, by name with a trailing _N or -N
    dropped (vllm-input_0..7 are one entry): name -> (threads, seconds). Linux only ({} elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, tuple[int, float]] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()       # after "(comm)": state is fields[0]
            seconds = (int(fields[11]) + int(fields[12])) / tick   # utime, stime
        except (OSError, IndexError, ValueError, TypeError):
            continue
        name = re.sub(r"[_-]\d+$", "", thread.name.split(" (")[0])
        n, total = out.get(name, (0, 0.0))
        out[name] = (n + 1, total + seconds)
    return out


def query_gpus() -> list[tuple[float, float]] | None:
    """[(utilization %, memory used MiB)] per GPU, or None without nvidia-smi or a GPU."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    rows = []
    for line in out.stdout.strip().splitlines():
        try:
            util, mem = (float(x) for x in line.split(",")[:2])
        except ValueError:
            continue
        rows.append((util, mem))
    return rows or None


class Monitor:
    """Samples RSS (own and the whole process tree) and, where there is one, GPU utilization and memory,
    in a background thread, attributing each sample to the current phase."""

    def __init__(self, interval_s: float = 0.5, gpu: bool = True):
        self.interval_s = interval_s
        self.gpu = gpu and query_gpus() is not None
        self.phase = "start"
        self.phases: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def start(self) -> "Monitor":
        self._thread.start()
        return self

    def set_phase(self, name: str) -> None:
        _children["at"] = -1e9              # a phase may start processes: list them again
        self._sample(end=True)
        self.phase = name
        self._sample(start=True)

    def _sample(self, start: bool = False, end: bool = False) -> None:
        own, tree = _tree_rss()
        p = self.phases.setdefault(self.phase, {"samples": 0, "rss_self_max_mb": 0.0, "rss_tree_max_mb": 0.0,
                                                "gpu_util": [], "gpu_mem_max_mb": 0.0})
        # CPU over the phase: marked at its two ends only (set_phase, stop), not by the sampling thread
        if start:
            p["cpu_first"] = cpu_mark()
        if end:
            p["cpu_last"] = cpu_mark()
        p["samples"] += 1
        p["rss_self_max_mb"] = max(p["rss_self_max_mb"], own)
        p["rss_tree_max_mb"] = max(p["rss_tree_max_mb"], tree)
        if self.gpu:
            rows = query_gpus()
            if rows:
                p["gpu_util"].append(sum(r[0] for r in rows) / len(rows))
                p["gpu_mem_max_mb"] = max(p["gpu_mem_max_mb"], max(r[1] for r in rows))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception:  # a monitor must never take the benchmark down
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._sample(end=True)

    def cpu_json(self) -> dict[str, Any]:
        """Per phase: CPU cores used on average by this process and by its tree, and by this process's threads
        (by name: how many, and the cores they used together), where the phase was marked at both ends."""
        out = {}
        for k, v in self.phases.items():
            if "cpu_first" not in v or "cpu_last" not in v:
                continue
            (t0, c0, tc0, first), (t1, c1, tc1, last) = v["cpu_first"], v["cpu_last"]
            wall = t1 - t0
            if wall <= 0.5:
                continue
            out[k] = {"wall_s": round(wall, 1), "cores_self": round((c1 - c0) / wall, 2),
                      "cores_tree": round(max(0.0, tc1 - tc0) / wall, 2),
                      "threads": {name: {"threads": n, "cores": round((sec - first[name][1]) / wall, 2)}
                                  for name, (n, sec) in sorted(last.items()) if name in first}}
        return out

    def memory_json(self) -> dict[str, Any]:
        return {k: {"rss_self_max_mb": round(v["rss_self_max_mb"], 1),
                    "rss_tree_max_mb": round(v["rss_tree_max_mb"], 1)} for k, v in self.phases.items()}

    def gpu_json(self) -> dict[str, Any] | None:
        if not self.gpu:
            return None
        out = {}
        for k, v in self.phases.items():
            u = v["gpu_util"]
            out[k] = {"util_mean_pct": round(sum(u) / len(u), 1) if u else None,
                      "util_max_pct": max(u) if u else None, "mem_max_mb": v["gpu_mem_max_mb"],
                      "samples": len(u)}
        return out


# --------------------------------------------------------------------------------------- set-up
# The runner's flags with the bench's defaults: one reading per page, as in the LLM.generate run (dummy weights
# and forced token counts make every page a "runaway" for the recovery passes), a fresh output every run.
BENCH_DEFAULTS = {"runaway_retry": "off", "required_labels": "", "overwrite": True, "no_progress": True,
                  "log_level": "WARNING"}
BENCH_HELP = {"log_level": "the runner's log level during the runner phase",
              "max_tokens": "output tokens per page at most (without --force-tokens)"}


def make_config(a: argparse.Namespace, input_dir: Path, output_dir: Path, max_tokens: int) -> Any:
    """The runner's Config for this benchmark: the runner's fields as parsed, this corpus and output folder."""
    from ocr.config import Config, validate

    kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(Config) if hasattr(a, f.name)}
    return validate(Config(**{**kw, "input_dir": input_dir, "output_dir": output_dir, "max_tokens": max_tokens}))


def engine_hooks(a: argparse.Namespace, timers: Timers) -> Any:
    """The bench's hooks into the runner's engine: LLM(...) overrides (--engine-kwargs), ignore_eos and the
    per-page forced lengths on every request's sampling params (--force-tokens), and a timer around vLLM's
    input processing in the engine's threads. A rebuilt engine (after a death) gets the same hooks."""
    from ocr.engines.vllm import VllmHooks

    ignore_eos, spread = bool(a.force_tokens[1]), a.force_tokens

    def params(base: Any, request: Any) -> Any:
        if ignore_eos:
            base.ignore_eos = True     # read per request when the input processor clones the params
        if request is None:
            return base
        return per_page_params(base, spread, [(request.key.pdf, request.key.page)])[0] \
            if spread[0] != spread[1] else base

    def around_prepare(call: Callable[[], Any]) -> Any:
        with timers.timed("runner.threads.input_processing"):
            return call()

    return VllmHooks(engine_kwargs=a.engine_kwargs, params=params, around_prepare=around_prepare)


class SharedEngine:
    """The runner's view of the already-loaded engine: forwards everything; times submit (on the
    runner's main thread) and poll (one engine step, on the supervisor's step thread, while the main
    thread waits); vLLM's input processing is timed by the engine's around_prepare hook. close() is
    deferred: the bench closes the engine after the run, so engine teardown is not counted as runner
    time (after a death the factory closes it at once)."""

    def __init__(self, engine: Any, timers: Timers):
        self._engine, self._timers = engine, timers
        self.first_submit: float | None = None
        self.last_output: float | None = None
        self.outputs = 0
        self.out_tokens = 0
        self.finished_at: list[float] = []
        self.close_requested = False

    def submit(self, request: Any) -> None:
        if self.first_submit is None:
            self.first_submit = time.perf_counter()
        with self._timers.timed("runner.main.submit"):
            self._engine.submit(request)

    def poll(self) -> list:
        with self._timers.timed("runner.main.wait_for_engine_step (poll)"):
            outs = self._engine.poll()
        if outs:
            self.last_output = time.perf_counter()
            self.finished_at += [self.last_output] * len(outs)
            self.outputs += len(outs)
            self.out_tokens += sum(o.tokens for o in outs)
        return outs

    def close(self) -> None:
        self.close_requested = True

    def really_close(self) -> None:
        self._engine.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@contextmanager
def instrument_runner(timers: Timers):
    """Times the runner's main-thread stages by wrapping what ocr.pipeline calls (bench process only).
    A name that moved is reported as not instrumented instead of failing the benchmark."""
    import ocr.pipeline as pl
    import ocr.postwork as pw
    import ocr.render as rd
    import ocr.store as st

    undo: list[tuple[Any, str, Any]] = []
    missing: list[str] = []

    def patch(owner: Any, name: str, make: Callable[[Any], Callable]) -> None:
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if original is None:
            missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return
        setattr(owner, name, make(original))
        undo.append((owner, name, original))

    # Post-processing and the runaway check run in the post workers (ocr.postwork): the main thread only
    # collects what they are done with; the workers' own seconds come back with each job.
    patch(pl.Pipeline, "_collect_post", lambda f: timers.wrap("runner.main.collect_post", f))

    def post_poll(original: Callable) -> Callable:
        def poll(self: Any, wait_s: float = 0.0) -> Any:
            done = original(self, wait_s)
            for d in done:
                kind = d.key[0] if isinstance(d.key, tuple) else "job"
                name = {"finish": "post_processing", "judge": "runaway_check"}.get(kind, kind)
                timers.add(f"runner.workers.{name}", d.seconds, d.seconds)
            return done
        return poll

    patch(pw.PostWorkers, "poll", post_poll)
    patch(pl, "write_atomic", lambda f: timers.wrap("runner.main.write_markdown", f))
    # Opening a PDF (stat, sha256 of the file, MuPDF open) runs in ocr.render.inspect_pdf since the open deadline.
    patch(pl, "inspect_pdf", lambda f: timers.wrap("runner.main.open_and_hash", f))
    patch(st.Store, "journal_page", lambda f: timers.wrap("runner.main.journal_page", f))
    patch(st.Store, "mark_complete", lambda f: timers.wrap("runner.main.manifest", f))

    def renderer_next(original: Callable) -> Callable:
        def next_page(self: Any, block: bool) -> Any:
            with timers.timed("runner.main.wait_for_render" if block else "runner.main.check_render"):
                page = original(self, block)
            if page is not None and getattr(page, "seconds", 0):
                timers.add("runner.workers.render+blank", page.seconds, page.seconds)
            return page
        return next_page

    patch(rd.Renderer, "next", renderer_next)
    try:
        yield missing
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


# --------------------------------------------------------------------------------------- engine mode
def prepare_corpus(a: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    if a.pdfs:
        return a.pdfs, {"source": str(a.pdfs)}
    n_pdfs, pages = a.generate
    folder = (a.corpus_dir or work / "corpus") / f"{a.corpus_kind}-{n_pdfs}x{pages}-b{a.blank_every}"
    start = time.perf_counter()
    corpus.generate(folder, n_pdfs, pages, blank_every=a.blank_every, kind=a.corpus_kind)
    say(f"corpus: {n_pdfs} PDFs x {pages} A4 {a.corpus_kind} pages in {folder} "
        f"({time.perf_counter() - start:.1f} s)")
    return folder, {"source": "generated", "kind": a.corpus_kind, "n_pdfs": n_pdfs, "pages_per_pdf": pages,
                    "blank_every": a.blank_every}


_DOCS: dict[str, Any] = {}   # per render process: the PDF it rendered last


def _render_one(path: str, page_no: int, dpi: int, max_pixels: int) -> tuple:
    """One page with the runner's own functions: (page, image or None when blank, blank, render wall,
    render CPU, blank-check wall, blank-check CPU, error). Runs in a bench render process."""
    from ocr.blank import is_mostly_blank
    from ocr.render import open_pdf, render_page

    try:
        if path not in _DOCS:
            for doc in _DOCS.values():
                doc.close()
            _DOCS.clear()
            _DOCS[path] = open_pdf(Path(path))
        w, c = time.perf_counter(), time.process_time()
        image = render_page(_DOCS[path], page_no, dpi, max_pixels)
        rw, rc = time.perf_counter() - w, time.process_time() - c
        w, c = time.perf_counter(), time.process_time()
        blank = is_mostly_blank(image)
        bw, bc = time.perf_counter() - w, time.process_time() - c
    except Exception as exc:
        return page_no, None, False, 0.0, 0.0, 0.0, 0.0, f"{type(exc).__name__}: {exc}"
    return page_no, None if blank else image, blank, rw, rc, bw, bc, None


def render_corpus(cfg: Any, timers: Timers, workers: int, limit: int | None = None
                  ) -> tuple[list[tuple[Any, int, Any]], dict[Path, list[int]], dict]:
    """Every page as the runner renders it (ocr.render.render_page at its DPI and pixel cap), blank
    pages left out as the runner leaves them out (ocr.blank.is_mostly_blank), in `workers` processes
    (each stage is timed inside them); only the first `limit` pages where set. Returns the pages to OCR (job,
    page number, image), the blank page numbers per PDF, and counts."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ocr.discover import plan_jobs
    from ocr.render import PdfError, open_pdf

    pages: list[tuple[Any, int, Any]] = []
    blank_pages: dict[Path, list[int]] = {}
    info = {"pdfs": 0, "pages": 0, "blank_pages": 0, "bad_pdfs": 0, "failed_renders": 0, "bench_render_workers": workers}
    scratch = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    tasks = []
    for job in plan_jobs(cfg.input_dir, scratch):
        try:
            with open_pdf(job.path) as doc:
                total = min(doc.page_count, cfg.max_pages or doc.page_count)
        except (PdfError, OSError):
            info["bad_pdfs"] += 1
            continue
        info["pdfs"] += 1
        tasks += [(job, page_no) for page_no in range(1, total + 1)]
    shutil.rmtree(scratch, ignore_errors=True)
    if limit is not None and len(tasks) > limit:
        tasks = tasks[:limit]
        info["rendered_only_first"] = limit
    args = [(str(job.path), page_no, cfg.dpi, cfg.max_render_pixels) for job, page_no in tasks]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_render_one, *zip(*args), chunksize=4))
    else:
        results = [_render_one(*a) for a in args]
    for (job, page_no), (_, image, blank, rw, rc, bw, bc, error) in zip(tasks, results):
        info["pages"] += 1
        if error:
            info["failed_renders"] += 1
            continue
        timers.add("render", rw, rc)
        timers.add("blank_check", bw, bc)
        if blank:
            info["blank_pages"] += 1
            blank_pages.setdefault(job.path, []).append(page_no)
        else:
            pages.append((job, page_no, image))
    info["ocr_pages"] = len(pages)
    if pages:
        info["image_size"] = list(pages[0][2].size)
    return pages, blank_pages, info


def time_processor(model_dir: str, prompt: str, images: list[Any], timers: Timers) -> dict[str, Any]:
    """vLLM's own DeepSeek-OCR input processor (what add_request / LLM.generate run per page, serially,
    in the calling process), on a sample of pages, with one torch thread."""
    try:
        import torch
        from transformers import AutoTokenizer
        from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    threads = torch.get_num_threads()
    try:
        proc = DeepseekOCRProcessor(tokenizer=AutoTokenizer.from_pretrained(model_dir))
        torch.set_num_threads(1)
        proc(prompt=prompt, images=[images[0]])           # warm-up (first call allocates)
        tokens = 0
        for im in images:
            with timers.timed("input_processing"):
                out = proc(prompt=prompt, images=[im])
            ids = out["input_ids"]
            tokens = int(ids.shape[-1]) if hasattr(ids, "shape") else len(ids)
        return {"sample_pages": len(images), "torch_threads": 1, "prompt_tokens": tokens}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        torch.set_num_threads(threads)


def time_finish_and_write(cfg: Any, outputs: list[tuple[Any, int, Any]], blank: dict[Any, list[int]],
                          special_tokens: tuple, timers: Timers) -> None:
    """ocr.finish.finish_page over the raw engine's outputs, then what the runner writes per page and
    per PDF (journal line with fsync, Markdown by atomic rename, manifest line), in a scratch folder."""
    from ocr.discover import plan_jobs
    from ocr.finish import assemble, blank_page, finish_page
    from ocr.records import EngineOutput, PageKey
    from ocr.store import Store, source_id, write_atomic

    results: dict[Any, list] = {}
    for job, page_no, comp in outputs:
        out = EngineOutput(key=PageKey(job.index, page_no), text=comp.text, tokens=len(comp.token_ids),
                           finish_reason=comp.finish_reason)
        with timers.timed("post_processing"):
            result = finish_page(out, mode=cfg.mode, special_tokens=special_tokens,
                                 greek_repair=cfg.greek_repair)
        results.setdefault(job.path, []).append(result)
    scratch = Path(tempfile.mkdtemp(prefix="bench-write-"))
    try:
        store = Store(scratch / ".ocr-state", cfg.fingerprint())
        for job in plan_jobs(cfg.input_dir, scratch):
            page_results = results.get(job.path, []) + [blank_page(p) for p in blank.get(job.path, [])]
            if not page_results:
                continue
            with timers.timed("source_hash"):
                source = source_id(job.path)
            with timers.timed("write", n=0):
                store.open_journal(job, source)
            for result in page_results:
                with timers.timed("write"):
                    store.journal_page(job, result)
            with timers.timed("write", n=0):
                write_atomic(job.md_path, assemble(page_results))
                store.mark_complete(job, source, len(page_results))
                store.drop_journal(job)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": pyplatform.python_version(), "cpus": os.cpu_count(),
                           "host": pyplatform.node()}
    try:
        import vllm
        env["vllm"] = vllm.__version__
    except Exception:
        env["vllm"] = None
    try:
        import torch
        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return env


def rate(n: float, seconds: float) -> float:
    return sig(n / seconds) if seconds > 0 else 0.0


def sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant digits (rates span 0.01 pages/s on a CPU to 1e4 tokens/s on a GPU)."""
    return float(f"{x:.{digits}g}")


def engine_mode(a: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    monitor = Monitor(a.sample_s, gpu=not a.no_gpu_monitor).start()
    timers, res = Timers(), {}
    res["environment"] = environment()
    res["gpu_monitor"] = "nvidia-smi" if monitor.gpu else "none (no nvidia-smi or no GPU)"
    engine = None
    t_start = time.perf_counter()
    try:
        monitor.set_phase("render")
        input_dir, res["corpus"] = prepare_corpus(a, work)
        from ocr.gpu_sizing import settle
        cfg = settle(make_config(a, input_dir, work / "out", a.force_tokens[1] or a.max_tokens))
        from ocr.models import PROMPTS
        prompt = cfg.prompt or PROMPTS[cfg.mode]
        res["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
                           if k != "output_dir"}
        res["settings"].update(force_tokens="-".join(map(str, sorted(set(a.force_tokens)))), warmup_pages=a.warmup,
                               engine_runs=a.engine_runs, engine_kwargs=a.engine_kwargs)

        start = time.perf_counter()
        # The runner alone renders for itself: the bench renders only the pages its warm-up and input-processor
        # sample take (all 5,120 of a long row took ~85 s of device time to render up front, for nothing).
        alone = max(a.warmup, a.proc_sample, 1) + 8 if not a.engine_runs else None
        pages, blank_by_pdf, info = render_corpus(cfg, timers, a.bench_render_workers or
                                                  max(1, min(8, (os.cpu_count() or 2) - 1)), limit=alone)
        res["corpus"].update(info, render_wall_s=round(time.perf_counter() - start, 2))
        say(f"rendered {info['pages']} pages at {cfg.dpi} DPI: {info['ocr_pages']} to OCR, "
            f"{info['blank_pages']} blank (left out), image {info.get('image_size')}"
            + (" (the first pages only: the runner alone renders its own)" if alone else ""))
        if not pages:
            raise SystemExit("no pages to OCR in the corpus")

        if cfg.load_format == "dummy":
            model_dir = str(Path(cfg.model).expanduser())     # config and tokenizer only
        else:
            from ocr.checkpoint import resolve_model
            model_dir = resolve_model(cfg.model)
        monitor.set_phase("input_processing")
        sample = [im for _, _, im in pages[: max(1, a.proc_sample)]]
        res["input_processing"] = time_processor(model_dir, prompt, sample, timers)
        say(f"input processor: {res['input_processing']}")

        # ---- one engine load, the runner's own recipe
        hooks = engine_hooks(a, timers)
        monitor.set_phase("load")
        from ocr.engines.vllm import VllmEngine
        ecfg = dataclasses.replace(cfg, model=model_dir)
        start = time.perf_counter()
        engine = VllmEngine(ecfg, hooks=hooks)
        res["engine_load_s"] = round(time.perf_counter() - start, 1)
        res["guard_active"] = engine.caps.guard_active
        params = engine.params_for()
        res["sampling_params"] = {"max_tokens": params.max_tokens, "ignore_eos": params.ignore_eos,
                                  "temperature": params.temperature, "stop": params.stop,
                                  "extra_args": {k: v for k, v in (params.extra_args or {}).items()
                                                 if k != "whitelist_token_ids"}}
        res["engine_config"] = engine_config(engine.llm)
        say(f"engine loaded in {res['engine_load_s']} s; {res['engine_config']}; sampling {res['sampling_params']}")
        _dump_partial(a, res)
        llm = engine.llm
        page_params = per_page_params(params, a.force_tokens, [(job.index, page_no) for job, page_no, _ in pages])

        if a.warmup:
            monitor.set_phase("warmup")
            warm = params.clone()
            warm.max_tokens = min(16, params.max_tokens)
            start = time.perf_counter()
            llm.generate(_prompts(prompt, pages[: a.warmup]), warm, use_tqdm=False)
            res["warmup_s"] = round(time.perf_counter() - start, 1)
            say(f"warm-up: {a.warmup} pages x {warm.max_tokens} tokens in {res['warmup_s']} s")

        comps = None
        # ---- (a) the raw engine: one LLM.generate call (vLLM processes every input serially first)
        if "generate" in a.engine_runs:
            _reset_encoder_cache(llm)
            monitor.set_phase("engine")
            say(f"engine: LLM.generate over {len(pages)} pages ...")
            start = time.perf_counter()
            outs = llm.generate(_prompts(prompt, pages), page_params, use_tqdm=False)
            res["engine"] = _output_figures(outs, time.perf_counter() - start)
            comps = [o.outputs[0] for o in outs]
            proc = timers.stages.get("input_processing")
            if proc and proc.count:
                serial = proc.wall_s / proc.count * len(outs)
                res["engine"]["input_processing_est_s"] = round(serial, 2)
                if res["engine"]["seconds"] > serial:
                    res["engine"]["pages_per_s_excl_input_processing_est"] = \
                        rate(len(outs), res["engine"]["seconds"] - serial)
            say(f"engine: {res['engine']}")
        _dump_partial(a, res)
        # ---- (a') the engine core alone: inputs processed beforehand, as the runner's threads do
        modes = page_modes(a.large_every, len(pages), engine.caps.vision_modes)
        last_s = res.get("engine", {}).get("seconds", 0.0)
        for run in [r for r in a.engine_runs if r.startswith("core")]:      # in the order given
            name, what = CORE_RUNS[run]
            est = 2 * last_s + 30      # this run and the runner, roughly
            if a.budget_s and time.perf_counter() - t_start + est > a.budget_s:
                res[f"{name}_skipped"] = f"--budget-s {a.budget_s}: about {est:.0f} s needed, " \
                                         f"{a.budget_s - (time.perf_counter() - t_start):.0f} s left"
                say(f"engine core run{what} skipped: {res[f'{name}_skipped']}")
                break
            _reset_encoder_cache(llm)
            met = wait_at_barrier(a.barrier, name)
            monitor.set_phase(name)
            say(f"engine core{what}: {len(pages)} pre-processed pages ...")
            with encoder_code(llm, run, ask=os.environ.get(INSECURE_ENV) == "1") as code:
                res[name], core_comps = run_engine_core(
                    llm, prompt, pages, without_guard(page_params) if run == "core-noguard" else page_params,
                    cfg.preprocess_workers, timers, modes)
            res[name]["encoder_code"] = code
            if met:
                res[name]["barrier"] = met
            last_s = res[name]["seconds"]
            if run == "core":
                comps = comps or core_comps
            say(f"engine core{what}: {res[name]}")
            _dump_partial(a, res)

        if comps is not None:           # none without an engine run (--engine-runs none)
            monitor.set_phase("finish_write")
            time_finish_and_write(cfg, [(j, p, c) for (j, p, _), c in zip(pages, comps)], blank_by_pdf,
                                  engine.caps.special_tokens, timers)
        n_ocr = len(pages) if alone is None else None     # None: the runner's own count is the only one
        del pages, comps, sample
        gc.collect()

        # ---- (b) the full runner, same engine
        _reset_encoder_cache(llm)
        met = wait_at_barrier(a.barrier, "runner")
        monitor.set_phase("runner")
        say(f"runner: starting on {n_ocr} pages ..." if n_ocr is not None else "runner: starting on the corpus ...")
        res["runner"] = run_runner(ecfg, engine, hooks, timers, n_ocr, clock=met is not None)
        if met:
            res["runner"]["barrier"] = met
        say(f"runner: {res['runner']}")
    finally:
        monitor.set_phase("close")
        if engine is not None:
            start = time.perf_counter()
            try:
                engine.close()
            except Exception as exc:
                say(f"engine close: {exc}")
            res["engine_close_s"] = round(time.perf_counter() - start, 1)
        reap_children()
        monitor.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    res["ratio"] = ratios(res)
    res["stages"] = stage_summary(timers, cfg, res)
    res["memory"] = {"peak_rss": rusage_peaks(), "phases": monitor.memory_json()}
    res["cpu"] = monitor.cpu_json()
    res["gpu"] = monitor.gpu_json()
    return res


# --engine-runs core*: the JSON key of each and how the log names it
CORE_RUNS = {"core": ("engine_core", ""), "core-noguard": ("engine_core_noguard", " without the guard's extra_args"),
             "core-vllmenc": ("engine_core_vllmenc", " with vLLM's own vision-encoder code")}


INSECURE_ENV = "VLLM_ALLOW_INSECURE_SERIALIZATION"    # collective_rpc sends a callable only with it


def switch_encoder_code(llm: Any, ours: bool) -> str:
    """The runner's vision-encoder fixes on (`ours`) or off in every engine worker; which code they then run:
    "ours", "vllm", "vllm (none of ours installed)", "mixed ..." or "unknown (why)"."""
    from ocr.engines import vision_encoder
    try:
        installed = llm.collective_rpc(vision_encoder.set_active, args=(ours,))
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"
    if not installed or not any(installed):
        return "vllm (none of ours installed)"
    if not all(installed):
        return "mixed (ours not installed in every worker)"
    return "ours" if ours else "vllm"


@contextmanager
def encoder_code(llm: Any, run: str, ask: bool):
    """The vision-encoder code the engine workers run inside the block (vLLM's for core-vllmenc, switched
    back after it even if the block fails); "not asked" without `ask` (no collective_rpc then)."""
    if not ask:
        yield "not asked"
        return
    theirs = run == "core-vllmenc"
    try:
        yield switch_encoder_code(llm, ours=not theirs)
    finally:
        if theirs:
            back = switch_encoder_code(llm, ours=True)
            if back.startswith("unknown"):
                say(f"warning: the engine's vision-encoder code may not be switched back: {back}")


def ratios(res: dict[str, Any]) -> dict[str, Any]:
    """runner / each engine run, the guarded engine core / the unguarded one and / the one with vLLM's
    encoder code, whole and steady."""
    pairs = [("runner", name) for name in ("engine", "engine_core")] + \
        [("engine_core", "engine_core_noguard"), ("engine_core", "engine_core_vllmenc")]
    out = {}
    for top, bottom in pairs:
        t, b = res.get(top), res.get(bottom)
        if not (t and b):
            continue
        if bottom == "engine_core_vllmenc" and (t.get("encoder_code"), b.get("encoder_code")) != ("ours", "vllm"):
            continue        # the same code twice (nothing of ours installed, or the switch failed)
        out[f"{top}/{bottom}"] = {key: sig(t[key] / b[key], 3) if t.get(key) and b.get(key) else None
                                  for key in ("pages_per_s", "out_tokens_per_s", "steady_pages_per_s")}
    return out


STEADY_MIN_BATCHES = 3


def steady_rate(finished_at: list[float], low: float = 0.25, high: float = 0.75, batch: int = 0) -> float | None:
    """Pages per second between the low and high shares of pages finished: the batch is full there, its
    filling and its draining tail left out. None with fewer than STEADY_MIN_BATCHES x batch pages: then
    there is no steady part (on the H200, 336 pages at 256 in flight gave 38 "steady" pages/s and 16
    over the whole run: the window held the burst of pages that all started together)."""
    if batch and len(finished_at) < STEADY_MIN_BATCHES * batch:
        return None
    times = sorted(finished_at)
    i, j = int(len(times) * low), int(len(times) * high) - 1
    if j <= i or times[j] <= times[i]:
        return None
    return rate(j - i, times[j] - times[i])


def page_modes(every: int, count: int, modes: tuple[str, ...]) -> list[str] | None:
    """--large-every K: the vision mode of each page of the core runs (every K-th page Large)."""
    if not every:
        return None
    from ocr.engines.vision_modes import GUNDAM, LARGE
    if LARGE.name not in modes:
        say(f"--large-every {every}: this engine has no Large mode (modes {modes}); all pages Gundam")
        return None
    return [LARGE.name if i % every == every - 1 else GUNDAM.name for i in range(count)]


def without_guard(params: Any) -> Any:
    """The same sampling params without the n-gram guard's per-request extra_args."""
    def strip(one: Any) -> Any:
        one = one.clone()
        one.extra_args = None
        return one
    return [strip(p) for p in params] if isinstance(params, list) else strip(params)


def _dump_partial(a: argparse.Namespace, res: dict[str, Any]) -> None:
    """The figures so far, in case the run is cut off (a device call's time limit)."""
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({**res, "partial": True}, indent=1, default=str) + "\n", encoding="utf-8")


def _prompts(prompt: str, items: list) -> list[dict[str, Any]]:
    return [{"prompt": prompt, "multi_modal_data": {"image": im}} for _, _, im in items]


def _output_figures(outs: list, seconds: float) -> dict[str, Any]:
    comps = [o.outputs[0] for o in outs if o.outputs]
    tokens = sum(len(c.token_ids) for c in comps)
    texts = hashlib.sha1("\x00".join(c.text for c in comps).encode("utf-8")).hexdigest()[:16]
    finish: dict[str, int] = {}
    for c in comps:
        finish[str(c.finish_reason)] = finish.get(str(c.finish_reason), 0) + 1
    prompt_tokens = [len(getattr(o, "prompt_token_ids", None) or []) for o in outs]
    return {"pages": len(outs), "seconds": round(seconds, 2), "pages_per_s": rate(len(outs), seconds),
            "out_tokens": tokens, "out_tokens_per_s": rate(tokens, seconds),
            "out_tokens_per_page": round(tokens / max(len(outs), 1), 1), "finish_reasons": finish,
            "prompt_tokens_per_page": round(sum(prompt_tokens) / max(len(prompt_tokens), 1), 1),
            "texts_sha1": texts}     # the same pages' texts in page order: runs in one load compare


def _max_num_seqs(llm: Any) -> int:
    try:
        return int(llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
    except (AttributeError, TypeError, ValueError):
        return 0


def run_engine_core(llm: Any, prompt: str, pages: list, params: Any, workers: int,
                    timers: Timers, modes: list[str] | None = None) -> tuple[dict[str, Any], list]:
    """Every page's input processed first (in a thread pool, timed apart), then all added to the engine
    and stepped to the end: what the engine core does alone, fed as fast as it can take pages. Uses
    the calls the runner's VllmEngine makes (InputProcessor.process_inputs, LLMEngine.add_request);
    `modes`: each page's vision mode (default Gundam), as the runner's engine_prompt sends it."""
    from concurrent.futures import ThreadPoolExecutor

    from ocr.engines.vision_modes import LARGE, MODES, engine_prompt

    eng = llm.llm_engine
    tasks = eng.get_supported_tasks()
    params = params if isinstance(params, list) else [params] * len(pages)

    def process(i: int) -> Any:
        item = engine_prompt(prompt, pages[i][2], MODES[modes[i]]) if modes else \
            {"prompt": prompt, "multi_modal_data": {"image": pages[i][2]}}
        with timers.timed("core.input_processing (threads)"):
            return eng.input_processor.process_inputs(f"bench-core-{i}", item, params[i], supported_tasks=tasks)

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="bench-input") as pool:
        prepared = list(pool.map(process, range(len(pages))))
    prep_s = time.perf_counter() - start
    start = time.perf_counter()
    for i, request in enumerate(prepared):
        eng.add_request(f"bench-core-{i}", request, params[i])
    add_s = time.perf_counter() - start
    finished: dict[str, Any] = {}
    finished_at: list[float] = []
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                finished[out.request_id] = out
                finished_at.append(time.perf_counter())
    seconds = time.perf_counter() - start
    order = sorted(finished.values(), key=lambda o: int(str(o.request_id).split("-")[2]))
    figures = _output_figures(order, seconds)
    figures.update(steady_pages_per_s=steady_rate(finished_at, batch=_max_num_seqs(llm)),
                   large_pages=sum(m == LARGE.name for m in modes or []))
    figures.update(input_processing_wall_s=round(prep_s, 2), input_processing_workers=workers,
                   input_processing_pages_per_s=rate(len(pages), prep_s), add_request_s=round(add_s, 2))
    return figures, [o.outputs[0] for o in order]


def engine_config(llm: Any) -> dict[str, Any]:
    """What vLLM chose (read defensively: these attributes move between versions)."""
    def get(obj: Any, *path: str) -> Any:
        try:
            for name in path:
                obj = getattr(obj, name)
        except Exception:
            return None
        return obj if isinstance(obj, (int, float, str, bool, type(None))) else str(obj)

    vc = getattr(llm.llm_engine, "vllm_config", None)
    out = {"max_num_seqs": get(vc, "scheduler_config", "max_num_seqs"),
           "max_num_batched_tokens": get(vc, "scheduler_config", "max_num_batched_tokens"),
           "async_scheduling": get(vc, "scheduler_config", "async_scheduling"),
           "block_size": get(vc, "cache_config", "block_size"),
           "kv_cache_dtype": get(vc, "cache_config", "cache_dtype"),
           "num_gpu_blocks": get(vc, "cache_config", "num_gpu_blocks"),
           "enforce_eager": get(vc, "model_config", "enforce_eager"),
           "attention_backend": get(vc, "attention_config", "backend"),
           "cudagraph_mode": get(vc, "compilation_config", "cudagraph_mode")}
    try:
        out["head_size"] = vc.model_config.get_head_size()
    except Exception:
        pass
    return out


def _reset_encoder_cache(llm: Any) -> None:
    try:
        llm.llm_engine.reset_encoder_cache()
    except Exception:
        pass


def run_runner(cfg: Any, engine: Any, hooks: Any, timers: Timers, expected_pages: int | None,
               clock: bool = False) -> dict[str, Any]:
    """The runner over the corpus with the loaded engine (`expected_pages`: the engine runs' pages, None
    without one); `clock`: also the start, end and each page's finish on the machine's clock, for summing
    processes that shared the GPU (bench/combine_rows.py)."""
    from ocr.cli import run
    from ocr.engines.vllm import VllmEngine

    handed_out: list[SharedEngine] = []

    def factory() -> Any:
        if handed_out:          # the engine died in the runner: close it now and build a new one
            say("runner: the engine died; building a new one (the runner figures include the reload)")
            handed_out[-1].really_close()
            handed_out.append(SharedEngine(VllmEngine(cfg, hooks=hooks), timers))
        else:
            handed_out.append(SharedEngine(engine, timers))
        return handed_out[-1]

    with instrument_runner(timers) as missing:
        start = time.perf_counter()
        code = run(cfg, engine_factory=factory)
        seconds = time.perf_counter() - start
    for extra in handed_out[1:]:
        extra.really_close()
    report = json.loads(cfg.report_path.read_text(encoding="utf-8"))
    t = report["totals"]
    ocr_pages = t["pages"] - t["blank_pages"]
    shared = handed_out[0] if handed_out else None
    span = (shared.last_output - shared.first_submit) if shared and shared.first_submit and shared.last_output \
        else 0.0
    out = {"exit_code": int(code), "seconds": round(seconds, 2), "pages": t["pages"], "blank_pages": t["blank_pages"],
           "failed_pages": t["failed_pages"], "ocr_pages": ocr_pages, "pages_per_s": rate(ocr_pages, seconds),
           "out_tokens": t["tokens"], "out_tokens_per_s": rate(t["tokens"], seconds),
           "engine_active_s": round(span, 2),
           "pages_per_s_engine_active": rate(shared.outputs if shared else 0, span),
           "steady_pages_per_s": steady_rate(shared.finished_at, batch=cfg.seqs) if shared else None,
           "engine_restarts": report.get("engine", {}).get("restarts", 0), "engine_factory_calls": len(handed_out),
           "same_pages_as_engine": None if expected_pages is None else ocr_pages == expected_pages,
           "not_instrumented": missing}
    if shared and shared.first_submit and shared.last_output:   # start-up, and the drain after the engine's last page
        out.update(before_first_submit_s=round(shared.first_submit - start, 2),
                   after_last_output_s=round(start + seconds - shared.last_output, 2))
    if clock:
        out["clock"] = {"start": round(start, 3), "end": round(start + seconds, 3),
                        "finished_at": [round(t, 3) for t in (shared.finished_at if shared else [])]}
    if expected_pages is not None and ocr_pages != expected_pages:
        say(f"warning: the runner OCRed {ocr_pages} pages, the engine run {expected_pages}")
    return out


def stage_summary(timers: Timers, cfg: Any, res: dict[str, Any]) -> dict[str, Any]:
    """Per-stage figures: the bench's serial measurements of each stage, and the runner's own time
    split (main thread, its threads and workers), with the ceilings they imply."""
    st = timers.to_json()
    summary: dict[str, Any] = {"bench": {k: v for k, v in st.items() if not k.startswith("runner.")},
                               "runner": {k[len("runner."):]: v for k, v in st.items() if k.startswith("runner.")}}
    ceilings: dict[str, Any] = {}
    if "render" in st and "blank_check" in st:
        per_page = (st["render"]["wall_s"] + st["blank_check"]["wall_s"]) / max(st["render"]["count"], 1)
        ceilings["render_pool_pages_per_s"] = rate(cfg.render_workers, per_page)
        ceilings["render_workers"] = cfg.render_workers
    proc = st.get("input_processing", {}).get("wall_s_per_item", 0.0)
    if proc:
        ceilings["serial_input_processing_pages_per_s"] = rate(1.0, proc)
        workers = cfg.preprocess_workers
        if workers:
            ceilings["input_processing_threads"] = workers
    main = st.get("write", {}).get("wall_s_per_item", 0.0)     # post-processing runs in the post workers
    if main:
        ceilings["main_thread_write_pages_per_s"] = rate(1.0, main)
    post = st.get("post_processing", {}).get("wall_s_per_item", 0.0)
    if post:
        ceilings["post_workers_pages_per_s"] = rate(cfg.post_workers, post)
        ceilings["post_workers"] = cfg.post_workers
    summary["ceilings"] = ceilings
    runner_wall = res["runner"]["seconds"]
    if runner_wall:
        summary["runner_main_thread_share"] = {k: round(v["wall_s"] / runner_wall, 3)
                                               for k, v in summary["runner"].items() if k.startswith("main.")}
    return summary


# --------------------------------------------------------------------------------------- memory mode
class FastEngine:
    """A scripted engine double with the runner's Engine interface: every page in flight finishes on
    the next poll, with a page of text (about 2,500 characters, like a real page)."""

    def __init__(self) -> None:
        from ocr.engines.base import EngineCaps
        self.caps = EngineCaps(special_tokens=(), vision_modes=("gundam",), ngram=(0, 0), retry_sampling=False)
        self._in: dict[Any, Any] = {}

    def submit(self, request: Any) -> None:
        self._in[request.request_id] = request

    def poll(self) -> list:
        time.sleep(0.001)
        done = []
        for request in self._in.values():
            key = request.key
            lines = (f"Line {i} of page {key.page} of document {key.pdf}: the quick brown fox." for i in range(28))
            text = f"# Page {key.page}\n\n" + "\n".join(lines)
            done.append(request.answer(text, len(text) // 4, "stop"))
        self._in.clear()
        return done

    def in_flight(self) -> int:
        return len(self._in)

    def alive(self) -> bool:
        return True

    def lost_requests(self) -> list:
        lost = list(self._in.values())
        self._in.clear()
        return lost

    def close(self) -> None:
        pass


def memory_child(a: argparse.Namespace) -> int:
    """One runner run over --pdfs with the fast engine, in this fresh process; prints MEMORY_RESULT."""
    from ocr.cli import run

    out = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    monitor = Monitor(0.2, gpu=False).start()
    cfg = make_config(a, a.pdfs, out, a.max_tokens)
    start = time.perf_counter()
    code = run(cfg, engine_factory=FastEngine)
    seconds = time.perf_counter() - start
    reap_children()
    monitor.stop()
    totals = json.loads(cfg.report_path.read_text(encoding="utf-8"))["totals"]
    shutil.rmtree(out, ignore_errors=True)
    phase = monitor.phases.get("start", {})
    print("MEMORY_RESULT " + json.dumps({
        "exit_code": int(code), "pages": totals["pages"], "blank_pages": totals["blank_pages"],
        "seconds": round(seconds, 2), "peak_rss": rusage_peaks(),
        "sampled_tree_max_mb": round(phase.get("rss_tree_max_mb", 0.0), 1),
        "sampled_self_max_mb": round(phase.get("rss_self_max_mb", 0.0), 1)}), flush=True)
    return int(code)


def memory_mode(a: argparse.Namespace) -> dict[str, Any]:
    from ocr.config import SMALL_GPU_BATCH
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    batch = a.batch_pages or SMALL_GPU_BATCH          # the scripted engine has no GPU to size it by
    work = Path(tempfile.mkdtemp(prefix="bench-memscale-"))
    base = a.corpus_dir or work / "corpus"
    runs = []
    try:
        for n in sizes:
            folder = base / f"mem-{a.corpus_kind}-{n}p-b{a.blank_every}"
            start = time.perf_counter()
            # In its own process: Linux carries a parent's peak RSS into a child's ru_maxrss through
            # fork + exec, so building a 1,000-page PDF here would show up as the runner's peak.
            subprocess.run([sys.executable, str(Path(corpus.__file__).resolve()), str(folder), f"1x{n}",
                            "--blank-every", str(a.blank_every), "--kind", a.corpus_kind],
                           check=True, capture_output=True, timeout=a.child_timeout)
            gen_s = time.perf_counter() - start
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", "--pdfs", str(folder),
                   "--dpi", str(a.dpi), "--batch-pages", str(batch), "--render-workers", str(a.render_workers)]
            say(f"memory: {n} pages (corpus {gen_s:.1f} s) ...")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.child_timeout)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("MEMORY_RESULT ")), None)
            if line is None:
                raise SystemExit(f"memory run of {n} pages failed (exit {proc.returncode}):\n"
                                 f"{proc.stderr[-3000:]}")
            r = json.loads(line.split(" ", 1)[1])
            r["pdf_pages"] = n
            runs.append(r)
            say(f"memory: {n} pages: peak RSS {r['peak_rss']['self_mb']} MiB (runner), "
                f"{r['peak_rss']['children_max_mb']} MiB (largest child), sampled tree "
                f"{r['sampled_tree_max_mb']} MiB, {r['seconds']} s")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    first, last = runs[0], runs[-1]
    pages = max(last["pdf_pages"] - first["pdf_pages"], 1)
    growth = {}
    for name, get in (("runner", lambda r: r["peak_rss"]["self_mb"]),
                      ("render_worker", lambda r: r["peak_rss"]["children_max_mb"]),
                      ("tree_sampled", lambda r: r["sampled_tree_max_mb"])):
        mb = get(last) - get(first)
        growth[name] = {"peaks_mb": {str(r["pdf_pages"]): get(r) for r in runs}, "growth_mb": round(mb, 1),
                        "growth_kb_per_page": round(mb * 1024 / pages, 2),
                        # flat: grows less than 64 MiB or 15 % of the smallest run's peak
                        "flat": mb <= max(64.0, 0.15 * get(first))}
    return {"mode": "memory-scaling", "dpi": a.dpi, "batch_pages": batch, "corpus_kind": a.corpus_kind,
            "runs": runs, "peaks_mb": growth["runner"]["peaks_mb"], "growth_mb": growth["runner"]["growth_mb"],
            "growth_kb_per_page": growth["runner"]["growth_kb_per_page"], "by_process": growth,
            "flat": growth["runner"]["flat"] and growth["render_worker"]["flat"]}


# --------------------------------------------------------------------------------------- output
def print_engine_summary(res: dict[str, Any]) -> None:
    env, c, r = res["environment"], res["corpus"], res["runner"]
    sp, st = res["sampling_params"], res["settings"]
    lines = [
        "", "=" * 86,
        f"vLLM {env.get('vllm')}  torch {env.get('torch')}  GPUs {env.get('gpus', 'none')}  CPUs {env.get('cpus')}",
        (f"corpus: {c.get('pdfs')} PDFs, {c.get('pages')} pages, {c.get('blank_pages')} blank (left out), "
         f"{c.get('ocr_pages')} to OCR" if not c.get("rendered_only_first") else
         f"corpus: {c.get('pdfs')} PDFs, {r['pages']} pages, {r['blank_pages']} blank (the runner's count)")
        + f"; page image {c.get('image_size')} at {st['dpi']} DPI",
        f"engine load {res['engine_load_s']} s; {res['engine_config']}",
        f"sampling: max_tokens {sp['max_tokens']}, ignore_eos {sp['ignore_eos']}, n-gram guard "
        f"{sp['extra_args'] or 'off'} (active: {res.get('guard_active')}); batch_pages {st['batch_pages']}, "
        f"preprocess_workers {st.get('preprocess_workers')}, render_workers {st.get('render_workers')}",
        "",
        f"{'':36}{'pages':>7}{'seconds':>10}{'pages/s':>10}{'out tok':>10}{'out tok/s':>11}{'steady p/s':>12}",
    ]
    rows = [("engine (one LLM.generate call)", res.get("engine")),
            ("engine core (pre-processed)", res.get("engine_core")),
            ("engine core, no guard args", res.get("engine_core_noguard")),
            ("engine core, vLLM's encoder code", res.get("engine_core_vllmenc")),
            ("runner (ocr.cli.run)", {**r, "pages": r["ocr_pages"]})]
    for name, f in rows:
        if f:
            steady = f.get("steady_pages_per_s")
            lines.append(f"{name:36}{f['pages']:>7}{f['seconds']:>10.2f}{f['pages_per_s']:>10.3f}"
                         f"{f['out_tokens']:>10}{f['out_tokens_per_s']:>11.1f}{steady or '-':>12}")
    for name, ratio in res["ratio"].items():
        lines.append(f"ratio {name}: pages/s {ratio['pages_per_s']}, output tokens/s {ratio['out_tokens_per_s']}, "
                     f"steady pages/s {ratio['steady_pages_per_s']}")
    cores = [(k, res[k]) for k in ("engine_core", "engine_core_noguard", "engine_core_vllmenc") if res.get(k)]
    if any(f.get("encoder_code") != "not asked" for _, f in cores):
        lines.append("  vision-encoder code: " + ", ".join(f"{k} {f.get('encoder_code')}" for k, f in cores))
    same_sampling = [res.get(k) for k in ("engine", "engine_core", "engine_core_vllmenc") if res.get(k)]
    texts = {f.get("texts_sha1") for f in same_sampling}      # (without the guard, other texts are expected)
    if len(same_sampling) > 1:
        lines.append(f"  the guarded engine runs' texts: {'the same' if len(texts) == 1 else 'DIFFERENT'} "
                     f"({', '.join(sorted(map(str, texts)))})")
    if (res.get("engine_core") or {}).get("large_pages"):
        lines.append(f"  core runs: {res['engine_core']['large_pages']} of the pages sent in Large mode")
    e = res.get("engine") or {}
    if "input_processing_est_s" in e:
        lines.append(f"  LLM.generate's serial input processing: ~{e['input_processing_est_s']} s of its "
                     f"{e['seconds']} s (engine without it, est.: "
                     f"{e.get('pages_per_s_excl_input_processing_est', 'n/a')} pages/s)")
    if res.get("engine_core"):
        ec = res["engine_core"]
        lines.append(f"  engine core run: inputs pre-processed in {ec['input_processing_wall_s']} s with "
                     f"{ec['input_processing_workers']} threads ({ec['input_processing_pages_per_s']} pages/s), "
                     f"not counted in its time")
    lines.append(f"  runner: first page in to last page out {r['engine_active_s']} s "
                 f"({r['pages_per_s_engine_active']} pages/s; before it {r.get('before_first_submit_s')} s, after it "
                 f"{r.get('after_last_output_s')} s); engine close after the run "
                 f"{res.get('engine_close_s')} s (not counted); exit code {r['exit_code']}, "
                 f"{r['failed_pages']} failed pages, same pages as the engine runs: {r['same_pages_as_engine']}")
    lines += ["", "per-stage time, measured by the bench on its own (serial, one thread):",
              f"  {'stage':38}{'items':>7}{'CPU s':>10}{'wall s':>10}{'CPU ms/item':>13}{'wall ms/item':>14}"]
    for k, v in res["stages"]["bench"].items():
        lines.append(f"  {k:38}{v['count']:>7}{v['cpu_s']:>10.3f}{v['wall_s']:>10.3f}"
                     f"{v['cpu_s_per_item'] * 1e3:>13.2f}{v['wall_s_per_item'] * 1e3:>14.2f}")
    lines += ["inside the runner run (main = its main thread; threads/workers = beside it):",
              f"  {'stage':48}{'calls':>7}{'wall s':>10}{'CPU s':>10}{'share':>8}"]
    shares = res["stages"].get("runner_main_thread_share", {})
    for k, v in res["stages"]["runner"].items():
        share = shares.get(k)
        lines.append(f"  {k:48}{v['count']:>7}{v['wall_s']:>10.3f}{v['cpu_s']:>10.3f}"
                     f"{'' if share is None else f'{share:.1%}':>8}")
    lines.append(f"ceilings (pages/s): {res['stages']['ceilings']}")
    m = res["memory"]
    lines.append(f"peak RSS (getrusage): this process {m['peak_rss']['self_mb']} MiB, largest child "
                 f"{m['peak_rss']['children_max_mb']} MiB")
    lines.append("  sampled per phase, this process / whole tree (MiB): " + ", ".join(
        f"{k} {v['rss_self_max_mb']:.0f}/{v['rss_tree_max_mb']:.0f}" for k, v in m["phases"].items()))
    for phase in ("engine_core", "runner"):
        c = res.get("cpu", {}).get(phase)
        if c:
            busy = ", ".join(f"{name} {t['threads']}x {t['cores']}" for name, t in c.get("threads", {}).items()
                             if t["cores"] >= 0.05)
            lines.append(f"CPU cores, {phase} phase: this process {c['cores_self']}, with its children "
                         f"{c['cores_tree']}; its threads (count x cores together): {busy or '-'}")
    if res["gpu"]:
        lines.append("GPU utilization per phase, mean/max % and memory max MiB: " + ", ".join(
            f"{k} {v['util_mean_pct']}/{v['util_max_pct']}/{v['mem_max_mb']:.0f}"
            for k, v in res["gpu"].items() if v["samples"]))
    else:
        lines.append(f"GPU: {res['gpu_monitor']}")
    lines.append("=" * 86)
    print("\n".join(lines), flush=True)


def print_memory_summary(res: dict[str, Any]) -> None:
    print("\n" + "=" * 78)
    print(f"peak RSS of the runner (scripted engine, DPI {res['dpi']}, batch {res['batch_pages']}):")
    print(f"  {'PDF pages':>10}{'runner MiB':>12}{'child MiB':>11}{'tree MiB':>10}{'seconds':>9}")
    for r in res["runs"]:
        print(f"  {r['pdf_pages']:>10}{r['peak_rss']['self_mb']:>12}{r['peak_rss']['children_max_mb']:>11}"
              f"{r['sampled_tree_max_mb']:>10}{r['seconds']:>9}")
    for name, g in res["by_process"].items():
        print(f"  {name:14} growth {g['growth_mb']:>8} MiB ({g['growth_kb_per_page']} KiB per page): "
              f"{'flat' if g['flat'] else 'NOT flat'}")
    print(f"peak RSS flat as PDF length grows (runner and render worker): {'yes' if res['flat'] else 'NO'}")
    print("=" * 78, flush=True)


def parse_force_tokens(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, got {text!r}") from None
    if not (0 <= low <= high and (low >= 1 or high == 0)):
        raise argparse.ArgumentTypeError(f"expected N >= 0, or 1 <= LO <= HI, got {text!r}")
    return low, high


def forced_length(spread: tuple[int, int], pdf_index: int, page_no: int) -> int:
    """A page's forced output length: the same page gets the same length in every run of the bench."""
    low, high = spread
    return low + zlib.crc32(f"{pdf_index}:{page_no}".encode()) % (high - low + 1)


def per_page_params(params: Any, spread: tuple[int, int], keys: list[tuple[int, int]]) -> Any:
    """One SamplingParams for every page, or each page its own max_tokens where lengths are spread."""
    if spread[0] == spread[1]:
        return params
    out = []
    for pdf_index, page_no in keys:
        one = params.clone()
        one.max_tokens = forced_length(spread, pdf_index, page_no)
        out.append(one)
    return out


def parse_barrier(text: str) -> tuple[Path, int]:
    folder, _, count = text.rpartition(":")
    if not folder or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError("expected DIR:N, e.g. /tmp/barrier:2")
    return Path(folder), int(count)


def wait_at_barrier(spec: tuple[Path, int] | None, phase: str, timeout_s: float = 900) -> dict[str, Any] | None:
    """Mark this process as ready for `phase` in the barrier folder and wait for the others; the time on
    the shared clock (perf_counter is CLOCK_MONOTONIC: one clock for every process of the machine)."""
    if spec is None:
        return None
    folder, count = spec
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{phase}.{os.getpid()}").touch()
    start = time.perf_counter()
    while len(list(folder.glob(f"{phase}.*"))) < count:
        if time.perf_counter() - start > timeout_s:
            say(f"barrier {phase}: the other processes did not come in {timeout_s:.0f} s; going on alone")
            return {"waited_s": round(time.perf_counter() - start, 2), "timed_out": True}
        time.sleep(0.02)
    say(f"barrier {phase}: all {count} processes here")
    return {"waited_s": round(time.perf_counter() - start, 2), "timed_out": False}


def parse_engine_kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"async_scheduling\": false}'")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's own flags (ocr/config.py, the bench's defaults), then the bench's."""
    from ocr.config import RunnerSpec, add_config_flags

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(ap.add_argument_group("runner settings (the runner's flags)"),
                     RunnerSpec("bench.py", "", "vllm", defaults=BENCH_DEFAULTS, help=BENCH_HELP),
                     exclude=("input_dir", "output_dir"))
    b = ap.add_argument_group("benchmark")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--pdfs", type=Path, help="folder of PDFs to benchmark on")
    src.add_argument("--generate", type=corpus.parse_shape, metavar="N_PDFSxPAGES",
                     help="generate a corpus, e.g. 8x32 (A4, every --blank-every-th page blank)")
    b.add_argument("--blank-every", type=int, default=8, help="generated corpus: every K-th page blank")
    b.add_argument("--corpus-kind", choices=corpus.KINDS, default="scan",
                   help="generated pages: greyscale JPEG scans (default) or vector text")
    b.add_argument("--corpus-dir", type=Path, help="keep generated corpora here (reused across runs)")
    b.add_argument("--engine-kwargs", type=parse_engine_kwargs, default={}, metavar="JSON",
                   help="LLM(...) keyword arguments over the runner's, for experiments (a dict value is merged "
                        "key by key), e.g. '{\"compilation_config\": {\"cudagraph_mm_encoder\": true}}'")
    b.add_argument("--force-tokens", type=parse_force_tokens, default=(0, 0), metavar="N|LO-HI",
                   help="every page decodes exactly N tokens (ignore_eos, max_tokens=N), in both runs; "
                        "LO-HI: each page its own length between LO and HI, fixed by its PDF and page number, "
                        "so pages finish one by one as real pages do")
    b.add_argument("--bench-render-workers", type=int, default=None,
                   help="processes the bench renders the corpus with before the engine runs "
                        "(default: CPUs - 1, at most 8)")
    b.add_argument("--warmup", type=int, default=4, help="pages of a short warm-up generate before timing")
    b.add_argument("--engine-runs", default="generate,core",
                   help="raw engine runs before the runner: generate (one LLM.generate call), core "
                        "(inputs pre-processed in threads, then the engine alone), core-noguard (core again, "
                        "the requests without the n-gram guard's extra_args), core-vllmenc (core again with vLLM's own "
                        "vision-encoder code); separated by commas or slashes, the core runs in the order given "
                        "(core-noguard or core-vllmenc alone: after core); none: the runner alone")
    b.add_argument("--barrier", type=parse_barrier, default=None, metavar="DIR:N",
                   help="N bench processes sharing one GPU: each waits in DIR until all N reach the engine-core "
                        "and the runner phase, so those phases run together (bench/combine_rows.py sums them)")
    b.add_argument("--large-every", type=int, default=0, metavar="K",
                   help="core runs: every K-th page a Large-mode request (a 1280 view beside Gundam's)")
    b.add_argument("--budget-s", type=float, default=0,
                   help="seconds this run may take: the engine-core run is skipped when it would not fit "
                        "(the runner run always happens)")
    b.add_argument("--proc-sample", type=int, default=8, help="pages for timing the input processor")
    b.add_argument("--sample-s", type=float, default=0.5, help="RSS / GPU sampling interval")
    b.add_argument("--no-gpu-monitor", action="store_true")
    b.add_argument("--json", type=Path, help="write every figure here")
    b.add_argument("--keep", action="store_true", help="keep the scratch folder (corpus, runner output)")
    b.add_argument("--memory-scaling", action="store_true",
                   help="peak RSS of the runner with a scripted engine on PDFs of --sizes pages")
    b.add_argument("--sizes", default="10,100,1000", help="memory scaling: pages per PDF")
    b.add_argument("--child-timeout", type=float, default=1800, help="memory scaling: seconds per size")
    b.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not (a.memory_scaling or a.memory_child or a.pdfs or a.generate):
        ap.error("give --pdfs DIR or --generate N_PDFSxPAGES (or --memory-scaling)")
    if a.memory_child and not a.pdfs:
        ap.error("--memory-child needs --pdfs")
    a.engine_runs = [r.strip() for r in re.split(r"[,/]", a.engine_runs) if r.strip()]   # "/": gpu_session_032.sh rows
    if a.engine_runs == ["none"]:       # the runner alone
        a.engine_runs = []
    elif not a.engine_runs or set(a.engine_runs) - {"generate", *CORE_RUNS}:
        ap.error(f"--engine-runs: generate, {', '.join(CORE_RUNS)} (separated by commas or slashes), or none")
    other = [r for r in a.engine_runs if r in CORE_RUNS and r != "core"]
    if other and "core" not in a.engine_runs:           # core-noguard or core-vllmenc alone: core first
        a.engine_runs.insert(a.engine_runs.index(other[0]), "core")
    if "core-vllmenc" in a.engine_runs:     # collective_rpc sends set_active pickled; before the engine starts
        os.environ.setdefault(INSECURE_ENV, "1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.memory_child:
        return memory_child(a)
    if a.memory_scaling:
        res = memory_mode(a)
        print_memory_summary(res)
    else:
        res = engine_mode(a)
        print_engine_summary(res)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")
        say(f"figures written to {a.json}")
    print("BENCH_JSON " + json.dumps(res, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
