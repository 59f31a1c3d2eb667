"""ocr-compare OUT_A OUT_B: how alike two runs over the same PDFs are, page by page (normalized edit
distance; text, table cells and headings scored apart), per PDF and for the run, worst pages first;
--html shows those pages' images beside both texts with the differences marked."""

from __future__ import annotations

import argparse
import html
import re
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from .grounding import iter_blocks
from .html_render import PageImages, data_uri, document, printable
from .run_outputs import Page, PdfOutput, read_run
from .store import json_text, write_atomic

PARTS = ("all", "text", "tables", "headings")
_HEADING_RE = re.compile(r"^#{1,6}\s+(.*)$")
_PIPE_SEP_RE = re.compile(r"^\|?[\s:|-]+\|?$")
_TABLE_RE = re.compile(r"<table\b.*?(?:</table\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"<[^>\n]{1,200}>")
_WS_RE = re.compile(r"[ \t\r\f\v]+")


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("td", "th"):
            self._flush()
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "tr", "table"):
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def _flush(self) -> None:
        if self._cell is not None:
            self.cells.append(" ".join("".join(self._cell).split()))
        self._cell = None


def strip_grounding(text: str) -> str:
    """The page text without its <|ref|>..<|det|>..<|/det|> blocks (boxes move between runs; they are
    not text)."""
    out, pos = [], 0
    for block in iter_blocks(text):
        out.append(text[pos:block.start])
        pos = block.end
    out.append(text[pos:])
    return "".join(out).replace("<|/ref|>", "").replace("<|/det|>", "")


def split_parts(md: str) -> dict[str, str]:
    """A page's Markdown as the strings that are scored: body text, table cells (one per line, HTML and
    pipe tables), headings; `all` is the three together."""
    md = strip_grounding(md)
    cells: list[str] = []
    for table in _TABLE_RE.findall(md):
        parser = _Cells()
        parser.feed(table)
        parser.close()
        parser._flush()
        cells.extend(parser.cells)
    md = _TABLE_RE.sub("\n", md)
    headings, text = [], []
    for line in md.splitlines():
        stripped = line.strip()
        if m := _HEADING_RE.match(stripped):
            headings.append(m.group(1).strip())
        elif stripped.startswith("|") and stripped.count("|") >= 2:
            if not _PIPE_SEP_RE.match(stripped):
                cells.extend(" ".join(c.split()) for c in stripped.strip("|").split("|"))
        elif stripped:
            text.append(_WS_RE.sub(" ", _TAG_RE.sub(" ", stripped)).strip())
    parts = {"text": "\n".join(t for t in text if t), "tables": "\n".join(cells), "headings": "\n".join(headings)}
    parts["all"] = "\n".join(p for p in (parts["headings"], parts["text"], parts["tables"]) if p)
    return parts


def similarity(a: str, b: str) -> float | None:
    """1 - normalized Levenshtein distance; None when both are empty (nothing to score)."""
    if not a and not b:
        return None
    return float(Levenshtein.normalized_similarity(a, b))


@dataclass(frozen=True)
class PageScore:
    pdf: str
    page: int
    scores: dict[str, float | None]     # per part; `all` is None only when both pages are empty
    status_a: str | None                # None: the page is missing in that run
    status_b: str | None

    @property
    def score(self) -> float:
        s = self.scores["all"]
        return 1.0 if s is None else s


FAILED = ("failed", "damaged")


def score_page(pdf: str, page: int, a: Page | None, b: Page | None) -> PageScore:
    """A page missing in one run, or failed in one run only, scores 0 (its failure stub is not text)."""
    if a is None or b is None or (a.status in FAILED) != (b.status in FAILED):
        return PageScore(pdf, page, {p: 0.0 for p in PARTS}, a and a.status, b and b.status)
    pa, pb = split_parts(a.text), split_parts(b.text)
    return PageScore(pdf, page, {p: similarity(pa[p], pb[p]) for p in PARTS}, a.status, b.status)


def summarize(scores: Sequence[PageScore], threshold: float) -> dict[str, Any]:
    values = np.array([s.score for s in scores], dtype=float)
    if not len(values):
        return {"pages": 0, "mean": None, "p5": None, "below": 0}
    parts = {}
    for part in PARTS[1:]:
        got = [s.scores[part] for s in scores if s.scores[part] is not None]
        parts[part] = round(float(np.mean(got)), 4) if got else None
    return {"pages": len(values), "mean": round(float(values.mean()), 4),
            "p5": round(float(np.percentile(values, 5)), 4), "below": int((values < threshold).sum()),
            "parts_mean": parts}


