"""What is already done: per-PDF page journals, the resume manifest, and atomic Markdown writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .records import PageResult, PdfJob


@dataclass(frozen=True)
class SourceId:
    """Identity of a source PDF: size and mtime, with the content hash deciding when those moved."""
    size: int
    mtime_ns: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_source(recorded: dict[str, Any], path: Path) -> bool:
    """Unchanged if size and mtime match; if only the mtime moved (a copy, a touch), the hash decides."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != recorded.get("size"):
        return False
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return sha256_of(path) == recorded.get("sha256")


def source_id(path: Path) -> SourceId:
    st = path.stat()
    return SourceId(st.st_size, st.st_mtime_ns, sha256_of(path))


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_text(obj: Any, indent: int | None = None) -> str:
    """JSON with names as they are (Greek stays readable); a file name that is not valid UTF-8 (an archive
    unzipped from CP1253) carries lone surrogates, which only the escaped form can hold."""
    try:
        text = json.dumps(obj, indent=indent, ensure_ascii=False, default=str)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(obj, indent=indent, ensure_ascii=True, default=str)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Lines of a JSON-lines file; a torn last line (a kill mid-write) is skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return


def _append_line(path: Path, record: dict[str, Any]) -> None:
    # One write() of one line with O_APPEND: workers sharing a file never interleave lines.
    data = (json_text(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_run(old: Any, new: dict[str, Any]) -> bool:
    if not isinstance(old, dict) or old.get("settings") != new["settings"]:
        return False
    before, now = old.get("source") or {}, new["source"]
    return before.get("size") == now["size"] and before.get("sha256") == now["sha256"]


class Store:
    """Journals under <output>/.ocr-state/journal/, manifests under <output>/.ocr-state/."""

    def __init__(self, state_dir: Path, fingerprint: dict[str, Any], manifest_name: str = "manifest.jsonl"):
        self.journal_dir = state_dir / "journal"
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = state_dir / manifest_name
        self.fingerprint = fingerprint
        self._done = self._load_manifests(state_dir)

    @staticmethod
    def _load_manifests(state_dir: Path) -> dict[str, dict[str, Any]]:
        """Every worker's manifest (shards write their own, and a corpus may be run with one worker, then
        with shards); the newest entry for a PDF wins, whichever file holds it."""
        done: dict[str, dict[str, Any]] = {}
        for path in sorted(state_dir.glob("manifest*.jsonl")):
            for entry in _read_jsonl(path):
                pdf = entry.get("pdf")
                if pdf and entry.get("time", 0) >= done.get(pdf, {}).get("time", 0):
                    done[pdf] = entry
        return done

    def is_complete(self, job: PdfJob) -> bool:
        entry = self._done.get(job.name)
        return bool(entry and entry.get("settings") == self.fingerprint and job.md_path.exists()
                    and same_source(entry.get("source", {}), job.path))

    def mark_complete(self, job: PdfJob, source: SourceId, pages: int) -> None:
        entry = {"pdf": job.name, "md": job.md_path.name, "pages": pages, "source": source.to_json(),
                 "settings": self.fingerprint, "time": time.time()}
        _append_line(self.manifest_path, entry)
        self._done[job.name] = entry

    def journal_path(self, job: PdfJob) -> Path:
        return self.journal_dir / (job.rel.as_posix().replace("/", "__") + ".jsonl")

    def open_journal(self, job: PdfJob, source: SourceId) -> dict[int, PageResult]:
        """Finished pages from an earlier run of this same PDF (same size and SHA-256: a copy or a touch that
        moved only the mtime keeps them) and settings; starts a fresh journal otherwise."""
        path = self.journal_path(job)
        header = {"source": source.to_json(), "settings": self.fingerprint}
        lines = list(_read_jsonl(path))
        if lines and _same_run(lines[0].get("header"), header):
            pages = {}
            for line in lines[1:]:
                if "page" in line:
                    result = PageResult.from_json(line)
                    if result.status.value != "failed":   # failed pages are tried again
                        pages[result.page] = result
            return pages
        write_atomic(path, json_text({"header": header}) + "\n")
        return {}

    def journal_page(self, job: PdfJob, result: PageResult) -> None:
        _append_line(self.journal_path(job), result.to_json())

    def drop_journal(self, job: PdfJob) -> None:
        self.journal_path(job).unlink(missing_ok=True)
