"""Page selection (`--pages 1-5,10,20-` with `--max-pages`), the line that states it in the Markdown, and
splitting a PDF's Markdown back into its pages. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PART_RE = re.compile(r"^(\d+)?\s*(-)?\s*(\d+)?$")
PAGE_LINE_RE = re.compile(r"^----- Page (\d+) -----$", re.MULTILINE)
_SELECTION_RE = re.compile(r"\A\[\[Pages ([0-9, -]+) of (\d+) selected\]\]\n")


class PageSpecError(ValueError):
    """A --pages value that cannot be read; the message says what is wrong and shows the form."""


@dataclass(frozen=True)
class PageSpec:
    """Inclusive 1-based ranges; `end` None runs to the last page."""
    ranges: tuple[tuple[int, int | None], ...]

    def pages(self, page_count: int) -> list[int]:
        """Selected pages that exist in a PDF of page_count pages, ascending, each once."""
        chosen: set[int] = set()
        for start, end in self.ranges:
            chosen.update(range(start, min(end or page_count, page_count) + 1))
        return sorted(chosen)


ALL = PageSpec(((1, None),))
_FORM = "use page numbers and ranges counted from 1, e.g. '1-5,10,20-'"


def parse_spec(spec: str | None) -> PageSpec:
    """'1-5,10,20-' -> PageSpec; None or '' selects every page. Raises PageSpecError with the reason."""
    if spec is None or not spec.strip():
        return ALL
    ranges = []
    for raw in spec.split(","):
        part = raw.strip()
        m = _PART_RE.match(part)
        if not part or not m or not (m.group(1) or m.group(3)):
            raise PageSpecError(f"--pages {spec!r}: cannot read {part!r}: {_FORM}")
        first, dash, last = m.groups()
        if first is None:
            raise PageSpecError(f"--pages {spec!r}: {part!r} has no first page: write 1{part}")
        start = int(first)
        end = (int(last) if last else None) if dash else start
        if start < 1:
            raise PageSpecError(f"--pages {spec!r}: pages are counted from 1 (as the page headings), not 0")
        if end is not None and end < start:
            raise PageSpecError(f"--pages {spec!r}: {part!r} ends before it starts")
        ranges.append((start, end))
    return PageSpec(tuple(ranges))


def canonical(spec: PageSpec) -> str:
    """One spelling per selection: ranges sorted and merged ('3-5,1-4' -> '1-5'; '9-' stays open)."""
    merged: list[list[int | None]] = []
    for start, end in sorted(spec.ranges, key=lambda r: r[0]):
        if merged and (merged[-1][1] is None or start <= merged[-1][1] + 1):
            if merged[-1][1] is not None:
                merged[-1][1] = None if end is None else max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return ",".join(f"{a}-" if b is None else str(a) if a == b else f"{a}-{b}" for a, b in merged)


def select(spec: PageSpec, page_count: int, max_pages: int | None = None) -> list[int]:
    """The pages to OCR: those of spec that exist, then the first max_pages of them.

    --max-pages caps how many selected pages are OCRed, so `--pages 10- --max-pages 5` reads pages 10-14,
    and --max-pages alone keeps its meaning (the first K pages)."""
    pages = spec.pages(page_count)
    return pages[:max_pages] if max_pages else pages


def compact(pages: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> '1-3, 5, 7-8'."""
    runs: list[list[int]] = []
    for p in sorted(set(pages)):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def selection_line(pages: list[int], page_count: int) -> str:
    """The first line of a PDF's Markdown when it holds only some of its pages; '' when it holds all."""
    if list(pages) == list(range(1, page_count + 1)):
        return ""
    return f"[[Pages {compact(pages)} of {page_count} selected]]"


def expand(compacted: str) -> list[int]:
    """'1-3, 5' -> [1, 2, 3, 5] (the inverse of compact)."""
    out: list[int] = []
    for part in compacted.split(","):
        a, _, b = part.strip().partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


@dataclass(frozen=True)
class SplitMarkdown:
    pages: dict[int, str]            # page number -> that page's Markdown
    selected_of: int | None = None   # the PDF's page count when the Markdown states a selection


def split_markdown(md: str) -> SplitMarkdown:
    """A PDF's Markdown (ocr.finish.assemble) back into its pages: the text before the first page line is
    page 1, unless a selection line says page 1 was not selected."""
    selected_of, selected = None, None
    m = _SELECTION_RE.match(md)
    if m:
        selected, selected_of = expand(m.group(1)), int(m.group(2))
        md = md[m.end():]
    pages: dict[int, str] = {}
    cuts = list(PAGE_LINE_RE.finditer(md))
    head = md[: cuts[0].start() if cuts else len(md)].strip()
    if selected is None or 1 in selected:
        pages[1] = head
    for cut, nxt in zip(cuts, cuts[1:] + [None]):
        pages[int(cut.group(1))] = md[cut.end(): nxt.start() if nxt else len(md)].strip()
    return SplitMarkdown(pages, selected_of)