@dataclass
class Comparison:
    pages: list[PageScore]                  # worst first
    pdfs: dict[str, dict[str, Any]]         # per PDF summary, worst mean first
    run: dict[str, Any]
    only_a: list[str]
    only_b: list[str]
    threshold: float
    failed_both: list[tuple[str, int]]      # pages failed in both runs: nothing to compare, not scored


def compare_runs(a: list[PdfOutput], b: list[PdfOutput], threshold: float = 0.9) -> Comparison:
    by_a, by_b = {o.key: o for o in a}, {o.key: o for o in b}
    scores: list[PageScore] = []
    per_pdf: dict[str, dict[str, Any]] = {}
    failed_both = []
    for key in sorted(by_a.keys() & by_b.keys()):
        pa, pb = by_a[key].pages, by_b[key].pages
        both = [n for n in pa.keys() & pb.keys() if pa[n].status in FAILED and pb[n].status in FAILED]
        failed_both += [(key, n) for n in sorted(both)]
        mine = [score_page(key, n, pa.get(n), pb.get(n)) for n in sorted(pa.keys() | pb.keys()) if n not in both]
        per_pdf[key] = summarize(mine, threshold)
        scores.extend(mine)
    scores.sort(key=lambda s: (s.score, s.pdf, s.page))
    pdfs = dict(sorted(per_pdf.items(), key=lambda kv: (kv[1]["mean"] if kv[1]["mean"] is not None else 1.0, kv[0])))
    return Comparison(scores, pdfs, summarize(scores, threshold), sorted(by_a.keys() - by_b.keys()),
                      sorted(by_b.keys() - by_a.keys()), threshold, failed_both)


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def summary_lines(c: Comparison, worst: int) -> list[str]:
    r = c.run
    lines = [f"{r['pages']} pages in {len(c.pdfs)} PDFs: similarity mean {_fmt(r['mean'])}, 5th percentile "
             f"{_fmt(r['p5'])}, {r['below']} pages below {c.threshold}"]
    if r["pages"]:
        lines.append("by part (mean): " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["parts_mean"].items()))
    if c.failed_both:
        lines.append(f"failed in both runs, not scored ({len(c.failed_both)}): "
                     + ", ".join(f"{k} page {n}" for k, n in c.failed_both[:10]) + (" ..." if len(c.failed_both) > 10 else ""))
    for side, keys in (("A", c.only_a), ("B", c.only_b)):
        if keys:
            lines.append(f"only in {side} ({len(keys)}): " + ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""))
    if c.pdfs:
        lines.append("per PDF, worst first (mean, 5th percentile, pages below):")
        lines += [f"  {_fmt(s['mean'])}  {_fmt(s['p5'])}  {s['below']:4d}  {k}" for k, s in c.pdfs.items()]
    if c.pages:
        lines.append("worst pages (all, text, tables, headings):")
        for s in c.pages[:worst]:
            missing = (" (missing in A)" if s.status_a is None else " (missing in B)" if s.status_b is None else
                       f" ({s.status_a} in A)" if s.status_a in FAILED else f" ({s.status_b} in B)" if s.status_b in FAILED else "")
            lines.append(f"  {'  '.join(_fmt(s.scores[p]) for p in PARTS)}  {s.pdf} page {s.page}{missing}")
    return lines


def to_json(c: Comparison) -> dict[str, Any]:
    return {"threshold": c.threshold, "run": c.run, "pdfs": c.pdfs, "only_a": c.only_a, "only_b": c.only_b,
            "failed_both": [{"pdf": k, "page": n} for k, n in c.failed_both],
            "pages": [{"pdf": s.pdf, "page": s.page, "scores": s.scores, "status_a": s.status_a,
                       "status_b": s.status_b} for s in c.pages]}


# --- HTML ---------------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"<[^<>]{0,80}>\s*|[^\s<]+\s*|\s+|<")     # words and tags (table cells diff apart)


def diff_html(a: str, b: str) -> tuple[str, str]:
    """Both texts as HTML, words only in A struck out in A's, words only in B marked in B's."""
    ta, tb = _TOKEN_RE.findall(a), _TOKEN_RE.findall(b)
    ops = Levenshtein.opcodes([t.strip() for t in ta], [t.strip() for t in tb])
    out_a, out_b = [], []
    for op in ops:
        sa, sb = html.escape("".join(ta[op.src_start:op.src_end])), html.escape("".join(tb[op.dest_start:op.dest_end]))
        if op.tag == "equal":
            out_a.append(sa)
            out_b.append(sb)
        else:
            out_a.append(f"<del>{sa}</del>" if sa else "")
            out_b.append(f"<ins>{sb}</ins>" if sb else "")
    return "".join(out_a), "".join(out_b)


