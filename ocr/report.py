"""The JSON run report: per PDF its pages, blanks, tokens, time, status and error; totals and rates."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import large_mode, roi, runaway
from .records import PageResult, PageStatus
from .store import json_text, write_atomic


class PdfStatus(str, Enum):
    COMPLETE = "complete"     # every page OCRed (or blank)
    PARTIAL = "partial"       # written, but some pages carry a failure stub; redone next run
    FAILED = "failed"         # nothing could be OCRed (bad file)
    SKIPPED = "skipped"       # already complete from an earlier run
    UNFINISHED = "unfinished" # the run stopped before this PDF was done; its journal keeps the pages
    DAMAGED = "damaged"       # written, but the file lost content on some pages (a truncated download)


@dataclass
class PdfEntry:
    pdf: str
    status: PdfStatus = PdfStatus.UNFINISHED
    pages: int = 0
    blank_pages: int = 0
    failed_pages: list[int] = field(default_factory=list)
    resumed_pages: int = 0    # taken from the journal of an earlier, interrupted run
    read_pages: int = 0       # read by the model in this run (not blank, not failed, not resumed)
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    output: str | None = None
    counters: Counter = field(default_factory=Counter)
    page_details: list[dict[str, Any]] = field(default_factory=list)
    repaired: str | None = None   # MuPDF had to repair the file: its first warning
    # this entry's JSON text and Greek counts, made once and dropped at any change (see __setattr__)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_cache" and "_cache" in self.__dict__:
            self._cache.clear()
        object.__setattr__(self, name, value)

    def changed(self) -> None:
        """Its lists or counters were changed in place."""
        self._cache.clear()

    def text(self) -> str:
        """One line of JSON: the report's rewrites (every 10 s) encode only the entries that changed; a
        50,000-page report took 2.1 s a write with all of them indented, on the control loop's thread."""
        if "text" not in self._cache:
            self._cache["text"] = json_text(self.to_json())
        return self._cache["text"]

    def greek_counts(self) -> Counter:
        if "greek" not in self._cache:
            self._cache["greek"] = greek_counts(d["greek"] for d in self.page_details)
        return self._cache["greek"]

    def to_json(self) -> dict[str, Any]:
        return {"pdf": self.pdf, "status": self.status.value, "pages": self.pages,
                "blank_pages": self.blank_pages, "failed_pages": self.failed_pages,
                "resumed_pages": self.resumed_pages, "read_pages": self.read_pages, "tokens": self.tokens,
                "seconds": round(self.seconds, 2), "error": self.error, "output": self.output,
                "repaired": self.repaired, "counters": dict(sorted(self.counters.items())),
                "page_details": sorted(self.page_details, key=lambda d: d["page"])}


