"""Outputs on disk: readable like any file the user's shell writes, and write failures reported in a line."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from conftest import run_cli
from ocr import store
from ocr.store import WriteError, write_atomic
from pdfgen import ENGLISH, make_pdf


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)
    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_get_the_shells_default_mode(tmp_path, umask, mask):
    umask(mask)
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", [ENGLISH])
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    expected = 0o666 & ~mask
    assert mode(out / "a.md") == expected
    assert mode(out / "run_report.json") == expected
    assert mode(out / ".ocr-state" / "manifest.jsonl") == expected


def failing(monkeypatch, err: int):
    """fsync fails as it does on a full disk, a quota or a dying disk (where write() itself got through
    to the page cache)."""
    def fsync(fd):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(store.os, "fsync", fsync)


@pytest.mark.parametrize("err, reason", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EDQUOT, "disk quota exceeded"),
                                         (errno.EIO, "input/output error")])
def test_write_failure_is_one_typed_line_and_keeps_the_old_file(tmp_path, monkeypatch, err, reason):
    md = tmp_path / "a.md"
    md.write_text("old, whole\n", encoding="utf-8")
    failing(monkeypatch, err)
    with pytest.raises(WriteError) as caught:
        write_atomic(md, "new text\n")
    assert caught.value.reason == reason and str(caught.value) == f"cannot write a.md: {reason}"
    assert md.read_text(encoding="utf-8") == "old, whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md"]        # no temp file left


def test_journal_append_failure_is_typed(tmp_path, monkeypatch):
    failing(monkeypatch, errno.ENOSPC)
    with pytest.raises(WriteError, match="no space left on device"):
        store._append_line(tmp_path / "j.jsonl", {"page": 1})


def outputs(out) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.md"))}


def test_full_disk_fails_the_pdf_being_written_and_the_rerun_completes(tmp_path, monkeypatch):
    """The disk fills while b.md is written: b fails with the reason, the report is written, the run
    stops with exit code 1; after freeing space the rerun completes, byte-identical to a run without."""
    import ocr.pipeline as pipeline
    from conftest import load_report, pdf_entry
    src = tmp_path / "in"
    for name in ("a", "b", "c"):
        make_pdf(src / f"{name}.pdf", [f"{name} {ENGLISH}", None])
    assert run_cli(["--input-dir", str(src), "--output-dir", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    original, real_fsync, full = pipeline.write_atomic, os.fsync, []

    def fsync(fd):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def write_atomic(path, text):
        full.extend([1] if path.name == "b.md" else [])
        try:
            original(path, text)
        finally:
            full.clear()           # only b.md did not fit; the report still does

    monkeypatch.setattr(store.os, "fsync", fsync)
    monkeypatch.setattr(pipeline, "write_atomic", write_atomic)
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--batch-pages", "1"]) == 1
    report = load_report(out)
    assert pdf_entry(report, "b.pdf")["status"] == "failed"
    assert pdf_entry(report, "b.pdf")["error"] == "cannot write b.md: no space left on device"
    assert pdf_entry(report, "a.pdf")["status"] == "complete"
    assert pdf_entry(report, "c.pdf")["status"] == "unfinished"
    assert "no space left on device" in report["interrupted"]
    assert sorted(outputs(out)) == ["a.md"] and not list(out.rglob("*.part"))
    monkeypatch.undo()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    assert outputs(out) == outputs(tmp_path / "ref")


def test_temp_files_of_killed_runs_are_swept(tmp_path):
    """A SIGKILL between mkstemp and rename leaves a temp file; the next write into that folder removes
    it, but never one of a live process (another shard writing beside it)."""
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"{store.TMP_PREFIX}{store._HOST}-{dead.pid}-x1.part"
    busy = tmp_path / f"{store.TMP_PREFIX}{store._HOST}-{os.getppid()}-x2.part"
    for path in (left, busy):
        path.write_text("half")
    write_atomic(tmp_path / "run_report.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([busy.name, "run_report.json"])
