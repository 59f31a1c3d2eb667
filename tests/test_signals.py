"""Stopping under GNU `timeout`: it signals the runner, then its own process group, so the runner gets two
SIGTERMs at once. That is one request: the run stops gracefully, exit code 130, and the final report lists
every planned PDF with its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, load_report
from pdfgen import ENGLISH, GREEK, make_pdf, numbered_pages

DRIVER = ROOT / "tests" / "drive_double.py"
PLANNED = {"a.pdf": "a.md", "sub/b.pdf": "sub/b.md", "c.pdf": "c.md"}


def corpus(src: Path) -> None:
    make_pdf(src / "a.pdf", numbered_pages(3, "Alpha"))
    make_pdf(src / "sub" / "b.pdf", [GREEK, None, ENGLISH])
    make_pdf(src / "c.pdf", numbered_pages(16, "Gamma"))   # long enough that every try is stopped mid-run


def command(src: Path, out: Path) -> list[str]:
    return [sys.executable, str(DRIVER), "--input-dir", str(src), "--output-dir", str(out),
            "--render-workers", "1", "--batch-pages", "2", "--no-progress"]


ENV = {**os.environ, "OCR_DOUBLE_STEP_S": "1.0"}


def journal_lines(journal: Path) -> list[int]:
    found = []
    for path in journal.glob("*.jsonl"):
        try:
            found.append(len(path.read_bytes().splitlines()))
        except FileNotFoundError:      # its PDF was done meanwhile
            pass
    return found


def start_under_timeout(src: Path, out: Path) -> subprocess.Popen:
    """The runner under `timeout --preserve-status`, as the README's smoke test runs it."""
    return subprocess.Popen(["timeout", "--preserve-status", "-k", "400", "900", *command(src, out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def expire_after_first_page(proc: subprocess.Popen, out: Path, delay: float) -> None:
    """Make `timeout` fire `delay` s after the run's first page, however slow start-up is on this machine:
    a SIGTERM to `timeout` takes its expiry path (signal the runner, then the whole process group)."""
    journal, deadline = out / ".ocr-state" / "journal", time.monotonic() + 300
    while not any(lines > 1 for lines in journal_lines(journal)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)


def check(attempt: int, proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(500) == 130, (attempt, proc.stderr.read()[-3000:])
    report = load_report(out)
    assert report["interrupted"] == "stopped by SIGTERM", attempt
    states = {e["pdf"]: e["status"] for e in report["pdfs"]}
    assert set(states) == set(PLANNED), (attempt, states)           # every planned PDF, started or not
    written = {md.relative_to(out).as_posix() for md in out.rglob("*.md")}
    assert {PLANNED[pdf] for pdf, state in states.items() if state == "complete"} == written, attempt
    assert set(states.values()) <= {"complete", "unfinished"}, (attempt, states)


def test_timeout_stops_gracefully_with_the_full_report_10_of_10(tmp_path):
    src = tmp_path / "in"
    corpus(src)
    for batch in (range(0, 5), range(5, 10)):          # five at a time: the tries are independent
        runs = {attempt: (tmp_path / f"out{attempt}") for attempt in batch}
        procs = {attempt: start_under_timeout(src, out) for attempt, out in runs.items()}
        for attempt, proc in procs.items():
            expire_after_first_page(proc, runs[attempt], delay=0.45 * (attempt % 5))
        for attempt, proc in procs.items():
            check(attempt, proc, runs[attempt])
