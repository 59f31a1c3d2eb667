"""One PDF's unexpected error fails that PDF, not the run; a journal that cannot be read never loops."""

from __future__ import annotations

from conftest import load_report, pdf_entry, run_cli
from doubles import ScriptedEngine
from pdfgen import ENGLISH, make_pdf, numbered_pages


def named_text(request) -> str:
    return f"pdf {request.key.pdf} page {request.key.page}"


def test_an_unexpected_error_finishing_one_pdf_fails_only_that_pdf(tmp_path, monkeypatch):
    import ocr.pipeline as pipeline
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(2, "Alpha"))
    make_pdf(src / "b.pdf", numbered_pages(2, "Beta"))
    original = pipeline.assemble

    def broken(results, *rest):
        if any(r.text.startswith("pdf 0 ") for r in results):
            raise RuntimeError("a bug in assembling a.pdf")
        return original(results, *rest)

    monkeypatch.setattr(pipeline, "assemble", broken)
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)],
                   engine=ScriptedEngine(script=named_text)) == 1
    report = load_report(out)
    a = pdf_entry(report, "a.pdf")
    assert a["status"] == "failed" and "RuntimeError: a bug in assembling a.pdf" in a["error"]
    assert pdf_entry(report, "b.pdf")["status"] == "complete" and (out / "b.md").exists()
    [log] = (out / "logs").glob("run-*.log")
    assert "Traceback" in log.read_text(encoding="utf-8")
    monkeypatch.undo()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)],
                   engine=ScriptedEngine(script=named_text)) == 0
    assert (out / "a.md").read_text(encoding="utf-8").startswith("pdf 0 page 1")


def test_an_unreadable_journal_is_moved_aside_not_a_crash_loop(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", [ENGLISH, ENGLISH])
    fails = ScriptedEngine(script=lambda r: "" if r.key.page == 2 else named_text(r))   # page 2: no text
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=fails) == 1
    journal = out / ".ocr-state" / "journal" / "a.pdf.jsonl"
    with open(journal, "a", encoding="utf-8") as f:
        f.write('{"page": "two", "status": "ok", "text": "from a foreign tool"}\n')
    for _ in range(2):           # the first rerun moves it aside and redoes the PDF; the second skips it
        assert run_cli(["--input-dir", str(src), "--output-dir", str(out)],
                       engine=ScriptedEngine(script=named_text)) == 0
    assert [p.name.split(".jsonl")[0] for p in (out / ".ocr-state" / "unreadable").iterdir()] == ["a.pdf"]
    assert load_report(out)["totals"]["pdfs_skipped"] == 1
    assert (out / "a.md").read_text(encoding="utf-8").endswith("pdf 0 page 2\n")
