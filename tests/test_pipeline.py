"""The runner end to end with the scripted engine double: files, headings, stubs, report, resume."""

from __future__ import annotations

import os
import time

from conftest import load_report, pdf_entry, run_cli
from doubles import ScriptedEngine
from pdfgen import ENGLISH, GREEK, make_pdf, numbered_pages


def test_corpus_becomes_one_markdown_per_pdf(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "report.pdf", [ENGLISH, None, GREEK])
    make_pdf(src / "sub" / "report.PDF", [ENGLISH])          # same stem, other folder, upper-case suffix

    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0

    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Page 1")
    assert "----- Page 1 -----" not in md
    assert "----- Page 2 -----\n\n[[Blank page]]" in md
    assert "----- Page 3 -----\n\n# Page 3" in md
    assert (out / "sub" / "report.md").read_text(encoding="utf-8").startswith("# Page 1")
    report = load_report(out)
    entry = pdf_entry(report, "report.pdf")
    assert (entry["status"], entry["pages"], entry["blank_pages"]) == ("complete", 3, 1)
    assert entry["tokens"] > 0 and entry["output"] == "report.md"
    assert report["totals"]["pdfs_complete"] == 2 and report["totals"]["pages"] == 4
    assert not list(out.rglob("*.part")) and not list((out / ".ocr-state" / "journal").iterdir())
    assert list((out / "logs").glob("run-*.log"))


def test_max_pages_caps_each_pdf(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "long.pdf", numbered_pages(5))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--max-pages", "2"]) == 0
    md = (out / "long.md").read_text(encoding="utf-8")
    assert "----- Page 2 -----" in md and "----- Page 3 -----" not in md


def test_second_run_skips_complete_pdfs_and_redoes_changed_ones(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(2, "A"))
    make_pdf(src / "b.pdf", numbered_pages(2, "B"))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0

    make_pdf(src / "b.pdf", numbered_pages(3, "B changed"))
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 0
    assert {pdf for pdf, _, _ in engine.log} == {1}           # only b.pdf (job index 1) went to the engine
    report = load_report(out)
    assert pdf_entry(report, "a.pdf")["status"] == "skipped"
    assert "----- Page 3 -----" in (out / "b.md").read_text(encoding="utf-8")

    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--overwrite"], engine=engine) == 0
    assert len(engine.log) == 5


def test_touched_but_identical_pdf_is_not_redone(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    pdf = make_pdf(src / "a.pdf", numbered_pages(1))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    os.utime(pdf, (1_000_000, 1_000_000))
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 0
    assert engine.log == []


def test_changed_mode_redoes_the_pdf(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(1))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded"], engine=engine) == 0
    assert len(engine.log) == 1


def test_empty_output_is_retried_once_then_stubbed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(3))
    engine = ScriptedEngine(script=lambda r: "" if r.key.page == 2 else f"text {r.key.page}")
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 1
    assert [a for _, p, a in engine.log if p == 2] == [0, 1]
    md = (out / "a.md").read_text(encoding="utf-8")
    assert "[[Page 2 failed: the model returned no text]]" in md and "text 3" in md
    entry = pdf_entry(load_report(out), "a.pdf")
    assert entry["status"] == "partial" and entry["failed_pages"] == [2]

    # The next run redoes only the failed page.
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 0
    assert [p for _, p, _ in engine.log] == [2]
    md = (out / "a.md").read_text(encoding="utf-8")
    assert "failed" not in md and "text 1" in md and "# Page 2" in md


def test_pages_of_many_pdfs_share_the_engine(tmp_path):
    """Continuous batching across PDFs: the engine is topped up to --batch-pages from the next PDFs."""
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        make_pdf(src / f"d{i}.pdf", numbered_pages(2))
    seen = []

    class Watching(ScriptedEngine):
        def poll(self):  # an engine step takes time, as on a GPU; the renderer keeps up meanwhile
            time.sleep(0.3)
            seen.append({k.pdf for k in self._in})
            return super().poll()

    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--batch-pages", "6"],
                   engine=Watching(per_poll=1)) == 0
    assert max(len(s) for s in seen) >= 2
