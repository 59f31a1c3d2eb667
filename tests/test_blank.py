"""Blank-page check on rendered pages: blanks and near-blanks skip inference, sparse text does not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import fixture_pdf
from ocr.blank import is_mostly_blank
from ocr.render import open_pdf, render_page
from pdfgen import make_pdf

A4 = (1191, 1684)   # A4 at 144 dpi


def paper(colour=(255, 255, 255)) -> Image.Image:
    return Image.new("RGB", A4, colour)


def noisy_scan(density: float, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.full((A4[1], A4[0], 3), 235, np.uint8)
    a[rng.random(a.shape[:2]) < density] = 40
    return Image.fromarray(a)


def punched_holes() -> Image.Image:
    im = paper()
    d = ImageDraw.Draw(im)
    for y in (500, 1100):
        d.ellipse((90, y, 140, y + 50), fill=(30, 30, 30))
    return im


def faint_border() -> Image.Image:
    im = paper()
    ImageDraw.Draw(im).rectangle((90, 90, A4[0] - 90, A4[1] - 90), outline=(205, 205, 205), width=3)
    return im


def dark_scanner_edges() -> Image.Image:
    a = np.full((A4[1], A4[0], 3), 228, np.uint8)
    a[:, :35] = 25
    a[:45, :] = 25
    a[-30:, :] = 60
    return Image.fromarray(a)


def rendered(pages, tmp_path, dpi=144) -> list[Image.Image]:
    path = make_pdf(tmp_path / "p.pdf", pages)
    with open_pdf(path) as doc:
        return [render_page(doc, i + 1, dpi, 12_000_000) for i in range(doc.page_count)]


@pytest.mark.parametrize("make", [paper, lambda: paper((250, 240, 205)), lambda: noisy_scan(0.01),
                                  punched_holes, faint_border, dark_scanner_edges],
                         ids=["white", "yellowed", "speckle-noise", "punched-holes", "faint-border",
                              "scanner-edges"])
def test_blank_and_near_blank_pages(make):
    assert is_mostly_blank(make())


@pytest.mark.parametrize("text", ["Only one short line.", "12", "Σελίδα 3", "ok"])
def test_sparse_rendered_text_is_not_blank(tmp_path, text):
    [image] = rendered([text], tmp_path)
    assert not is_mostly_blank(image)


def test_rendered_blank_pdf_page_is_blank(tmp_path):
    images = rendered([None, "Text"], tmp_path)
    assert is_mostly_blank(images[0]) and not is_mostly_blank(images[1])


def test_real_scans(tmp_path):
    def pages(name):
        with open_pdf(fixture_pdf(name)) as doc:
            return [is_mostly_blank(render_page(doc, p, 144, 12_000_000)) for p in range(1, doc.page_count + 1)]

    # born-digital gazette: pages 14 and 15 are empty padding pages
    fek = pages("el_digital_fek_2018_A58_trailing_blank_pages.pdf")
    assert [i + 1 for i, b in enumerate(fek) if b] == [14, 15]
    # 1-bit scan of a law: its pages 14-15 are blank sheets with dust, the rest is text
    law = pages("el_scan_fek_1995_law2292.pdf")
    assert [i + 1 for i, b in enumerate(law) if b] == [14, 15]
    assert pages("en_scan_blank_book_page_bleedthrough.pdf") == [True]   # yellow paper, bleed-through
    assert pages("bad_mangled_scanner_output.pdf") == [False]            # a faint "pdf.js" header is text
    assert pages("en_digital_skinny_tall_page.pdf") == [False, False]    # the 1:61 strip keeps its ink
    assert pages("en_scan_mixed_orientation_pages.pdf") == [False] * 4
