"""Bad input: each kind is reported with a clear reason and the run goes on."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import fixture_pdf, load_report, pdf_entry, run_cli
from doubles import ScriptedEngine
from pdfgen import ENGLISH, make_pdf, numbered_pages


def run_with_good_neighbour(src: Path, out: Path, engine=None) -> tuple[int, dict]:
    """Every bad file sits next to a good PDF, which must still come out complete."""
    make_pdf(src / "zz_good.pdf", [ENGLISH])
    code = run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine)
    report = load_report(out)
    assert pdf_entry(report, "zz_good.pdf")["status"] == "complete"
    assert (out / "zz_good.md").exists()
    return code, report


@pytest.mark.parametrize("name, content, reason", [
    ("empty.pdf", b"", "empty file (0 bytes)"),
    ("not_a_pdf.pdf", b"<html>this is a web page saved as .pdf</html>" * 20, "not a PDF"),
    ("truncated.pdf", None, "damaged PDF"),
])
def test_broken_files_fail_alone(tmp_path, name, content, reason):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    if content is None:  # the first 300 bytes of a real PDF: header, no page tree, no xref
        good = make_pdf(tmp_path / "whole.pdf", numbered_pages(3))
        content = good.read_bytes()[:300]
    (src / name).write_bytes(content)
    code, report = run_with_good_neighbour(src, out)
    assert code == 1
    entry = pdf_entry(report, name)
    assert entry["status"] == "failed" and reason in entry["error"]
    assert not (out / (Path(name).stem + ".md")).exists()


@pytest.mark.parametrize("fixture, reason", [
    ("bad_encrypted_user_password.pdf", "encrypted PDF: needs a password"),
    ("bad_zero_pages_in_mupdf_cad_drawing.pdf", "PDF has no pages"),
])
def test_real_bad_pdfs_are_reported(tmp_path, fixture, reason):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(fixture_pdf(fixture), src / fixture)
    code, report = run_with_good_neighbour(src, out)
    assert code == 1
    entry = pdf_entry(report, fixture)
    assert entry["status"] == "failed" and reason in entry["error"]


def test_mangled_scan_is_repaired_and_ocred(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(fixture_pdf("bad_mangled_scanner_output.pdf"), src / "scan.pdf")
    code, report = run_with_good_neighbour(src, out)
    assert code == 0 and pdf_entry(report, "scan.pdf")["status"] == "complete"


def test_poster_page_is_rendered_within_the_pixel_cap(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(fixture_pdf("en_scan_poster_huge_page.pdf"), src / "poster.pdf")
    sizes = []

    def script(request):
        sizes.append(request.image.size)
        return "poster text"

    code, _ = run_with_good_neighbour(src, out, engine=ScriptedEngine(script=script))
    assert code == 0
    poster = [w * h for w, h in sizes if w * h > 3_000_000]
    assert poster and all(p <= 12_000_000 for p in poster)   # 36000 x 72000 px at 144 dpi otherwise


def test_a_page_that_fails_to_render_is_stubbed(tmp_path, monkeypatch, inline_render):
    """A page whose render raises gets a failure stub; the PDF's other pages are kept."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(3))
    import ocr.render as render
    original = render.render_task

    def flaky(path, key, *settings):
        if key.page == 2:
            return render.RenderedPage(key, error="render failed: RuntimeError: broken content stream")
        return original(path, key, *settings)

    monkeypatch.setattr(render, "render_task", flaky)
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 1
    md = (out / "a.md").read_text(encoding="utf-8")
    assert "[[Page 2 failed: render failed: RuntimeError: broken content stream]]" in md
    assert "# Page 3" in md
    assert pdf_entry(load_report(out), "a.pdf")["status"] == "partial"


