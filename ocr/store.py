"""What is already done: per-PDF page journals, the resume manifest, and atomic Markdown writes."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .records import PageResult, PdfJob

log = logging.getLogger(__name__)


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


class WriteError(Exception):
    """An output or state file could not be written (disk full, quota, I/O error); `reason` is one line,
    such as "no space left on device"."""

    def __init__(self, path: Path, exc: OSError):
        self.path = Path(path)
        self.reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
        super().__init__(f"cannot write {self.path.name}: {self.reason}")


def _umask() -> int:
    """The process umask, read without changing it where /proc tells it (os.umask can only set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written file.
    The file gets 0666 & ~umask, as the user's shell would give it (mkstemp's 0600 hides it from a web
    server or colleagues). Raises WriteError; the file that was there stays as it was."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{_HOST}-{os.getpid()}-", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise WriteError(path, exc) from exc
    except BaseException:
        _discard(tmp)
        raise


TMP_PREFIX = ".tmp-"
_HOST = socket.gethostname().replace("/", "_")
_swept: set[Path] = set()


def _sweep(folder: Path) -> None:
    """Remove the temporary files a killed run on this host left in folder (SIGKILL between mkstemp and
    rename), once per folder and process. Files of live processes, or of other hosts sharing the output
    disk, are left alone: their pid is in the name."""
    if folder in _swept:
        return
    _swept.add(folder)
    for tmp in folder.glob(f"{TMP_PREFIX}{_HOST}-*.part"):
        pid = tmp.name[len(TMP_PREFIX) + len(_HOST) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _discard(str(tmp))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:           # another user's process
        return True
    return True


def _discard(tmp: str | None) -> None:
    if tmp:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass


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
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)    # the umask applies
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))      # a short write: the disk filled
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise WriteError(path, exc) from exc


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
        moved only the mtime keeps them) and settings; starts a fresh journal otherwise. A journal that
        cannot be read is moved aside with a warning: it must not stop every rerun the same way."""
        path = self.journal_path(job)
        header = {"source": source.to_json(), "settings": self.fingerprint}
        try:
            pages = self._resumed(path, header)
        except Exception as exc:   # foreign or corrupt lines, bytes that are not UTF-8, no permission
            pages = None
            self._move_aside(job, path, exc)
        if pages is not None:
            return pages
        write_atomic(path, json_text({"header": header}) + "\n")
        return {}

    @staticmethod
    def _resumed(path: Path, header: dict[str, Any]) -> dict[int, PageResult] | None:
        lines = list(_read_jsonl(path))
        if not (lines and _same_run(lines[0].get("header"), header)):
            return None
        pages = {}
        for line in lines[1:]:
            if "page" in line:
                result = PageResult.from_json(line)
                if result.status.value != "failed":   # failed pages are tried again
                    pages[result.page] = result
        return pages

    def _move_aside(self, job: PdfJob, path: Path, exc: Exception) -> None:
        aside = self.journal_dir.parent / "unreadable" / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside)
            where = f"moved aside to {aside}"
        except OSError as move_error:
            where = f"could not be moved aside ({move_error.strerror or move_error})"
        log.warning("%s: its journal cannot be read (%s: %s); %s. The PDF starts afresh.", job.name,
                    type(exc).__name__, exc, where)

    def journal_page(self, job: PdfJob, result: PageResult) -> None:
        _append_line(self.journal_path(job), result.to_json())

    def drop_journal(self, job: PdfJob) -> None:
        self.journal_path(job).unlink(missing_ok=True)
