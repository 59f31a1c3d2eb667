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


# --- near-blank pages: what a reader would miss if the blank check dropped them -----------------------
A4_PT = (595, 842)


def text_page(path: Path, lines: list[tuple[float, float, str]], grey: float = 0.0,
              fontsize: float = 11) -> Path:
    """One born-digital page with text lines at (x, y) points, in grey (0 = black, 1 = white)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = pymupdf.open()
    page = doc.new_page(width=A4_PT[0], height=A4_PT[1])
    for x, y, text in lines:
        page.insert_text((x, y), text, fontsize=fontsize, color=(grey, grey, grey))
    doc.save(path)
    return path


def grey_text_lines(n: int = 20) -> list[tuple[float, float, str]]:
    return [(72, 100 + 16 * i, f"Line {i + 1}: {ENGLISH}"[:90]) for i in range(n)]


def scan_pdf(path: Path, images: list) -> Path:
    """A scanned PDF: each page one full-page raster image (PIL), as a scanner writes it."""
    import io
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = pymupdf.open()
    for image in images:
        page = doc.new_page(width=A4_PT[0], height=A4_PT[1])
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)     # as scanners store greyscale pages
        page.insert_image(page.rect, stream=buf.getvalue())
    doc.save(path)
    return path


def scanned_paper(seed: int = 0, paper: int = 232, grain: float = 4.0, size=(1240, 1754)):
    """A 150-dpi A4 sheet of off-white paper with scanner grain."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    a = rng.normal(paper, grain, (size[1], size[0])).clip(0, 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def faint_pencil_scan(seed: int = 0, grey: int = 180):
    """A blank sheet with a short pencil note and a margin tick: thin, faint strokes, easy to read."""
    from PIL import ImageDraw, ImageFilter, ImageFont
    image = scanned_paper(seed)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=34)
    draw.text((300, 800), "check with the 1995 law, p. 12", fill=(grey,) * 3, font=font)
    draw.line([(300, 860), (420, 852), (560, 866), (700, 856)], fill=(grey,) * 3, width=2)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def margin_number_scan(seed: int = 0, text: str = "- 12 -"):
    """A blank sheet with only a printed page number, in the bottom 3% of the page."""
    from PIL import ImageDraw, ImageFont
    image = scanned_paper(seed)
    ImageDraw.Draw(image).text((590, 1710), text, fill=(40,) * 3, font=ImageFont.load_default(size=22))
    return image
