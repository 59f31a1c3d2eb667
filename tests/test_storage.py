"""Input and output through fsspec: a local folder, and an S3-compatible server on localhost (moto) through
the real s3fs client; the resume rule over manifest entries."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
from pathlib import Path

import pytest

s3fs = pytest.importorskip("s3fs")          # the `cluster` extra (brings fsspec)

from conftest import run_cli  # noqa: E402
from ocr import storage  # noqa: E402
from ocr.config import Config  # noqa: E402
from ocr.storage import SourcePdf, Storage  # noqa: E402
from pdfgen import make_pdf, numbered_pages  # noqa: E402
BUCKET = "corpus"


@contextlib.contextmanager
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port; loopback traffic only); yields fsspec storage options."""
    from moto.server import ThreadedMotoServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
        # moto keeps its state in-process across servers: another module's objects under the same
        # prefix turned one PDF into two in CI. Each server starts empty.
        urllib.request.urlopen(urllib.request.Request(f"{options['endpoint_url']}/moto-api/reset", method="POST"))
        s3fs.S3FileSystem(skip_instance_cache=True, **options).makedirs(BUCKET, exist_ok=True)
        yield options
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3():
    with s3_server() as options:
        yield options


def upload(local: Path, options: dict, prefix: str) -> str:
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{BUCKET}/{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def pdf(rel: str = "a.pdf", size: int = 100, mtime: int = 5) -> SourcePdf:
    return SourcePdf(0, rel, rel[:-4] + ".md", size, mtime)


FP = {"model": "m", "mode": "clean"}
ENTRY = {"pdf": "a.pdf", "md": "a.md", "source": {"size": 100, "mtime_ns": 5, "sha256": "abc"}, "settings": FP}


@pytest.mark.parametrize("entry, md, sha, expected", [
    (ENTRY, True, None, True),
    (None, True, None, False),
    (ENTRY, False, None, False),                                        # the Markdown is gone
    ({**ENTRY, "settings": {**FP, "mode": "grounded"}}, True, None, False),
    ({**ENTRY, "source": {**ENTRY["source"], "size": 99}}, True, None, False),
    ({**ENTRY, "source": {**ENTRY["source"], "mtime_ns": 6}}, True, None, False),   # can't hash: redo
    ({**ENTRY, "source": {**ENTRY["source"], "mtime_ns": 6}}, True, "abc", True),   # a copy: same content
    ({**ENTRY, "source": {**ENTRY["source"], "mtime_ns": 6}}, True, "xyz", False),
])
def test_resume_rule(entry, md, sha, expected):
    assert storage.is_complete(entry, pdf(), FP, md, None if sha is None else (lambda: sha)) is expected


def test_plan_keeps_the_runners_order_and_markdown_names(tmp_path):
    for rel in ("b/x.pdf", "b/x.PDF", "a.pdf", "notes.txt", "c/Deep.Pdf"):
        make_pdf(tmp_path / rel, [None]) if rel.lower().endswith(".pdf") else (tmp_path / rel).write_text("x")
    pdfs = storage.plan(Storage(str(tmp_path)))
    assert [(p.index, p.rel, p.md_rel) for p in pdfs] == [
        (0, "a.pdf", "a.md"), (1, "b/x.PDF", "b/x.PDF.md"), (2, "b/x.pdf", "b/x.pdf.md"), (3, "c/Deep.Pdf", "c/Deep.md")]
    assert pdfs[0].size == (tmp_path / "a.pdf").stat().st_size
    assert pdfs[0].mtime_ns == (tmp_path / "a.pdf").stat().st_mtime_ns


def test_a_corpus_begun_by_the_plain_runner_is_resumed(tmp_path):
    """The runner's manifest*.jsonl counts as done too: same record, same rule."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "one.pdf", numbered_pages(1))
    make_pdf(src / "two.pdf", numbered_pages(1))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    make_pdf(src / "three.pdf", numbered_pages(1))
    outputs = Storage(str(out))
    done = storage.load_done(outputs)
    fp = Config(input_dir=src, output_dir=out).fingerprint()
    todo = storage.todo(storage.plan(Storage(str(src))), done, fp, outputs.exists)
    assert [p.rel for p in todo] == ["three.pdf"]
    assert storage.todo(storage.plan(Storage(str(src))), done, {**fp, "dpi": 300}, outputs.exists)[0].rel == "one.pdf"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_publish_then_resume_through_storage(tmp_path, where, request):
    """Stage a PDF, publish its Markdown, assets and manifest entry, find it done; nothing temporary left."""
    src = tmp_path / "in"
    make_pdf(src / "sub" / "doc.pdf", numbered_pages(2))
    if where == "s3":
        options = request.getfixturevalue("s3")
        in_url, out_url = upload(src, options, "in"), f"s3://{BUCKET}/out-{tmp_path.name}"
    else:
        options, in_url, out_url = {}, str(src), str(tmp_path / "out")
    inputs, outputs = Storage(in_url, **options), Storage(out_url, **options)
    [job] = storage.plan(inputs)
    assert (job.rel, job.md_rel, job.size) == ("sub/doc.pdf", "sub/doc.md", (src / "sub" / "doc.pdf").stat().st_size)
    local = inputs.stage(job.rel, tmp_path / "cache", job.mtime_ns)
    assert local.read_bytes() == (src / "sub" / "doc.pdf").read_bytes()
    assert local.stat().st_mtime_ns == job.mtime_ns

    md = tmp_path / "work" / "sub" / "doc.md"
    (md.parent / "doc_assets").mkdir(parents=True)
    md.write_text("# Ελληνικά\n", encoding="utf-8")
    (md.parent / "doc_assets" / "page-0001.png").write_bytes(b"\x89PNG")
    md.with_suffix(".jsonl").write_text('{"page": 1}\n', encoding="utf-8")        # --format md,jsonl
    assert storage.todo([job], storage.load_done(outputs), FP, outputs.exists) == [job]
    storage.publish(outputs, job, md, storage.manifest_entry(job, local, 2, FP, 1.0))

    assert outputs.read_text("sub/doc.md") == "# Ελληνικά\n"
    assert outputs.fs.cat_file(outputs.path("sub/doc_assets/page-0001.png")) == b"\x89PNG"
    entry = json.loads(outputs.read_text(".ocr-state/done/sub/doc.pdf.json"))
    assert entry["pdf"] == "sub/doc.pdf" and entry["md"] == "doc.md" and entry["pages"] == 2
    assert entry["source"]["mtime_ns"] == job.mtime_ns and len(entry["source"]["sha256"]) == 64
    outputs.fs.invalidate_cache()
    assert not [p for p in outputs.fs.find(outputs.root) if ".tmp-" in p]
    assert storage.todo([job], storage.load_done(outputs), FP, outputs.exists) == []
    assert storage.todo([job], storage.load_done(outputs), {**FP, "dpi": 1}, outputs.exists) == [job]
    assert outputs.read_text("sub/doc.jsonl") == '{"page": 1}\n'
    assert storage.todo([job], storage.load_done(outputs), FP, outputs.exists, ("md", "jsonl")) == []
    outputs.remove("sub/doc.jsonl")                   # asked for jsonl, it is gone: redo
    assert storage.todo([job], storage.load_done(outputs), FP, outputs.exists, ("md", "jsonl")) == [job]
    assert storage.todo([job], storage.load_done(outputs), FP, outputs.exists) == []

    storage.publish(outputs, job, md, None)           # partial this time: the old entry must not stand
    assert storage.todo([job], storage.load_done(outputs), FP, outputs.exists) == [job]


def test_unwritable_output_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):
        Storage(str(tmp_path / "file")).check_writable()
