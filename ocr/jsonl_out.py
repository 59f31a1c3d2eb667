"""`<stem>.jsonl` beside `<stem>.md`: a header object, then one object per page (status, Markdown, tokens,
counters; grounded mode: the layout regions with their boxes in 0-999 and in page pixels).
The schema is ocr/schemas/pages.schema.json (docs/output.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import pymupdf

from .engines.base import Failure
from .grounding import parse_regions, to_pixels
from .records import PageResult, PageStatus
from .render import PdfError, open_pdf, page_zoom
from .store import json_text, write_atomic

FORMAT = "deepseek-ocr-runner/pages"
VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schemas") / "pages.schema.json"
STATUSES = ("ok", "blank", "failed", "damaged")


FORMATS = ("md", "jsonl")


def parse_formats(text: str) -> tuple[str, ...]:
    """'md,jsonl' -> ('md', 'jsonl'); raises ValueError naming what is wrong. The Markdown is always written
    (resume and the page journal rely on it), so 'md' may be left out: 'jsonl' means 'md,jsonl'."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ValueError(f"--format {text!r}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; "
                         f"choose from {', '.join(FORMATS)} (comma-separated)")
    return tuple(f for f in FORMATS if f in names or f == "md")


def jsonl_path(md_path: Path) -> Path:
    """x.md -> x.jsonl, x.pdf.md -> x.pdf.jsonl (always beside the Markdown)."""
    return md_path.with_suffix(".jsonl")


def page_status(result: PageResult) -> str:
    """ok / blank / failed (the model gave nothing usable) / damaged (the page itself could not be rendered
    or loaded from the PDF: no inference happened)."""
    if result.status == PageStatus.FAILED and result.failure is Failure.RENDER:
        return "damaged"
    return str(getattr(result.status, "value", result.status))


def page_pixel_size(doc: pymupdf.Document, page_no: int, dpi: int, max_pixels: int) -> tuple[int, int]:
    """The size ocr.render.render_page gives this page, without rendering it (MuPDF's pixmap is the
    page rectangle's integer cover at that zoom)."""
    page = doc[page_no - 1]
    zoom = page_zoom(page.rect.width, page.rect.height, dpi, max_pixels)
    rect = (page.rect * pymupdf.Matrix(zoom, zoom)).irect
    return rect.width, rect.height


def header_record(*, source_name: str, sha256: str, size: int, output: str, model: str, mode: str,
                  settings: dict[str, Any], page_count: int, pages: Sequence[int]) -> dict[str, Any]:
    """What the per-page objects came from: the source PDF, the model, and the settings that change output
    (the resume fingerprint)."""
    return {"type": "header", "format": FORMAT, "version": VERSION,
            "source": {"name": source_name, "sha256": sha256, "size": size}, "output": output,
            "model": model, "mode": mode, "settings": settings, "page_count": page_count,
            "pages": list(pages)}


def regions(text: str, image_size: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The layout regions of a grounded page: label, boxes (0-999), boxes in page pixels, text."""
    out = []
    for region in parse_regions(text):
        boxes = [list(b) for b in region.boxes]
        px = [list(to_pixels(b, *image_size)) for b in region.boxes] if image_size else None
        out.append({"label": region.label, "boxes": boxes, "boxes_px": px, "text": region.text})
    return out


def page_record(result: PageResult, *, grounded: bool, image_size: tuple[int, int] | None) -> dict[str, Any]:
    record = {"type": "page", "page": result.page, "status": page_status(result), "text": result.text,
              "tokens": result.tokens, "finish_reason": result.finish_reason, "error": result.error,
              "counters": dict(sorted(result.counters.items())), "greek": result.stats,
              "image": {"width": image_size[0], "height": image_size[1]} if image_size else None}
    if grounded:
        record["regions"] = regions(result.text, image_size) if result.status == PageStatus.OK else []
    return record


def jsonl_text(header: dict[str, Any], results: Iterable[PageResult], *, grounded: bool,
               image_sizes: dict[int, tuple[int, int]]) -> str:
    lines = [json_text(header)]
    for result in sorted(results, key=lambda r: r.page):
        lines.append(json_text(page_record(result, grounded=grounded, image_size=image_sizes.get(result.page))))
    return "\n".join(lines) + "\n"


def write_pages_jsonl(md_path: Path, header: dict[str, Any], results: Iterable[PageResult], *,
                      grounded: bool, image_sizes: dict[int, tuple[int, int]]) -> Path:
    """Write <stem>.jsonl atomically (a temporary file renamed into place, as the Markdown)."""
    path = jsonl_path(md_path)
    write_atomic(path, jsonl_text(header, results, grounded=grounded, image_sizes=image_sizes))
    return path


def image_sizes(source: Path, pages: Iterable[int], dpi: int, max_pixels: int) -> tuple[int | None, dict]:
    """(the PDF's page count, {page: rendered size}) read from the PDF without rendering; pages that do not
    load are left out, and a PDF that no longer opens gives (None, {})."""
    try:
        with open_pdf(source) as doc:
            sizes = {}
            for page in pages:
                try:
                    sizes[page] = page_pixel_size(doc, page, dpi, max_pixels)
                except Exception:            # a damaged page: its record says so, without a size
                    continue
            return doc.page_count, sizes
    except (PdfError, OSError):
        return None, {}


def write_for_pdf(cfg: Any, *, source_path: Path, source_name: str, sha256: str, size: int, md_path: Path,
                  pages: Sequence[int], results: Iterable[PageResult]) -> Path:
    """The runner's hook when a PDF is finalized: header from the run's settings (`cfg`: ocr.config.Config),
    page sizes from the PDF itself, written beside the Markdown."""
    results = list(results)
    page_count, sizes = image_sizes(source_path, [r.page for r in results], cfg.dpi, cfg.max_render_pixels)
    head = header_record(source_name=source_name, sha256=sha256, size=size,
                         output=md_path.relative_to(cfg.output_dir).as_posix(), model=cfg.model, mode=cfg.mode,
                         settings=cfg.fingerprint(), page_count=page_count or max(pages, default=1),
                         pages=sorted(pages))
    return write_pages_jsonl(md_path, head, results, grounded=cfg.mode == "grounded", image_sizes=sizes)


def read_pages_jsonl(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, page records in page order); raises ValueError on a file that is not one of ours."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or lines[0].get("type") != "header" or lines[0].get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (no header object on its first line)")
    return lines[0], sorted((r for r in lines[1:] if r.get("type") == "page"), key=lambda r: r["page"])


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