class RunReport:
    def __init__(self, path, settings: dict[str, Any]):
        self.path = path
        self.settings = settings
        self.started = time.time()
        self.pdfs: dict[str, PdfEntry] = {}
        self.engine: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []   # engine restarts, signals: what a user needs to know
        self.interrupted: str | None = None
        self.engine_ready: float | None = None   # when the first engine could take pages

    def entry(self, pdf: str) -> PdfEntry:
        return self.pdfs.setdefault(pdf, PdfEntry(pdf))

    def pdf_opened(self, pdf: str, pages: int, resumed: list[PageResult]) -> None:
        """A PDF about to be OCRed: its page count, and the pages an earlier run's journal already holds."""
        e = self.entry(pdf)
        e.pages, e.resumed_pages = pages, len(resumed)
        for result in resumed:
            self.add_page(pdf, result, resumed=True)

    def pdf_settled(self, pdf: str, status: PdfStatus, error: str | None = None, output: str | None = None,
                    seconds: float = 0.0) -> None:
        """A PDF's outcome: written (complete or partial), failed, or skipped as complete."""
        e = self.entry(pdf)
        e.status, e.error, e.output, e.seconds = status, error, output, seconds

    def add_page(self, pdf: str, result: PageResult, resumed: bool = False) -> None:
        e = self.entry(pdf)
        e.tokens += result.tokens
        e.read_pages += result.status == PageStatus.OK and not resumed
        e.blank_pages += result.status == PageStatus.BLANK
        if result.status == PageStatus.FAILED:
            e.failed_pages.append(result.page)
        e.counters.update(result.counters)
        e.page_details.append({"page": result.page, "status": result.status.value, "tokens": result.tokens,
                               "finish_reason": result.finish_reason, "counters": result.counters,
                               "greek": result.stats,
                               **({"blank_reason": result.blank_reason} if result.blank_reason else {}),
                               **({"damage": result.damage} if result.damage else {})})
        e.changed()

    def event(self, kind: str, **details: Any) -> None:
        self.events.append({"event": kind, "time": round(time.time() - self.started, 1), **details})

    def totals(self) -> dict[str, Any]:
        entries = self.pdfs.values()
        by_status = Counter(e.status.value for e in entries)
        done = [e for e in entries if e.status != PdfStatus.SKIPPED]
        pages = sum(e.pages - len(e.failed_pages) for e in done if e.status != PdfStatus.UNFINISHED)
        elapsed = time.time() - self.started
        counters: Counter = Counter()
        for e in entries:
            counters.update(e.counters)
        greek_total: Counter = Counter()
        for e in entries:
            greek_total.update(e.greek_counts())       # update, not +: a count of 0 stays in the totals
        greek = greek_summary(greek_total)
        since_ready = time.time() - self.engine_ready if self.engine_ready else 0.0
        read = sum(e.read_pages for e in entries)
        return {"pdfs": len(self.pdfs), **{f"pdfs_{k}": v for k, v in sorted(by_status.items())},
                "pages": pages, "blank_pages": sum(e.blank_pages for e in done),
                "failed_pages": sum(len(e.failed_pages) for e in done),
                "tokens": sum(e.tokens for e in done), "seconds": round(elapsed, 1),
                "pages_per_s": round(pages / elapsed, 3) if elapsed else 0.0,
                "tokens_per_s": round(sum(e.tokens for e in done) / elapsed, 1) if elapsed else 0.0,
                # engine start-up excluded; blank and resumed pages count here, as the corpus's pages
                "pages_per_s_after_load": round(pages / since_ready, 3) if since_ready else 0.0,
                # what to compare with the raw engine: the pages it read, over the time it was up (a corpus
                # with every 8th page blank made the figure above 14% higher, NOTES.md session 15); unlike
                # `pages`, this counts the pages of PDFs an interrupted run left unfinished: they were read
                "read_pages": read,
                "read_pages_per_s_after_load": round(read / since_ready, 3) if since_ready else 0.0,
                "counters": dict(sorted(counters.items())), "passes": passes(counters), "greek": greek}

    def problems(self) -> list[PdfEntry]:
        bad = (PdfStatus.FAILED, PdfStatus.PARTIAL, PdfStatus.UNFINISHED, PdfStatus.DAMAGED)
        return [e for e in self.pdfs.values() if e.status in bad]

    def clock(self) -> dict[str, float | None]:
        """Wall-clock times (Unix seconds): a merge of shard reports finds from them when workers ran side by
        side, and a reader can match them with the logs."""
        return {"started": round(self.started, 2),
                "engine_ready": round(self.engine_ready, 2) if self.engine_ready else None,
                "written": round(time.time(), 2)}

    def _head(self) -> dict[str, Any]:
        return {"settings": self.settings, "engine": self.engine, "interrupted": self.interrupted,
                "clock": self.clock(), "totals": self.totals(), "events": self.events}

    def to_json(self) -> dict[str, Any]:
        return {**self._head(), "pdfs": [e.to_json() for e in self.pdfs.values()]}

    def text(self) -> str:
        """The report's JSON (to_json() once parsed), as report_text writes it."""
        return report_text(self._head(), [e.text() for e in self.pdfs.values()])

    def write(self) -> None:
        write_atomic(self.path, self.text())

    def summary_lines(self) -> list[str]:
        t = self.totals()
        lines = [f"{t['pdfs']} PDFs: " + ", ".join(f"{v} {k[5:]}" for k, v in t.items()
                                                    if k.startswith("pdfs_")),
                 f"{t['pages']} pages ({t['blank_pages']} blank, {t['failed_pages']} failed) in "
                 f"{t['seconds']} s: {t['pages_per_s']} pages/s, {t['tokens_per_s']} tokens/s"
                 + up_rates(t, "the engine was")]
        lines += counter_lines(t["counters"])
        for e in self.problems():
            why = e.error or (f"pages {e.failed_pages} failed" if e.failed_pages else "not finished")
            lines.append(f"  {e.status.value}: {e.pdf}: {why}")
        return lines


