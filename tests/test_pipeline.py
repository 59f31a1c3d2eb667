"""The runner end to end with the scripted engine double: files, headings, stubs, report, resume."""

from __future__ import annotations

import os
import time

from conftest import load_report, pdf_entry, run_cli
from doubles import ScriptedEngine
from pdfgen import ENGLISH, GREEK, make_pdf, numbered_pages


def test_corpus_becomes_one_markdown_per_pdf(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "report.pdf", [ENGLISH, None, GREEK])
    make_pdf(src / "sub" / "report.PDF", [ENGLISH])          # same stem, other folder, upper-case suffix

    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0

    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Page 1")
    assert "----- Page 1 -----" not in md
    assert "----- Page 2 -----\n\n[[Blank page]]" in md
    assert "----- Page 3 -----\n\n# Page 3" in md
    assert (out / "sub" / "report.md").read_text(encoding="utf-8").startswith("# Page 1")
    report = load_report(out)
    entry = pdf_entry(report, "report.pdf")
    assert (entry["status"], entry["pages"], entry["blank_pages"]) == ("complete", 3, 1)
    assert entry["tokens"] > 0 and entry["output"] == "report.md"
    assert report["totals"]["pdfs_complete"] == 2 and report["totals"]["pages"] == 4
    assert not list(out.rglob("*.part")) and not list((out / ".ocr-state" / "journal").iterdir())
    assert list((out / "logs").glob("run-*.log"))


def test_max_pages_caps_each_pdf(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "long.pdf", numbered_pages(5))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--max-pages", "2"]) == 0
    md = (out / "long.md").read_text(encoding="utf-8")
    assert "----- Page 2 -----" in md and "----- Page 3 -----" not in md


def test_second_run_skips_complete_pdfs_and_redoes_changed_ones(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(2, "A"))
    make_pdf(src / "b.pdf", numbered_pages(2, "B"))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0

    make_pdf(src / "b.pdf", numbered_pages(3, "B changed"))
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 0
    assert {pdf for pdf, _, _ in engine.log} == {1}           # only b.pdf (job index 1) went to the engine
    report = load_report(out)
    assert pdf_entry(report, "a.pdf")["status"] == "skipped"
    assert "----- Page 3 -----" in (out / "b.md").read_text(encoding="utf-8")

    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--overwrite"], engine=engine) == 0
    assert len(engine.log) == 5


def test_touched_but_identical_pdf_is_not_redone(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    pdf = make_pdf(src / "a.pdf", numbered_pages(1))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    os.utime(pdf, (1_000_000, 1_000_000))
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 0
    assert engine.log == []


def test_changed_mode_redoes_the_pdf(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(1))
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)]) == 0
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded",
                    "--required-labels", ""], engine=engine) == 0
    assert len(engine.log) == 1


