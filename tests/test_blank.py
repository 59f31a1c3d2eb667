"""Blank-page check: blanks and near-blanks skip inference; anything a reader would miss does not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import fixture_pdf
from ocr.blank import BlankReason, is_mostly_blank
from ocr.records import PageKey
from ocr.render import open_pdf, render_page, render_task
from pdfgen import (faint_pencil_scan, grey_text_lines, make_pdf, margin_number_scan, scan_pdf, scanned_paper,
                    text_page)

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


# Pages the old check (ink 70 grey levels below the paper, outer 5% ignored) called blank, silently.
NEAR_BLANK = {
    "grey-0.75 text": lambda p: text_page(p, grey_text_lines(20), grey=0.75),
    "faint pencil on a scan": lambda p: scan_pdf(p, [faint_pencil_scan()]),
    "header and page number in the outer 5%": lambda p: text_page(
        p, [(240, 20, "Official Gazette A 58/2018"), (290, 832, "12")], fontsize=9),
    "page number in a scan's bottom margin": lambda p: scan_pdf(p, [margin_number_scan()]),
    "one 8-pt digit mid-page": lambda p: text_page(p, [(297, 421, "7")], fontsize=8),
}
RASTER = ["grey-0.75 text", "faint pencil on a scan", "header and page number in the outer 5%",
          "page number in a scan's bottom margin"]


def page_verdict(path, page: int = 1, **kwargs):
    """The render worker's own verdict on a page, as the runner gets it."""
    return render_task(str(path), PageKey(0, page), 144, 12_000_000, **kwargs)


@pytest.mark.parametrize("kind", list(NEAR_BLANK))
def test_near_blank_pages_are_read(tmp_path, kind):
    page = page_verdict(NEAR_BLANK[kind](tmp_path / "p.pdf"))
    assert page.error is None and not page.blank and page.image is not None


@pytest.mark.parametrize("kind", RASTER)
def test_ink_test_alone_sees_faint_and_marginal_ink(tmp_path, kind):
    """The same pages as images only (a scan of them has no text layer to go by)."""
    [image] = [render_page(doc, 1, 144, 12_000_000) for doc in [open_pdf(NEAR_BLANK[kind](tmp_path / "p.pdf"))]]
    assert not is_mostly_blank(image)


def test_blank_scans_of_plain_paper_stay_blank(tmp_path):
    path = scan_pdf(tmp_path / "p.pdf", [scanned_paper(seed) for seed in range(3)])
    pages = [page_verdict(path, n) for n in (1, 2, 3)]
    assert all(p.blank and p.blank_reason == BlankReason.NO_INK.value for p in pages)


def test_blank_reasons_of_the_real_blank_pages():
    fek = fixture_pdf("el_digital_fek_2018_A58_trailing_blank_pages.pdf")
    law = fixture_pdf("el_scan_fek_1995_law2292.pdf")
    book = fixture_pdf("en_scan_blank_book_page_bleedthrough.pdf")
    assert [page_verdict(fek, n).blank_reason for n in (13, 14, 15)] == [None, BlankReason.EMPTY_PAGE.value,
                                                                         BlankReason.EMPTY_PAGE.value]
    assert [page_verdict(law, n).blank_reason for n in (13, 14, 15)] == [None, BlankReason.NO_INK.value,
                                                                         BlankReason.NO_INK.value]
    assert page_verdict(book).blank_reason == BlankReason.NO_INK.value


def test_sensitivity(tmp_path):
    """min_mark 0 turns the skip off; a higher bar skips a page whose only mark is a page number."""
    blank = make_pdf(tmp_path / "b.pdf", [None])
    number = scan_pdf(tmp_path / "n.pdf", [margin_number_scan()])
    assert page_verdict(blank).blank and not page_verdict(blank, min_mark=0).blank
    assert not page_verdict(number).blank and page_verdict(number, min_mark=500).blank