def _page_text(out: PdfOutput | None, page: int) -> str:
    p = out.pages.get(page) if out else None
    return "(page missing in this run)" if p is None else strip_grounding(p.text).strip()


def html_report(c: Comparison, a: dict[str, PdfOutput], b: dict[str, PdfOutput], names: tuple[str, str],
                worst: int, dpi: int) -> str:
    r = c.run
    body = [f"<header><h1>ocr-compare: {html.escape(names[0])} against {html.escape(names[1])}</h1>",
            f"<p class=\"meta\">{r['pages']} pages in {len(c.pdfs)} PDFs: mean {_fmt(r['mean'])}, 5th percentile "
            f"{_fmt(r['p5'])}, {r['below']} pages below {c.threshold}. Similarity is 1 - normalized edit "
            f"distance (1.000: the same).</p><p id=\"check\"></p>",
            "<table class=\"scores\"><tr><th>PDF</th><th>pages</th><th>mean</th><th>5th pct</th><th>below</th></tr>"]
    body += [f"<tr><td>{html.escape(k)}</td><td>{s['pages']}</td><td>{_fmt(s['mean'])}</td><td>{_fmt(s['p5'])}</td>"
             f"<td>{s['below']}</td></tr>" for k, s in c.pdfs.items()]
    body.append("</table></header><main>")
    shown = [s for s in c.pages[:worst] if s.score < 1.0]     # identical pages have nothing to show
    if not shown:
        body.append("<p>No page differs.</p>")
    images: dict[str, PageImages] = {}
    try:
        for s in shown:
            src = (a.get(s.pdf) or b.get(s.pdf))
            if s.pdf not in images:
                images[s.pdf] = PageImages(src.source if src else None, dpi)
            image = images[s.pdf].get(s.page)
            figure = (f'<div class="stage"><img class="scan" alt="page {s.page}" src="{data_uri(image)}"></div>'
                      if image else f'<div class="noimage">no image: {html.escape(images[s.pdf].error or "page not in the PDF")}</div>')
            da, db = diff_html(_page_text(a.get(s.pdf), s.page), _page_text(b.get(s.pdf), s.page))
            parts = ", ".join(f"{p} {_fmt(s.scores[p])}" for p in PARTS[1:])
            body.append(f'<article class="page" id="{html.escape(s.pdf)}-p{s.page}"><h2>{html.escape(s.pdf)} page {s.page}: '
                        f'{_fmt(s.scores["all"])} <span class="meta">({parts})</span></h2><div class="cols three">'
                        f'<figure>{figure}</figure><div><h3>A: {html.escape(names[0])}</h3><pre class="diff">{da}</pre></div>'
                        f'<div><h3>B: {html.escape(names[1])}</h3><pre class="diff">{db}</pre></div></div></article>')
    finally:
        for im in images.values():
            im.close()
    body.append("</main>")
    return document(f"ocr-compare {names[0]} {names[1]}", "\n".join(body))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ocr-compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_a", type=Path, help="output folder of the first run")
    p.add_argument("out_b", type=Path, help="output folder of the second run (same PDFs)")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report of the worst pages here")
    p.add_argument("--json", type=Path, help="write every page's scores as JSON here")
    p.add_argument("--threshold", type=float, default=0.9, help="pages below this similarity are counted")
    p.add_argument("--worst", type=int, default=20, help="worst pages listed (and shown in the HTML)")
    p.add_argument("--input-dir", type=Path, help="where the source PDFs are (default: the runs' reports say)")
    p.add_argument("--dpi", type=int, default=96, help="resolution of the page images in the HTML")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for folder in (args.out_a, args.out_b):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
    a, b = read_run(args.out_a, args.input_dir), read_run(args.out_b, args.input_dir)
    if not a or not b:
        print(f"error: no Markdown outputs in {args.out_a if not a else args.out_b}", file=sys.stderr)
        return 2
    c = compare_runs(a, b, args.threshold)
    print(printable("\n".join(summary_lines(c, args.worst))))
    if args.json:
        write_atomic(args.json, json_text(to_json(c), indent=1) + "\n")
    if args.html:
        names = (str(args.out_a), str(args.out_b))
        write_atomic(args.html, html_report(c, {o.key: o for o in a}, {o.key: o for o in b}, names,
                                            args.worst, args.dpi))
        print(f"HTML report: {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