def report_text(head: dict[str, Any], pdfs: list[str]) -> str:
    """A run report's file: `head` indented, then "pdfs", each PDF's JSON (`pdfs`, one line each) on a line of
    its own. The same for a worker's, a merged and a Ray run's report: `grep name.pdf` finds a PDF's entry."""
    text = json_text(head, indent=1)          # "{\n "settings": ...\n}"
    listed = "[\n  " + ",\n  ".join(pdfs) + "\n ]" if pdfs else "[]"
    return text[:-2] + ',\n "pdfs": ' + listed + "\n}\n"


def merged_text(report: dict[str, Any]) -> str:
    """report_text of a report held as a dict (a merge of shards, a Ray run)."""
    return report_text({k: v for k, v in report.items() if k != "pdfs"}, [json_text(p) for p in report["pdfs"]])


def up_rates(t: dict[str, Any], up: str = "engines were") -> str:
    """", X pages/s (Y read by the model) while {up} up", or what of it the totals have."""
    if not t.get("pages_per_s_after_load"):
        return ""
    read = f" ({t['read_pages_per_s_after_load']} read by the model)" if t.get("read_pages_per_s_after_load") else ""
    return f", {t['pages_per_s_after_load']} pages/s{read} while {up} up"


PASS_COUNTERS = {"runaway": runaway.COUNTERS, "large": large_mode.COUNTERS, "roi": roi.COUNTERS}


def passes(counters: Counter) -> dict[str, dict[str, int]]:
    """The recovery passes' counters (ocr/passes.py) by pass: {"runaway": {"pages": 3, "retried": 3, ...}}."""
    out: dict[str, dict[str, int]] = {}
    for name, keys in PASS_COUNTERS.items():
        counts = {key.split("_", 1)[1]: counters[key] for key in sorted(keys) if counters.get(key)}
        if counts:
            out[name] = counts
    return out


def counter_lines(counters: dict[str, int]) -> list[str]:
    """The summary's clean-up line and one line per recovery pass."""
    in_passes = {k for keys in PASS_COUNTERS.values() for k in keys}
    cleanup = {k: v for k, v in counters.items() if k not in in_passes}
    lines = ["clean-up: " + ", ".join(f"{k}={v}" for k, v in cleanup.items())] if cleanup else []
    for name, counts in passes(Counter(counters)).items():
        lines.append(f"{name} pass: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return lines


def greek_counts(pages) -> Counter:
    """The Greek signals' counts summed over pages (their stats dicts)."""
    total: Counter = Counter()
    for stats in pages:
        total.update({k: v for k, v in stats.items() if isinstance(v, int)})
    return total


def greek_summary(total: Counter) -> dict[str, Any]:
    """Run-level Greek signals: the counts, and letter shares over all letters."""
    letters = sum(total[k] for k in ("greek_letters", "latin_letters", "other_letters"))
    shares = {f"{k}_share": round(total[f"{k}_letters"] / letters, 3) if letters else 0.0
              for k in ("greek", "latin", "other")}
    return {**dict(sorted(total.items())), **shares}

