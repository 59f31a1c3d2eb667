"""Read back what a run wrote: per PDF its pages (from <stem>.jsonl when present, else the Markdown split on
its page lines, with counters from the run report), the source PDF and its hash. Used by ocr-compare,
ocr-review and ocr-dolma."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .jsonl_out import jsonl_path, read_pages_jsonl
from .pages import split_markdown

_FAILED_RE = re.compile(r"\A\[\[Page \d+ failed: (.*)\]\]\Z", re.DOTALL)
_SKIP_DIRS = {"logs", ".ocr-state"}


@dataclass(frozen=True)
class Page:
    page: int
    status: str                 # ok / blank / failed / damaged (ocr.jsonl_out.STATUSES)
    text: str                   # the page's Markdown as in <stem>.md
    counters: dict[str, int] = field(default_factory=dict)
    greek: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PdfOutput:
    key: str                    # the Markdown's path relative to the output folder: pairs two runs
    md_path: Path
    pdf_name: str | None        # the PDF's path relative to --input-dir, where known
    source: Path | None         # the PDF itself, where found
    sha256: str | None
    mode: str                   # clean / grounded
    pages: dict[int, Page]
    page_count: int | None      # pages in the PDF, where known
    from_jsonl: bool
    model: str | None = None



def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:
            continue


@dataclass
class _RunInfo:
    input_dir: Path | None = None
    mode: str | None = None
    model: str | None = None
    by_output: dict[str, dict[str, Any]] = field(default_factory=dict)     # md rel path -> report entry
    sha256: dict[str, str] = field(default_factory=dict)                   # pdf name -> sha256 (manifest)


def _run_info(out: Path) -> _RunInfo:
    info = _RunInfo()
    reports = sorted(out.glob("run_report*.json"), key=lambda p: p.stat().st_mtime)
    for path in reports:                                  # the newest report's settings win
        report = _load_json(path)
        if not isinstance(report, dict):
            continue
        settings = report.get("settings") or {}
        if settings.get("input_dir"):
            info.input_dir = Path(settings["input_dir"])
        info.mode = settings.get("mode") or info.mode
        info.model = settings.get("model") or info.model
        for entry in report.get("pdfs") or []:
            if entry.get("output") and entry.get("page_details"):
                info.by_output[entry["output"]] = entry
            elif entry.get("output"):
                info.by_output.setdefault(entry["output"], entry)
    for path in sorted((out / ".ocr-state").glob("manifest*.jsonl")):
        for entry in _jsonl(path):
            sha = (entry.get("source") or {}).get("sha256")
            if entry.get("pdf") and sha:
                info.sha256[entry["pdf"]] = sha
    return info


def markdown_files(out: Path) -> list[Path]:
    """Every PDF's Markdown under the output folder (logs, state and asset folders left out)."""
    found = []
    for path in sorted(out.rglob("*.md")):
        rel = path.relative_to(out)
        if rel.parts[0] in _SKIP_DIRS or any(part.endswith("_assets") for part in rel.parts[:-1]):
            continue
        found.append(path)
    return found


def _status(text: str) -> tuple[str, str | None]:
    if text == "[[Blank page]]":
        return "blank", None
    m = _FAILED_RE.match(text)
    if m:
        # the page itself could not be read from the file (ocr.render's messages for Failure.RENDER)
        return ("damaged" if m.group(1).startswith(("render failed", "damaged PDF")) else "failed"), m.group(1)
    return "ok", None


def _guess_pdf(rel_md: Path, input_dir: Path | None) -> tuple[str | None, Path | None]:
    """Where the PDF of a Markdown without a report entry is: <stem>.pdf in any case, or x.pdf for x.pdf.md."""
    if input_dir is None:
        return None, None
    stem = rel_md.with_suffix("")
    candidates = [stem] if stem.suffix.lower() == ".pdf" else []
    candidates += [stem.with_name(stem.name + s) for s in (".pdf", ".PDF", ".Pdf")]
    for rel in candidates:
        if (input_dir / rel).is_file():
            return rel.as_posix(), input_dir / rel
    return None, None


def _from_jsonl(out: Path, md: Path, input_dir: Path | None) -> PdfOutput:
    header, records = read_pages_jsonl(jsonl_path(md))
    pages = {r["page"]: Page(r["page"], r["status"], r["text"], r.get("counters") or {}, r.get("greek") or {},
                             r.get("tokens"), r.get("finish_reason"), r.get("error")) for r in records}
    name = header["source"]["name"]
    source = input_dir / name if input_dir and (input_dir / name).is_file() else None
    return PdfOutput(md.relative_to(out).as_posix(), md, name, source, header["source"]["sha256"],
                     header["mode"], pages, header["page_count"], True, header["model"])


def _from_markdown(out: Path, md: Path, info: _RunInfo, input_dir: Path | None) -> PdfOutput:
    key = md.relative_to(out).as_posix()
    split = split_markdown(md.read_text(encoding="utf-8"))
    entry = info.by_output.get(key) or {}
    details = {d["page"]: d for d in entry.get("page_details") or []}
    pages = {}
    for number, text in split.pages.items():
        status, error = _status(text)
        d = details.get(number, {})
        pages[number] = Page(number, d.get("status", status) if status == "ok" else status, text,
                             d.get("counters") or {}, d.get("greek") or {}, d.get("tokens"),
                             d.get("finish_reason"), error)
    name = entry.get("pdf")
    if name and input_dir and (input_dir / name).is_file():
        source = input_dir / name
    else:
        name, source = _guess_pdf(Path(key), input_dir) if not name else (name, None)
    grounded = info.mode == "grounded" or any("<|det|>" in p.text for p in pages.values())
    return PdfOutput(key, md, name, source, info.sha256.get(name or ""), "grounded" if grounded else "clean",
                     pages, split.selected_of, False, info.model)


def read_run(out: Path, input_dir: Path | None = None) -> list[PdfOutput]:
    """Every PDF output under `out`, sorted by Markdown path. `input_dir` overrides the run report's."""
    info = _run_info(out)
    input_dir = input_dir or info.input_dir
    outputs = []
    for md in markdown_files(out):
        if jsonl_path(md).is_file():
            try:
                outputs.append(_from_jsonl(out, md, input_dir))
                continue
            except (ValueError, KeyError, OSError):
                pass                  # a damaged or foreign .jsonl: the Markdown still holds the pages
        outputs.append(_from_markdown(out, md, info, input_dir))
    return outputs
