"""Input and output folders through fsspec (a local path, or s3://bucket/prefix and any other fsspec URL), so
nodes need no shared file system: PDFs are staged to a local cache, outputs published as a temporary object
then the final one, and a PDF counts as done once its Markdown and its manifest entry exist."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .discover import find_pdfs, md_paths
from .jsonl_out import jsonl_path
from .store import json_text, sha256_of, source_id

STATE = ".ocr-state"
DONE_DIR = f"{STATE}/done"              # one manifest entry per PDF: <rel>.json, the runner's record format


@dataclass(frozen=True)
class SourcePdf:
    """One PDF of the input storage: where it is, where its Markdown goes, and its identity stamps."""
    index: int              # position in the whole corpus, in the runner's order
    rel: str                # posix path relative to --input-dir (the PDF's name in reports and manifests)
    md_rel: str             # Markdown path relative to --output-dir
    size: int
    mtime_ns: int


class Storage:
    """One folder: a local path as it is, or an fsspec URL; `options` go to the file system (e.g. s3fs's
    endpoint_url, key, secret)."""

    def __init__(self, url: str, **options: Any):
        self.url = url
        if "://" in url:
            self.fs, self.root = fsspec.core.url_to_fs(url, **options)
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = LocalFileSystem(), str(Path(url).expanduser().resolve())
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def local_path(self, rel: str) -> Path:
        return Path(self.root, rel)

    def __str__(self) -> str:
        return self.url

    # --- reading ----------------------------------------------------------------------------------
    def list_pdfs(self) -> list[tuple[str, int, int]]:
        """(relative path, size, mtime_ns) of every *.pdf (any case) below, sorted as the runner sorts."""
        if self.local:
            root = Path(self.root)
            out = []
            for path in find_pdfs(root):
                st = path.stat()
                out.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
            return out
        self.fs.invalidate_cache()
        found = self.fs.find(self.root, detail=True)
        prefix = self.root + "/"
        return sorted(((name[len(prefix):], int(info.get("size") or 0), mtime_ns(info))
                       for name, info in found.items()
                       if name.lower().endswith(".pdf") and info.get("type", "file") == "file"),
                      key=lambda item: item[0])

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_text(self, rel: str) -> str:
        return self.fs.cat_file(self.path(rel)).decode("utf-8")

    def stage(self, rel: str, cache: Path, mtime: int) -> Path:
        """A local copy of an input file to read (a local input is read where it is); the copy keeps the
        object's mtime so its identity stamps are the same as the object's."""
        if self.local:
            return self.local_path(rel)
        dest = cache / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".tmp-{uuid.uuid4().hex}.part")
        try:
            self.fs.get_file(self.path(rel), str(part))
            os.utime(part, ns=(mtime, mtime))
            part.replace(dest)
        finally:
            part.unlink(missing_ok=True)
        return dest

    # --- writing ----------------------------------------------------------------------------------
    def write_text(self, rel: str, text: str) -> None:
        """A temporary object (file) beside the final one, then a rename: readers never see half of it."""
        self.write_bytes(rel, text.encode("utf-8"))

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            _write_atomic_bytes(self.local_path(rel), data)
            return
        final = self.path(rel)
        parent, name = final.rsplit("/", 1)
        tmp = f"{parent}/.tmp-{name}.{uuid.uuid4().hex}.part"
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, final)
        except BaseException:
            self.fs.rm_file(tmp)
            raise

    def put_file(self, local: Path, rel: str) -> None:
        self.write_bytes(rel, local.read_bytes())

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def check_writable(self) -> None:
        """Raises OSError (with a reason) when this folder cannot take a file."""
        probe = f"{STATE}/.write-test-{uuid.uuid4().hex}"
        self.write_bytes(probe, b"ok")
        self.remove(probe)


def _write_atomic_bytes(path: Path, data: bytes) -> None:
    """ocr.store.write_atomic for bytes: temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def mtime_ns(info: dict[str, Any]) -> int:
    """An fsspec entry's modification time in ns (local: mtime; S3: LastModified; GCS/Azure: updated...)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, str):
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
        return int(value) if key == "mtime_ns" else int(float(value) * 1e9)
    return 0


# --- the corpus and what of it is done ----------------------------------------------------------------
def plan(inputs: Storage) -> list[SourcePdf]:
    """Every PDF of the input, with the runner's Markdown names (x.pdf beside x.PDF keep their suffix)."""
    listed = inputs.list_pdfs()
    mds = md_paths([Path(rel) for rel, _, _ in listed], Path(""))
    return [SourcePdf(i, rel, md.as_posix(), size, mtime) for i, ((rel, size, mtime), md) in enumerate(zip(listed, mds))]


def done_key(pdf: str) -> str:
    return f"{DONE_DIR}/{pdf}.json"


