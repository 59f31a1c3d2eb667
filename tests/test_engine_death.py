"""Engine death and hangs (scripted double): restart, requeue, isolate the killer page, cap restarts."""

from __future__ import annotations

import math
import os
import signal
import time

from conftest import load_report, pdf_entry, run_cli
from doubles import ScriptedEngine
from pdfgen import make_pdf, numbered_pages


class Factory:
    """Builds a new double per engine start; all share one submission log."""

    def __init__(self, **kwargs):
        self.kwargs, self.log, self.built = kwargs, [], 0

    def __call__(self):
        self.built += 1
        return ScriptedEngine(log=self.log, **self.kwargs)


def corpus(src, n_pdfs=2, pages=8):
    for i in range(n_pdfs):
        make_pdf(src / f"doc{i}.pdf", numbered_pages(pages, f"Doc {i}"))


def args(src, out, *extra):
    return ["--input-dir", str(src), "--output-dir", str(out), "--batch-pages", "8", "--queue-ahead", "0", *extra]


def test_killer_page_is_isolated_and_the_rest_is_untouched(tmp_path, inline_render):
    src = tmp_path / "in"
    corpus(src)
    clean = Factory(per_poll=1)
    assert run_cli(args(src, tmp_path / "ref"), engine_factory=clean) == 0

    faulty = Factory(per_poll=1, kills={(0, 7)})    # PDF #0, page 7 kills the engine
    assert run_cli(args(src, tmp_path / "out", "--max-engine-restarts", "10"), engine_factory=faulty) == 1

    md = (tmp_path / "out" / "doc0.md").read_text(encoding="utf-8")
    assert "[[Page 7 failed: engine crashed on this page]]" in md
    ref = (tmp_path / "ref" / "doc0.md").read_text(encoding="utf-8")
    for page in (1, 2, 3, 4, 5, 6, 8):       # every other page byte-identical to the run without fault
        block = ref.split(f"----- Page {page} -----")[-1].split("----- Page")[0] if page > 1 else \
            ref.split("----- Page 2")[0]
        assert block in md
    assert (tmp_path / "out" / "doc1.md").read_bytes() == (tmp_path / "ref" / "doc1.md").read_bytes()

    report = load_report(tmp_path / "out")
    assert pdf_entry(report, "doc0.pdf")["status"] == "partial"
    assert pdf_entry(report, "doc1.pdf")["status"] == "complete"
    restarts = report["engine"]["restarts"]
    # In flight at the first death: at most 8 pages. Halving finds the page in about log2(8) deaths, plus
    # one more to confirm it alone.
    in_flight = report["events"][0]["pages_in_flight"]
    assert in_flight == 8                        # --batch-pages: the engine was full when it died
    assert 2 <= restarts <= math.ceil(math.log2(in_flight)) + 2
    assert report["engine"]["pages_isolated"] == 1
    assert sum(e["event"] == "engine_restart" for e in report["events"]) == restarts
    assert faulty.log.count((0, 7, 0)) >= 3     # in the first batch, then alone twice


def test_default_restart_cap_isolates_a_killer_among_all_default_pages_in_flight(tmp_path, inline_render):
    """The worst case at the defaults: the first page kills, so every halving runs the killer's half."""
    src = tmp_path / "in"
    make_pdf(src / "big.pdf", [f"p{i}" for i in range(170)], size=(200, 200))
    faulty = Factory(per_poll=200, kills={(0, 1)})
    assert run_cli(["--input-dir", str(src), "--output-dir", str(tmp_path / "out")], engine_factory=faulty) == 1
    report = load_report(tmp_path / "out")
    assert report["events"][0]["pages_in_flight"] == 160          # --batch-pages 128 + --queue-ahead 32
    assert report["interrupted"] is None and report["engine"]["pages_isolated"] == 1
    assert pdf_entry(report, "big.pdf")["failed_pages"] == [1]


