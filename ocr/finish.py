"""Engine output to page result: clean-up, Greek repairs and stubs. Pure functions."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from . import greek, postprocess
from .engines.base import Failure
from .records import EngineOutput, PageResult, PageStatus

BLANK_STUB = "[[Blank page]]"


def failed_stub(page: int, reason: str) -> str:
    return f"[[Page {page} failed: {reason}]]"


def blank_page(page: int) -> PageResult:
    return PageResult(page=page, status=PageStatus.BLANK, text=BLANK_STUB)


def failed_page(page: int, reason: str, tokens: int = 0, finish_reason: str | None = None, *,
                failure: Failure | None = None) -> PageResult:
    """A failure stub: `reason` is its message, `failure` the kind (the runner always names it)."""
    return PageResult(page=page, status=PageStatus.FAILED, text=failed_stub(page, reason), tokens=tokens,
                      finish_reason=finish_reason, error=reason, failure=failure)


def finish_page(out: EngineOutput, *, mode: str, special_tokens: Sequence[str] = (),
                greek_repair: str = "safe") -> PageResult:
    text, counters = postprocess.process_page(out.text, mode=mode, special_tokens=special_tokens)
    counts = Counter(counters)
    if greek_repair == "safe":
        text, repaired = greek.repair(text)
        counts.update(repaired)
    if out.finish_reason == "length":
        counts["hit_max_tokens"] += 1
    return PageResult(page=out.key.page, status=PageStatus.OK, text=text.strip(), tokens=out.tokens,
                      finish_reason=out.finish_reason, counters=dict(counts), stats=greek.page_stats(text))


def assemble(results: Sequence[PageResult], selection: str = "") -> str:
    """The PDF's Markdown: pages in order, a '----- Page N -----' line before every page from page 2; first the
    `selection` line (ocr.pages.selection_line) when it holds only some of the PDF's pages."""
    parts = [selection] if selection else []
    for r in sorted(results, key=lambda r: r.page):
        parts.append(r.text if r.page == 1 else f"----- Page {r.page} -----\n\n{r.text}")
    return "\n\n".join(parts).rstrip() + "\n"
