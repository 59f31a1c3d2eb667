"""HTML pieces shared by ocr-review and ocr-compare: page images as data URIs, page Markdown rendered
safely (the model's HTML tables as tables, math as MathML, any other markup shown as source), grounded
boxes as SVG, and one self-contained document around them."""

from __future__ import annotations

import base64
import html
import io
import re
from html.parser import HTMLParser
from pathlib import Path

from latex2mathml.converter import convert as latex_to_mathml
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
_MATHML_TAGS = {"math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "mfrac", "msqrt", "mroot", "msub",
                "msup", "msubsup", "munder", "mover", "munderover", "mtable", "mtr", "mtd", "mstyle", "mpadded",
                "mphantom", "menclose", "merror", "semantics"}
_MATHML_ATTRS = {"xmlns", "display", "mathvariant", "stretchy", "fence", "separator", "lspace", "rspace",
                 "accent", "accentunder", "columnalign", "columnlines", "rowspacing", "columnspacing",
                 "displaystyle", "scriptlevel", "width", "height", "depth", "minsize", "maxsize", "movablelimits",
                 "linethickness", "notation", "symmetric", "largeop", "form"}


class _Sanitizer(HTMLParser):
    """Rebuilds markup from allowed tags and attributes; everything else becomes escaped text, and tags left
    open are closed, so a broken table (or a converter's odd output) cannot break the page around it."""

    def __init__(self, tags: set[str], keep_attr, self_closing: set[str] | None) -> None:
        super().__init__(convert_charrefs=True)
        self.tags, self.keep_attr, self.self_closing = tags, keep_attr, self_closing
        self.out: list[str] = []
        self.stack: list[str] = []

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], close: bool) -> None:
        kept = "".join(f' {k}="{html.escape(v)}"' for k, v in attrs if v is not None and self.keep_attr(k, v))
        self.out.append(f"<{tag}{kept}{'/' if close else ''}>")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.tags:
            self.out.append(html.escape(self.get_starttag_text() or ""))
            return
        void = self.self_closing is not None and tag in self.self_closing
        self._open(tag, attrs, close=False)
        if not void:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.tags and (self.self_closing is None or tag in self.self_closing):
            self._open(tag, attrs, close=self.self_closing is None)
        else:
            self.out.append(html.escape(self.get_starttag_text() or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.stack:
            if tag not in self.tags:
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


def _sanitize(fragment: str, tags: set[str], keep_attr, self_closing: set[str] | None) -> str:
    parser = _Sanitizer(tags, keep_attr, self_closing)
    parser.feed(fragment)
    return parser.result()


def table_html(fragment: str) -> str:
    """An HTML table the model wrote, rebuilt from table tags with colspan/rowspan only."""
    return _sanitize(fragment, _TABLE_TAGS, lambda k, v: k in ("colspan", "rowspan") and v.isdigit(), {"br"})


def mathml(latex: str, display: bool) -> str | None:
    """LaTeX as MathML (browsers draw it natively: nothing to bundle), sanitized; None if it does not convert."""
    try:
        converted = latex_to_mathml(latex, display="block" if display else "inline")
    except Exception:            # the converter's errors have no common base; any failure shows the source
        return None
    return _sanitize(converted, _MATHML_TAGS, lambda k, v: k in _MATHML_ATTRS, None)


def _math(m: re.Match[str]) -> str:
    """Math rendered as MathML with its LaTeX source on hover, or the source where it does not convert."""
    latex = next(g for g in m.groups() if g is not None)
    display = m.group(1) is None
    rendered = mathml(latex, display)
    cls = "math display" if display else "math"
    if rendered is None:
        return f'<span class="{cls} source">{html.escape(m.group(0))}</span>'
    return f'<span class="{cls}" title="{html.escape(m.group(0))}">{rendered}</span>'


def markdown_html(text: str) -> str:
    """A page's Markdown as HTML: Markdown rendered with raw HTML escaped, HTML tables rebuilt as tables,
    math as MathML (its LaTeX source where it does not convert)."""
    slots: list[str] = []

    def stash(rendered: str) -> str:
        slots.append(rendered)
        return f"\ue000{len(slots) - 1}\ue001"

    text = _TABLE_RE.sub(lambda m: "\n\n" + stash(table_html(m.group(0))) + "\n\n", text)
    text = _MATH_RE.sub(lambda m: stash(_math(m)), text)
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