def test_no_finished_page_is_redone_after_a_death(tmp_path, inline_render):
    src = tmp_path / "in"
    corpus(src, n_pdfs=1, pages=6)
    finished = []

    class Recording(ScriptedEngine):
        def poll(self):
            done = super().poll()
            finished.extend((o.key.pdf, o.key.page) for o in done)
            return done

    factory_log = []

    def factory():
        return Recording(log=factory_log, per_poll=1, kills={(0, 6)})

    assert run_cli(args(src, tmp_path / "out", "--max-engine-restarts", "10"), engine_factory=factory) == 1
    assert len(finished) == len(set(finished)) == 5       # every good page finished exactly once


def test_restarts_stop_at_the_cap(tmp_path):
    src = tmp_path / "in"
    corpus(src, n_pdfs=1, pages=8)
    faulty = Factory(per_poll=1, kills={(0, p) for p in range(1, 9)})   # every page kills
    assert run_cli(args(src, tmp_path / "out", "--max-engine-restarts", "2"), engine_factory=faulty) == 1
    report = load_report(tmp_path / "out")
    assert report["engine"]["restarts"] == 3 and faulty.built == 3      # 1 + 2 restarts; the 3rd death ends it
    assert "--max-engine-restarts 2" in report["interrupted"]
    assert pdf_entry(report, "doc0.pdf")["status"] == "unfinished"
    assert not (tmp_path / "out" / "doc0.md").exists()


def test_hung_engine_is_restarted(tmp_path):
    src = tmp_path / "in"
    corpus(src, n_pdfs=1, pages=3)
    hanging = Factory(per_poll=1, hangs={(0, 2)})
    code = run_cli(args(src, tmp_path / "out", "--page-timeout", "1", "--max-engine-restarts", "5"),
                   engine_factory=hanging)
    assert code == 1
    report = load_report(tmp_path / "out")
    assert report["engine"]["restarts"] >= 2
    assert any("engine hung" in e["cause"] for e in report["events"] if e["event"] == "engine_restart")
    md = (tmp_path / "out" / "doc0.md").read_text(encoding="utf-8")
    assert "[[Page 2 failed: engine crashed on this page]]" in md and "# Page 3" in md


def test_engine_process_death_is_noticed_even_when_poll_blocks(tmp_path, inline_render):
    """vLLM 0.32's sync client never returns from step() once its engine core is SIGKILLed: the
    supervisor notices from the process itself, long before --page-timeout."""
    src = tmp_path / "in"
    corpus(src, n_pdfs=1, pages=3)
    built = []

    def factory():
        built.append(ScriptedEngine(per_poll=1, silent_kills={(0, 2)} if not built else frozenset()))
        return built[-1]

    start = time.monotonic()
    assert run_cli(args(src, tmp_path / "out", "--page-timeout", "600"), engine_factory=factory) == 0
    assert time.monotonic() - start < 60
    report = load_report(tmp_path / "out")
    assert report["engine"]["restarts"] == 1
    assert report["events"][0]["cause"] == "engine process exited"
    assert "failed" not in (tmp_path / "out" / "doc0.md").read_text(encoding="utf-8")


def test_engine_left_by_a_killed_runner_is_reaped(tmp_path):
    import json
    import subprocess
    import sys

    import psutil
    from ocr.engines.processes import reap_stale_engine

    dead_runner = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(dead_runner.pid).create_time()
    dead_runner.wait()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pid_file = tmp_path / "engine.pids"
    pid_file.write_text(json.dumps({"runner": [dead_runner.pid, created],
                                    "engine": [[orphan.pid, psutil.Process(orphan.pid).create_time()]]}))
    reap_stale_engine(pid_file)
    assert orphan.wait(10) is not None and not pid_file.exists()

    # An engine whose runner is alive (another worker's) is left alone.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    me = psutil.Process()
    pid_file.write_text(json.dumps({"runner": [me.pid, me.create_time()],
                                    "engine": [[other.pid, psutil.Process(other.pid).create_time()]]}))
    reap_stale_engine(pid_file)
    assert other.poll() is None
    other.kill()


