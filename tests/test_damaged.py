"""Damaged PDFs: a truncated download is noticed, what it still has is kept, and it is never `complete`."""

from __future__ import annotations

from pathlib import Path


from ocr.records import PageKey
from ocr.render import inspect_pdf, render_task
from pdfgen import make_pdf, numbered_pages


def truncated(tmp_path: Path, keep: float = 0.5) -> Path:
    """The first half of a 5-page PDF, as an interrupted download leaves it."""
    whole = make_pdf(tmp_path / "whole.pdf", numbered_pages(5))
    cut = tmp_path / "in" / "half.pdf"
    cut.parent.mkdir(parents=True, exist_ok=True)
    data = whole.read_bytes()
    cut.write_bytes(data[:int(len(data) * keep)])
    return cut


def test_truncated_pdf_pages_are_flagged_by_the_render_worker(tmp_path):
    path = truncated(tmp_path)
    assert "startxref" in inspect_pdf(path).repaired            # MuPDF repaired it
    pages = [render_task(str(path), PageKey(0, n), 72, 10**6) for n in range(1, 6)]
    assert [p.image is not None for p in pages] == [True, True, False, False, False]
    assert all(p.damage is None for p in pages[:2])
    for p in pages[2:]:       # their content streams are past the cut: lost, not blank
        assert not p.blank and p.error == "damaged PDF: page content missing (truncated or damaged file)"


def test_whole_pdf_is_not_flagged(tmp_path):
    path = make_pdf(tmp_path / "whole.pdf", numbered_pages(2))
    assert inspect_pdf(path).repaired is None
    assert all(render_task(str(path), PageKey(0, n), 72, 10**6).damage is None for n in (1, 2))


def test_truncated_pdf_is_reported_damaged_and_keeps_what_it_has(tmp_path):
    from conftest import load_report, pdf_entry, run_cli
    path = truncated(tmp_path)
    out = tmp_path / "out"
    make_pdf(path.parent / "zz_good.pdf", numbered_pages(1))
    for good in ("complete", "skipped"):   # never complete: the rerun reports it again, not skips it
        assert run_cli(["--input-dir", str(path.parent), "--output-dir", str(out)]) == 1
        entry = pdf_entry(load_report(out), "half.pdf")
        assert entry["status"] == "damaged" and "startxref" in entry["repaired"]
        assert entry["error"] == "damaged PDF: pages [3, 4, 5]: page content missing (truncated or damaged file)"
        assert pdf_entry(load_report(out), "zz_good.pdf")["status"] == good
    md = (out / "half.md").read_text(encoding="utf-8")
    assert md.count("Text of page") == 2 and md.count("failed: damaged PDF: page content missing") == 3
    assert "[[Blank page]]" not in md