def load_done(outputs: Storage) -> dict[str, dict[str, Any]]:
    """Manifest entries by PDF: the runner's manifest*.jsonl files (a corpus begun with the plain runner is
    resumed) and the per-PDF entries under .ocr-state/done/; the newest entry of a PDF wins."""
    done: dict[str, dict[str, Any]] = {}
    fs = outputs.fs
    fs.invalidate_cache()
    state = outputs.path(STATE)
    manifests = sorted(p for p in _glob(fs, f"{state}/manifest*.jsonl"))
    entries: list[dict[str, Any]] = []
    for path in manifests:
        entries += _jsonl(fs.cat_file(path).decode("utf-8", errors="replace"))
    objects = [p for p in _find(fs, outputs.path(DONE_DIR)) if p.endswith(".json")]
    for data in (fs.cat(objects, on_error="omit") if objects else {}).values():
        try:
            entries.append(json.loads(data))
        except (ValueError, UnicodeDecodeError):
            continue                  # a torn object cannot exist on S3; on a local disk it is skipped
    for entry in entries:
        pdf = entry.get("pdf") if isinstance(entry, dict) else None
        if pdf and entry.get("time", 0) >= done.get(pdf, {}).get("time", 0):
            done[pdf] = entry
    return done


def _glob(fs: Any, pattern: str) -> Iterable[str]:
    try:
        return fs.glob(pattern)
    except FileNotFoundError:
        return []


def _find(fs: Any, root: str) -> list[str]:
    try:
        return fs.find(root)
    except FileNotFoundError:
        return []


def _jsonl(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue                  # a torn last line (a kill mid-write)
    return out


def is_complete(entry: dict[str, Any] | None, pdf: SourcePdf, fingerprint: dict[str, Any], md_exists: bool,
                sha256: Callable[[], str] | None = None) -> bool:
    """The runner's rule: same settings, the Markdown there, the same source (size and mtime; when only the
    mtime moved, the SHA-256 decides, if `sha256` can compute it; otherwise it counts as not done)."""
    if not entry or entry.get("settings") != fingerprint or not md_exists:
        return False
    source = entry.get("source") or {}
    if source.get("size") != pdf.size:
        return False
    if source.get("mtime_ns") == pdf.mtime_ns:
        return True
    return sha256 is not None and sha256() == source.get("sha256")


def outputs_of(pdf: SourcePdf, formats: tuple[str, ...] = ("md",)) -> list[str]:
    """The files a finished PDF has in the output: its Markdown, and <stem>.jsonl with --format jsonl."""
    return [pdf.md_rel] + ([jsonl_path(Path(pdf.md_rel)).as_posix()] if "jsonl" in formats else [])


def todo(pdfs: list[SourcePdf], done: dict[str, dict[str, Any]], fingerprint: dict[str, Any],
         exists: Callable[[str], bool], formats: tuple[str, ...] = ("md",)) -> list[SourcePdf]:
    """The PDFs still to OCR; an entry whose stamps moved is left to the worker, which can hash its copy."""
    return [p for p in pdfs if not (p.rel in done and is_complete(
        done[p.rel], p, fingerprint, all(exists(rel) for rel in outputs_of(p, formats))))]


def manifest_entry(pdf: SourcePdf, local_pdf: Path, pages: int, fingerprint: dict[str, Any],
                   time_s: float) -> dict[str, Any]:
    """ocr.store's record: name, Markdown file name, pages, source stamps, settings, time."""
    source = source_id(local_pdf).to_json()
    source["mtime_ns"] = pdf.mtime_ns          # the object's own stamp (a local copy may be off by rounding)
    return {"pdf": pdf.rel, "md": PurePosixPath(pdf.md_rel).name, "pages": pages, "source": source,
            "settings": fingerprint, "time": time_s}


def publish(outputs: Storage, pdf: SourcePdf, md_local: Path, entry: dict[str, Any] | None) -> None:
    """Old entry out, assets (and <stem>.jsonl), then the Markdown, then the new entry (None for a partial PDF, which the
    next run redoes): an entry always describes the Markdown beside it."""
    outputs.remove(done_key(pdf.rel))
    assets = md_local.with_name(md_local.stem + "_assets")
    if assets.is_dir():
        base = str(PurePosixPath(pdf.md_rel).with_name(assets.name))
        for f in sorted(p for p in assets.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")):
            outputs.put_file(f, f"{base}/{f.relative_to(assets).as_posix()}")
    if jsonl_path(md_local).is_file():
        outputs.put_file(jsonl_path(md_local), jsonl_path(Path(pdf.md_rel)).as_posix())
    outputs.put_file(md_local, pdf.md_rel)
    if entry is not None:
        outputs.write_text(done_key(pdf.rel), json_text(entry) + "\n")


def local_sha256(path: Path) -> Callable[[], str]:
    return lambda: sha256_of(path)
