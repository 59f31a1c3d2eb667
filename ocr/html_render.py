"""HTML pieces shared by ocr-review and ocr-compare: page images as data URIs, page Markdown rendered
safely (the model's HTML tables as tables, math and any other markup shown as source), grounded boxes
as SVG, and one self-contained document around them."""

from __future__ import annotations

import base64
import html
import io
import re
from html.parser import HTMLParser
from pathlib import Path

from markdown_it import MarkdownIt
from PIL import Image

from .grounding import Region, to_pixels
from .render import open_pdf, render_page

ASSETS = Path(__file__).with_name("html_assets")
_MD = MarkdownIt("commonmark", {"html": False}).enable("table")
_TABLE_RE = re.compile(r"<table\b.*?(?:</table\s*>|\Z)", re.IGNORECASE | re.DOTALL)
# \( \), \[ \] and $$ $$: shown as source, kept away from Markdown (which would eat the backslashes)
_MATH_RE = re.compile(r"\\\((.+?)\\\)|\\\[(.+?)\\\]|\$\$(.+?)\$\$", re.DOTALL)
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")
_TABLE_TAGS = {"table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption", "br", "sup", "sub", "b", "i",
               "strong", "em"}
_VOID = {"br"}
_SPAN_ATTRS = {"colspan", "rowspan"}


class _TableSanitizer(HTMLParser):
    """Rebuilds an HTML table from allowed tags (colspan/rowspan only); everything else becomes escaped text,
    and tags the model left open are closed, so a broken table cannot break the page around it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TABLE_TAGS:
            self.out.append(html.escape(self.get_starttag_text() or ""))
            return
        kept = "".join(f' {k}="{v}"' for k, v in attrs if k in _SPAN_ATTRS and v and v.isdigit())
        self.out.append(f"<{tag}{kept}>")
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            self.out.append(f"<{tag}>")
        else:
            self.out.append(html.escape(self.get_starttag_text() or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.stack:
            if tag not in _TABLE_TAGS:
                self.out.append(html.escape(f"</{tag}>"))
            return
        while self.stack:
            top = self.stack.pop()
            self.out.append(f"</{top}>")
            if top == tag:
                break

    def handle_data(self, data: str) -> None:
        self.out.append(html.escape(data))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.stack))


def table_html(fragment: str) -> str:
    parser = _TableSanitizer()
    parser.feed(fragment)
    return parser.result()


def _math_source(m: re.Match[str]) -> str:
    display = m.group(1) is None
    return f'<span class="math{" display" if display else ""}">{html.escape(m.group(0))}</span>'


def markdown_html(text: str) -> str:
    """A page's Markdown as HTML: Markdown rendered with raw HTML escaped, HTML tables rebuilt as tables,
    math shown as its LaTeX source."""
    slots: list[str] = []

    def stash(rendered: str) -> str:
        slots.append(rendered)
        return f"\ue000{len(slots) - 1}\ue001"

    text = _TABLE_RE.sub(lambda m: "\n\n" + stash(table_html(m.group(0))) + "\n\n", text)
    text = _MATH_RE.sub(lambda m: stash(_math_source(m)), text)
    rendered = _MD.render(text)
    # a slot alone in a paragraph is a block (a table): unwrap it from the <p> Markdown put around it
    rendered = re.sub("<p>(\ue000\\d+\ue001)</p>", r"\1", rendered)
    return _SLOT_RE.sub(lambda m: slots[int(m.group(1))], rendered)


def regions_html(regions: list[Region]) -> str:
    """A grounded page's text: each region's label (numbered as its box on the image) and its text."""
    parts = []
    for n, region in enumerate(regions, 1):
        label = html.escape(region.label or "(before the first block)")
        number = f"{n} " if region.boxes else ""
        parts.append(f'<section class="region" data-label="{label}"><span class="label">{number}{label}</span>'
                     f"{markdown_html(region.text)}</section>")
    return "\n".join(parts)


def boxes_svg(regions: list[Region], width: int, height: int) -> str:
    """An SVG over the page image: one labelled rectangle per grounded box (0-999 space to pixels)."""
    shapes = []
    for n, region in enumerate(regions, 1):
        for box in region.boxes:
            x1, y1, x2, y2 = to_pixels(box, width, height)
            label = html.escape(region.label or "?")
            shapes.append(f'<g class="box" data-label="{label}"><rect x="{x1}" y="{y1}" width="{max(x2 - x1, 1)}" '
                          f'height="{max(y2 - y1, 1)}"/><text x="{x1 + 3}" y="{max(y1 - 4, 12)}">{n} {label}</text></g>')
    return (f'<svg class="boxes" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(shapes)}</svg>')


def data_uri(image: Image.Image, quality: int = 70) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class PageImages:
    """Page images of one PDF rendered on demand (the PDF is opened once); None where it cannot be."""

    def __init__(self, source: Path | None, dpi: int, max_pixels: int = 4_000_000):
        self.dpi, self.max_pixels, self.error = dpi, max_pixels, None
        self.doc = None
        if source is None:
            self.error = "source PDF not found (give its folder with --input-dir)"
            return
        try:
            self.doc = open_pdf(source)
        except Exception as exc:     # a moved or damaged source: the page text is still worth showing
            self.error = f"cannot open {source}: {exc}"

    def get(self, page: int) -> Image.Image | None:
        if self.doc is None or not 1 <= page <= self.doc.page_count:
            return None
        try:
            return render_page(self.doc, page, self.dpi, self.max_pixels)
        except Exception:
            return None

    def close(self) -> None:
        if self.doc is not None:
            self.doc.close()


def printable(text: str) -> str:
    """Text safe to write as UTF-8: a file name that is not valid UTF-8 (lone surrogates) shows '?' there."""
    return text.encode("utf-8", "replace").decode("utf-8")


def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def document(title: str, body: str) -> str:
    """One self-contained HTML file: the shared style and check script inlined, no outside references."""
    return printable("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                     f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
                     f"<style>{asset('page.css')}</style></head>\n<body>\n{body}\n"
                     f"<script>{asset('check.js')}</script>\n</body></html>\n")
