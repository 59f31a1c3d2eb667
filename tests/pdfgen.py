"""Generate small PDFs for tests: text pages, blank pages, Greek pages, broken files."""

from __future__ import annotations

from pathlib import Path

import pymupdf

GREEK = "Άρθρο 5. Ο νόμος 2292/1995 (ΦΕΚ Α' 35) τροποποιείται ως εξής: η παράγραφος 2 καταργείται."
ENGLISH = "The quick brown fox jumps over the lazy dog. Page text for the OCR runner test."


def make_pdf(path: Path, pages: list[str | None], size: tuple[float, float] = (595, 842)) -> Path:
    """One page per entry: a string becomes a text paragraph, None a blank page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = pymupdf.open()
    for _ in pages:
        doc.new_page(width=size[0], height=size[1])
    for i, text in enumerate(pages):
        if text:
            rect = pymupdf.Rect(60, 60, size[0] - 60, size[1] - 60)
            doc[i].insert_htmlbox(rect, f'<p style="font-size:18px">{text}</p>')
    doc.save(path)
    return path


def numbered_pages(n: int, label: str = "Document") -> list[str]:
    return [f"{label} page {i + 1}. {ENGLISH}" for i in range(n)]