def test_a_dummy_weight_run_is_never_taken_as_finished(tmp_path):
    """A throughput test with --load-format dummy into the real output folder: the real run redoes its
    PDFs; a rerun at the same settings still skips them."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(1))
    base = ["--input-dir", str(src), "--output-dir", str(out)]
    runs = []
    for extra in (["--load-format", "dummy"], [], [], ["--ngram-size", "0"]):
        engine = ScriptedEngine()
        assert run_cli(base + extra, engine=engine) == 0
        runs.append(len(engine.log))
    assert runs == [1, 1, 0, 1]


def test_empty_output_is_retried_once_then_stubbed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(3))
    engine = ScriptedEngine(script=lambda r: "" if r.key.page == 2 else f"text {r.key.page}")
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 1
    # retried once, as a runaway page (attempt 2), in Large mode: an empty answer is a reading failure
    assert [(r.attempt, r.vision) for r in engine.requests if r.key.page == 2] == [(0, "gundam"), (2, "large")]
    md = (out / "a.md").read_text(encoding="utf-8")
    assert "[[Page 2 failed: the model returned no text]]" in md and "text 3" in md
    entry = pdf_entry(load_report(out), "a.pdf")
    assert entry["status"] == "partial" and entry["failed_pages"] == [2]

    # The next run redoes only the failed page.
    engine = ScriptedEngine()
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 0
    assert [p for _, p, _ in engine.log] == [2]
    md = (out / "a.md").read_text(encoding="utf-8")
    assert "failed" not in md and "text 1" in md and "# Page 2" in md


def test_pages_of_many_pdfs_share_the_engine(tmp_path, inline_render):
    """Continuous batching across PDFs: the engine is topped up to --batch-pages from the next PDFs."""
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        make_pdf(src / f"d{i}.pdf", numbered_pages(2))
    seen = []

    class Watching(ScriptedEngine):
        def poll(self):
            seen.append({r.key.pdf for r in self._in.values()})
            return super().poll()

    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--batch-pages", "6"],
                   engine=Watching(per_poll=1)) == 0
    assert max(len(s) for s in seen) == 3       # pages of all three PDFs in the engine at once


def test_report_has_page_details_and_greek_signals(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "g.pdf", [GREEK, None])
    # The model writes Latin look-alikes into a Greek word and a medial sigma at a word end.
    engine = ScriptedEngine(script=lambda r: "Ο νόμοσ του KAΙ ΦEK Α' 145/1999 ορίζει")
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out)], engine=engine) == 0
    md = (out / "g.md").read_text(encoding="utf-8")
    assert "Ο νόμος του ΚΑΙ ΦΕΚ Α' 145/1999 ορίζει" in md
    report = load_report(out)
    entry = pdf_entry(report, "g.pdf")
    assert [d["page"] for d in entry["page_details"]] == [1, 2]
    assert entry["page_details"][0]["greek"]["greek_share"] > 0.9
    assert entry["counters"]["final_sigma_fixed"] == 1 and entry["counters"]["lookalikes_to_greek"] == 2
    assert report["totals"]["greek"]["greek_letters"] > 20
    clock = report["clock"]                   # wall-clock times a merge of shard reports lines up
    assert clock["started"] <= clock["engine_ready"] <= clock["written"] <= time.time() + 0.01   # rounded


def test_greek_repair_off_keeps_the_model_text(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "g.pdf", [GREEK])
    engine = ScriptedEngine(script=lambda r: "Ο νόμοσ του ΦEK")
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--greek-repair", "off"],
                   engine=engine) == 0
    assert "Ο νόμοσ του ΦEK" in (out / "g.md").read_text(encoding="utf-8")
    assert pdf_entry(load_report(out), "g.pdf")["page_details"][0]["greek"]["mixed_script_words"] == 1


def test_assets_page_images_and_linked_figure_crops(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "fig doc.pdf", [ENGLISH])
    grounded = ("<|ref|>text<|/ref|><|det|>[[50, 50, 950, 200]]<|/det|>\nIntro text.\n\n"
                "<|ref|>image<|/ref|><|det|>[[100, 300, 600, 700]]<|/det|>\n\n"
                "<|ref|>table<|/ref|><|det|>[[100, 750, 900, 950]]<|/det|>\n"
                "<table><tr><td>1</td><td>2</td></tr></table>")
    engine = ScriptedEngine(script=lambda r: grounded)
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded",
                    "--save-page-images", "--save-crops"], engine=engine) == 0
    assets = out / "fig doc_assets"
    assert sorted(p.name for p in assets.iterdir()) == ["page-0001-image-1.png", "page-0001-table-1.png",
                                                       "page-0001.png"]
    md = (out / "fig doc.md").read_text(encoding="utf-8")
    assert "<|/det|>\n![](fig%20doc_assets/page-0001-image-1.png)" in md
    from PIL import Image
    page = Image.open(assets / "page-0001.png")
    crop = Image.open(assets / "page-0001-image-1.png")
    assert abs(crop.width - page.width / 2) < 3 and abs(crop.height - page.height * 0.4) < 3
