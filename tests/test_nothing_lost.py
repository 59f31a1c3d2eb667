"""Kills and signals: outputs after any number of kills equal an uninterrupted run, byte for byte."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, load_report
from pdfgen import ENGLISH, GREEK, make_pdf, numbered_pages

DRIVER = ROOT / "tests" / "drive_double.py"


def corpus(src: Path) -> None:
    make_pdf(src / "a.pdf", numbered_pages(4, "Alpha"))
    make_pdf(src / "sub" / "b.pdf", [GREEK, None, ENGLISH])
    make_pdf(src / "c.pdf", numbered_pages(9, "Gamma"))


def start(src: Path, out: Path, step_s: float = 0.1, *extra: str) -> subprocess.Popen:
    args = [sys.executable, str(DRIVER), "--input-dir", str(src), "--output-dir", str(out),
            "--render-workers", "1", "--batch-pages", "3", "--no-progress", *extra]
    env = {**os.environ, "OCR_DOUBLE_STEP_S": str(step_s)}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.md"))}


def leftovers(out: Path) -> list[Path]:
    state = out / ".ocr-state" / "journal"
    return list(out.rglob("*.part")) + list(out.rglob(".tmp-*")) + (list(state.iterdir()) if state.exists() else [])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    corpus(base / "in")
    proc = start(base / "in", base / "out", step_s=0.0)
    assert proc.wait(120) == 0, proc.stderr.read()
    return base / "in", outputs(base / "out")


def journal_lines(out: Path) -> list[tuple[str, int]]:
    """Each journal's name and line count; a journal the runner removes meanwhile (its PDF is done) is
    left out."""
    journal = out / ".ocr-state" / "journal"
    found = []
    for path in (journal.iterdir() if journal.exists() else ()):
        try:
            found.append((path.name, len(path.read_bytes().splitlines())))
        except FileNotFoundError:
            pass
    return sorted(found)


def progress(out: Path) -> tuple:
    """What is on disk so far: journal lengths and finished Markdown files (changes with every page)."""
    return tuple(journal_lines(out)), tuple(sorted(p.name for p in out.rglob("*.md")))


def kill_round(src: Path, out: Path, rng: random.Random, during_startup: bool) -> bool:
    """One run killed at a random moment: during start-up, or just after it journaled its first page.

    One page per 0.5-s engine step (--batch-pages 1, nothing queued ahead), so a kill at most 0.4 s
    after a page landed leaves at most two pages done per run, whatever the machine's speed."""
    before = progress(out)
    proc = start(src, out, 0.5, "--batch-pages", "1", "--queue-ahead", "0")
    if during_startup:
        time.sleep(rng.uniform(0.05, 1.5))
    else:
        deadline = time.monotonic() + 60
        while proc.poll() is None and progress(out) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read()
        return False
    proc.kill()
    proc.wait()
    return True


def test_random_kills_then_resume_match_an_uninterrupted_run(tmp_path, reference):
    src, expected = reference
    out = tmp_path / "out"
    rng = random.Random(1234)
    kills = 0
    for round_ in range(40):
        if not kill_round(src, out, rng, during_startup=round_ % 3 == 0):
            break                          # a run got to the end before its kill
        kills += 1
    assert kills >= 8                      # 15 engine pages, at most two per killed run after a page landed
    final = start(src, out)
    assert final.wait(180) == 0, final.stderr.read()
    assert outputs(out) == expected
    assert leftovers(out) == []
    totals = load_report(out)["totals"]        # the last kill may have landed after every PDF was done
    assert totals.get("pdfs_complete", 0) + totals.get("pdfs_skipped", 0) == 3


def _wait_for_journal_page(out: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(lines > 1 for _, lines in journal_lines(out)):
            return
        time.sleep(0.05)
    raise AssertionError("no page was journaled")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_the_next_run_finishes(tmp_path, reference, sig):
    src, expected = reference
    out = tmp_path / "out"
    proc = start(src, out, step_s=0.3)
    _wait_for_journal_page(out)
    sent = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(30) == 130
    assert time.monotonic() - sent < 15
    report = load_report(out)
    assert report["interrupted"] == f"stopped by {sig.name}"
    assert report["totals"].get("pdfs_unfinished", 0) >= 1
    assert list(out.rglob("*.part")) == []
    final = start(src, out, step_s=0.0)
    assert final.wait(120) == 0, final.stderr.read()
    assert outputs(out) == expected and leftovers(out) == []


def test_second_signal_exits_at_once(tmp_path, reference):
    src, _ = reference
    out = tmp_path / "out"
    proc = start(src, out, step_s=8.0)          # a graceful stop would wait for the 8-s engine step
    _wait_for_journal_page(out, timeout=120)
    proc.send_signal(signal.SIGTERM)
    time.sleep(2.5)                             # within 2 s it would be the same request (tests/test_signals.py)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130
    assert time.monotonic() - sent < 4


def test_render_and_post_processes_end_with_a_killed_runner(tmp_path, reference):
    """SIGKILL (the OOM killer, `timeout -s KILL`) leaves no render or post-processing process behind
    holding memory."""
    import psutil
    src, _ = reference
    out = tmp_path / "out"
    proc = start(src, out, 8.0, "--post-workers", "2")
    _wait_for_journal_page(out, timeout=120)
    workers = psutil.Process(proc.pid).children(recursive=True)
    spawned = [p for p in workers if "spawn_main" in " ".join(p.cmdline())]
    assert len(spawned) == 3, [p.cmdline() for p in workers]         # 1 render process, 2 post workers
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