def test_odd_file_names(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = ["Νόμος 2292 (1995).pdf", "with space's & \"quotes\".pdf", "ΦΕΚ Α' 58.pdf"]
    for name in names:
        make_pdf(src / name, [ENGLISH])
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    for name in names:
        assert (out / (name[:-4] + ".md")).read_text(encoding="utf-8").startswith("# Page 1")


@pytest.mark.skipif(sys.platform != "linux", reason="byte file names")
def test_file_names_that_are_not_utf8_are_ocred_and_resumed(tmp_path):
    """A Greek archive unzipped from CP1253: 'Αρχείο.pdf' as bytes that are not UTF-8. The run OCRs it,
    writes its report and manifest, and the next run skips it."""
    src, out = tmp_path / "in", tmp_path / "out"
    name = "\u0391\u03c1\u03c7\u03b5\u03af\u03bf".encode("cp1253") + b".pdf"
    make_pdf(src / "tmp.pdf", [ENGLISH])
    os.rename(src / "tmp.pdf", os.fsdecode(os.fsencode(src) + b"/" + name))
    code, report = run_with_good_neighbour(src, out)
    assert code == 0
    md = os.fsencode(out) + b"/" + name[:-4] + b".md"
    with open(md, "rb") as f:
        assert f.read().startswith(b"# Page 1")
    assert report["totals"]["pdfs_complete"] == 2
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    assert load_report(out)["totals"]["pdfs_skipped"] == 2


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_unreadable_file(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    os.symlink(tmp_path / "gone.pdf", src / "dangling.pdf")      # unreadable even for root
    code, report = run_with_good_neighbour(src, out)
    assert code == 1
    assert "cannot read file" in pdf_entry(report, "dangling.pdf")["error"]


def test_unwritable_output_dir_stops_before_the_engine(tmp_path, capsys):
    src = tmp_path / "in"
    make_pdf(src / "a.pdf", [ENGLISH])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    built = []
    code = run_cli(["--input-dir", str(src), "--output-dir", str(blocker / "out")],
                   engine_factory=lambda: built.append(1))
    assert code == 2 and built == []
    assert "cannot write to --output-dir" in capsys.readouterr().err


def test_bad_flags_are_usage_errors(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(tmp_path / "o"), "--num-shards", "2",
                    "--shard-index", "2"]) == 2
    assert run_cli(["--input-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--shard-index must be in" in err and "is not a folder" in err


def test_thousand_page_pdf_streams_through(tmp_path):
    """1,000 pages go through with a bounded window: never more than the render window is held."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "big.pdf", [f"p{i}" for i in range(1000)], size=(200, 200))
    peak = []

    class Counting(ScriptedEngine):
        def poll(self):
            peak.append(len(self._in))
            return super().poll()

    engine = Counting(script=lambda r: f"t{r.key.page}", per_poll=16)
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--batch-pages", "16"],
                   engine=engine) == 0
    md = (out / "big.md").read_text(encoding="utf-8")
    assert md.count("----- Page ") == 999 and "----- Page 1000 -----\n\nt1000" in md
    assert max(peak) <= 16 + 16          # --batch-pages plus the default --queue-ahead


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_a_fifo_named_pdf_is_bad_input_not_a_hang(tmp_path):
    """open() on a FIFO blocks until someone writes to it: the run must not wait for ever (bounded here
    by `timeout`: exit 124 or 137 if it hangs), and the PDFs after it are done."""
    import subprocess
    from conftest import ROOT
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    os.mkfifo(src / "a_pipe.pdf")
    make_pdf(src / "b_good.pdf", [ENGLISH])
    proc = subprocess.run(["timeout", "-k", "5", "60", sys.executable, str(ROOT / "tests" / "drive_double.py"),
                           "--input-dir", str(src), "--output-dir", str(out), "--render-workers", "1",
                           "--no-progress"], env={**os.environ, "OCR_DOUBLE_STEP_S": "0"},
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = load_report(out)
    assert pdf_entry(report, "a_pipe.pdf") == {**pdf_entry(report, "a_pipe.pdf"), "status": "failed",
                                                "error": "not a regular file: a FIFO (named pipe)"}
    assert pdf_entry(report, "b_good.pdf")["status"] == "complete"


def test_a_file_that_cannot_be_read_in_time_is_skipped(tmp_path, monkeypatch):
    """A file on a hung network mount: past the open deadline it is reported and the run goes on."""
    import threading
    import ocr.render as render
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a_hung.pdf", [ENGLISH])
    released = threading.Event()
    original = render.source_id

    def hanging_read(path):
        if path.name == "a_hung.pdf":
            released.wait(60)              # a read() that does not return
        return original(path)

    monkeypatch.setattr(render, "source_id", hanging_read)
    make_pdf(src / "zz_good.pdf", [ENGLISH])
    try:
        code = run_cli(["--input-dir", str(src), "--output-dir", str(out), "--open-timeout", "1"])
    finally:
        released.set()
    assert code == 1
    report = load_report(out)
    assert pdf_entry(report, "zz_good.pdf")["status"] == "complete"
    entry = pdf_entry(report, "a_hung.pdf")
    assert entry["status"] == "failed" and "took more than 1 s" in entry["error"]