def test_a_signal_that_also_stops_the_engine_does_not_rebuild_it(tmp_path, inline_render):
    """`timeout` and Ctrl-C signal the whole process group, so vLLM's engine core stops with the runner:
    the run exits at once (130) without loading a new engine, and the next run finishes the PDF."""
    src, out = tmp_path / "in", tmp_path / "out"
    corpus(src, n_pdfs=1, pages=4)

    def stop_with_the_runner(request):
        if request.key.page != 2:
            return False
        os.kill(os.getpid(), signal.SIGTERM)      # the runner's handler runs in the main thread meanwhile
        time.sleep(0.5)
        return True                               # and the engine core dies of the same signal

    stopping = Factory(per_poll=1, kill_if=stop_with_the_runner)
    assert run_cli(args(src, out), engine_factory=stopping) == 130
    report = load_report(out)
    assert stopping.built == 1 and report["engine"]["restarts"] == 0
    assert not any(e["event"] == "engine_restart" for e in report["events"])
    assert report["interrupted"] == "stopped by SIGTERM"
    assert run_cli(args(src, out)) == 0
    assert (out / "doc0.md").read_text(encoding="utf-8").count("# Page") == 4


def test_an_engine_core_whose_own_helpers_exit_is_still_alive(tmp_path):
    """With cold compile caches vLLM's engine core starts compile workers that exit minutes after the load;
    that is not a dead engine (it once restarted a healthy one on an H200). The core's exit is."""
    import subprocess
    import sys

    import psutil
    from ocr.engines.processes import EngineProcesses, child_pids, reap

    flag = tmp_path / "helper-done"
    core_code = ("import subprocess, sys, time\n"
                 "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1.5)'])\n"
                 f"helper.wait(); open({str(flag)!r}, 'w').close()\n"
                 "late = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                 "time.sleep(600)\n")
    before = child_pids()
    core = subprocess.Popen([sys.executable, "-c", core_code])
    deadline = time.monotonic() + 30
    while not psutil.Process(core.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    engine = EngineProcesses(before)
    assert [p.pid for p in engine.roots] == [core.pid] and len(engine.tree) == 2   # the core and its helper
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert flag.exists() and engine.alive()                       # the helper is gone, the core is not

    tree = engine.current()                                      # the core's later child is reaped too
    late = [p for p in tree if p.pid not in (core.pid,) and p.is_running()]
    assert len(late) == 1
    core.kill()
    core.wait(10)
    assert not engine.alive()
    reap(tree, grace_s=5)
    assert not late[0].is_running()


def test_a_short_lived_process_beside_the_engine_core_is_not_the_engine():
    """Another thread's short-lived child (the bench's nvidia-smi sample) running when the engine finishes
    loading is not part of the engine: its exit is not a dead engine (it restarted a healthy one on an
    H200); the vLLM-named core's exit is."""
    import subprocess
    import sys

    import psutil
    from ocr.engines.processes import EngineProcesses, child_pids, reap

    before = child_pids()
    core = subprocess.Popen([sys.executable, "-c", "import setproctitle, time; "
                             "setproctitle.setproctitle('VLLM::EngineCore'); time.sleep(600)"])
    deadline = time.monotonic() + 30
    while not " ".join(psutil.Process(core.pid).cmdline()).startswith("VLLM::") and time.monotonic() < deadline:
        time.sleep(0.05)
    sample = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    engine = EngineProcesses(before)
    assert [p.pid for p in engine.roots] == [core.pid]
    assert {p.pid for p in engine.tree} == {core.pid, sample.pid}     # reaped on close all the same
    sample.wait(10)
    assert engine.alive()
    core.kill()
    core.wait(10)
    assert not engine.alive()
    reap(engine.current(), grace_s=5)
