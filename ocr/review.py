"""ocr-review OUT [PDF...]: one self-contained HTML file per PDF, each page's image (grounded boxes drawn and
labelled) beside its Markdown rendered, pages the counters flag marked and listed at the top."""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path
from typing import Sequence

from .grounding import parse_regions
from .html_render import PageImages, boxes_svg, data_uri, document, markdown_html, printable, regions_html
from .pages import PageSpecError, parse_spec
from .run_outputs import Page, PdfOutput, read_run
from .store import write_atomic

_RUNAWAY_REASONS = {"runaway_repeated_lines": "repeated lines", "runaway_repeated_ngrams": "repeated n-grams",
                    "runaway_empty": "empty answer", "runaway_hit_max_tokens": "cut at --max-tokens"}


def flags(page: Page) -> list[str]:
    """Why a reviewer should look at this page, from its status and counters; [] for an unremarkable page."""
    c, out = page.counters, []
    if page.status in ("failed", "damaged"):
        out.append(f"{page.status}: {page.error}" if page.error else page.status)
    if c.get("runaway_pages"):
        why = ", ".join(v for k, v in _RUNAWAY_REASONS.items() if c.get(k)) or "loop"
        outcome = ("retry kept" if c.get("runaway_improved") else
                   "still a runaway" if c.get("runaway_unresolved") else "retried" if c.get("runaway_retried") else "")
        out.append(f"runaway ({why}{'; ' + outcome if outcome else ''})")
    elif c.get("hit_max_tokens") or page.finish_reason == "length":
        out.append("cut at --max-tokens")
    if mixed := page.greek.get("mixed_script_words"):
        out.append(f"Greek mixed script: {mixed} word{'s' if mixed != 1 else ''}")
    if replaced := c.get("roi_replaced"):
        out.append(f"ROI pass replaced {replaced} region{'s' if replaced != 1 else ''}")
    if c.get("large_improved"):
        out.append("Large-mode re-read kept")
    return out


def _badges(marks: list[str]) -> str:
    return "".join(f'<span class="badge {html.escape(m.split(":")[0])}">{html.escape(m)}</span>' for m in marks)


def page_html(pdf: PdfOutput, page: Page, images: PageImages) -> str:
    marks = flags(page)
    image = images.get(page.page)
    grounded = pdf.mode == "grounded" and page.status == "ok"
    regions = parse_regions(page.text) if grounded else []
    if image is not None:
        svg = boxes_svg(regions, *image.size) if grounded else ""
        figure = f'<div class="stage"><img class="scan" alt="page {page.page}" src="{data_uri(image)}">{svg}</div>'
    else:
        figure = f'<div class="noimage">no page image: {html.escape(images.error or "page not in the PDF")}</div>'
    text = regions_html(regions) if grounded else markdown_html(page.text)
    return (f'<article class="page{" flagged" if marks else ""}" id="page-{page.page}" data-page="{page.page}">'
            f'<h2>Page {page.page}{_badges(marks)}</h2><div class="cols"><figure>{figure}</figure>'
            f'<div class="text">{text}</div></div></article>')


def review_html(pdf: PdfOutput, images: PageImages, pages: list[int]) -> str:
    title = pdf.pdf_name or pdf.key
    flagged = [(n, flags(pdf.pages[n])) for n in pages if flags(pdf.pages[n])]
    head = [f"<header><h1>{html.escape(title)}</h1>",
            f'<p class="meta">{len(pages)} pages, {pdf.mode} mode, Markdown {html.escape(pdf.key)}'
            f'{", source " + html.escape(str(pdf.source)) if pdf.source else ""}</p><p id="check"></p>',
            f'<section class="flags"><h2>Flagged pages: {len(flagged)}</h2><ul>']
    head += [f'<li><a href="#page-{n}">Page {n}</a>: {html.escape("; ".join(m))}</li>' for n, m in flagged]
    head.append("</ul></section></header>")
    body = [page_html(pdf, pdf.pages[n], images) for n in pages]
    return document(f"review: {title}", "\n".join(head + ["<main>"] + body + ["</main>"]))


def _matches(arg: str, pdf: PdfOutput) -> bool:
    p = Path(arg)
    names = {pdf.key, pdf.key[:-3], pdf.pdf_name or ""}
    return (arg in names or p.as_posix() in names or (pdf.source is not None and p.exists()
            and p.resolve() == pdf.source.resolve()) or (pdf.pdf_name is not None and p.name == Path(pdf.pdf_name).name))


def review_path(dest: Path, pdf: PdfOutput) -> Path:
    return dest / (pdf.key[:-3] + ".html")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ocr-review", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="a run's output folder")
    p.add_argument("pdfs", nargs="*", help="only these PDFs (their names under --input-dir, Markdown paths, "
                                           "or the PDF files); default: every PDF")
    p.add_argument("--dest", type=Path, help="where the HTML files go (default: OUT/review/)")
    p.add_argument("--input-dir", type=Path, help="where the source PDFs are (default: the run report says)")
    p.add_argument("--pages", help="only these pages, e.g. 1-5,10 (default: every page of the output)")
    p.add_argument("--flagged-only", action="store_true", help="only the flagged pages")
    p.add_argument("--dpi", type=int, default=96, help="resolution of the inlined page images")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out.is_dir():
        print(f"error: {args.out} is not a folder", file=sys.stderr)
        return 2
    try:
        spec = parse_spec(args.pages)
    except PageSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outputs = read_run(args.out, args.input_dir)
    chosen = [o for o in outputs if not args.pdfs or any(_matches(a, o) for a in args.pdfs)]
    for arg in args.pdfs:
        if not any(_matches(arg, o) for o in outputs):
            print(f"warning: no output for {arg} in {args.out}", file=sys.stderr)
    if not chosen:
        print(f"error: no PDF outputs to review in {args.out}", file=sys.stderr)
        return 2
    dest = args.dest or args.out / "review"
    for pdf in chosen:
        pages = [n for n in spec.pages(max(pdf.pages, default=0)) if n in pdf.pages]
        if args.flagged_only:
            pages = [n for n in pages if flags(pdf.pages[n])]
        images = PageImages(pdf.source, args.dpi)
        try:
            path = review_path(dest, pdf)
            write_atomic(path, review_html(pdf, images, pages))
        finally:
            images.close()
        note = f" (no page images: {images.error})" if images.error else ""
        print(printable(f"{path}: {len(pages)} pages, {sum(bool(flags(pdf.pages[n])) for n in pages)} flagged{note}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
