"""<stem>.jsonl: records built from real model outputs validate against the schema, regions carry boxes in
0-999 and in page pixels, the file is replaced whole; the corpus-level Dolma JSONL."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import jsonschema
import pytest

from conftest import fixture_pdf, raw_output
from doubles import SPECIAL_TOKENS
from ocr import dolma, jsonl_out
from ocr.engines.base import Failure
from ocr.finish import assemble, blank_page, failed_page, finish_page
from ocr.grounding import to_pixels
from ocr.pages import split_markdown
from ocr.records import EngineOutput, PageKey
from ocr.render import open_pdf, render_page
from ocr.run_outputs import read_run
from ocr.store import WriteError, sha256_of

SCHEMA = jsonl_out.load_schema()


def validate_file(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for record in records:
        jsonschema.validate(record, SCHEMA)
    return records


def grounded_results():
    texts = {1: raw_output("11_grounded-same-page-as-10-en.txt"), 3: raw_output("13_grounded-table-footnote-refs-en.txt"),
             4: raw_output("22_det-mmd-page-runaway-pre-tags-hr.txt")}
    results = [finish_page(EngineOutput(PageKey(0, p), t, 700, "length" if p == 4 else "stop"), mode="grounded",
                           special_tokens=SPECIAL_TOKENS) for p, t in texts.items()]
    return results + [blank_page(2), failed_page(5, "the model returned no text"),
                      failed_page(6, "render failed: RuntimeError: cannot load page", failure=Failure.RENDER)]


def header(pdf: Path, mode: str = "grounded", pages=(1, 2, 3, 4, 5, 6)) -> dict:
    return jsonl_out.header_record(source_name=pdf.name, sha256=sha256_of(pdf), size=pdf.stat().st_size,
                                   output="doc.md", model="deepseek-ai/DeepSeek-OCR", mode=mode,
                                   settings={"mode": mode, "dpi": 144}, page_count=6, pages=list(pages))


def test_grounded_records_validate_and_carry_regions_in_both_spaces(tmp_path):
    pdf = fixture_pdf("en_scan_mixed_orientation_pages.pdf")
    results = grounded_results()
    sizes = {r.page: (1224, 1584) for r in results}
    md = tmp_path / "doc.md"
    md.write_text(assemble(results), encoding="utf-8")
    path = jsonl_out.write_pages_jsonl(md, header(pdf), results, grounded=True, image_sizes=sizes)
    assert path == tmp_path / "doc.jsonl"
    head, *pages = validate_file(path)
    assert head["source"]["sha256"] == sha256_of(pdf) and head["pages"] == [1, 2, 3, 4, 5, 6]
    assert [(p["page"], p["status"]) for p in pages] == [(1, "ok"), (2, "blank"), (3, "ok"), (4, "ok"),
                                                        (5, "failed"), (6, "damaged")]
    # each page's text is exactly what the Markdown holds for that page
    assert {p["page"]: p["text"] for p in pages} == split_markdown(md.read_text(encoding="utf-8")).pages
    first = pages[0]["regions"]
    assert first[0]["label"] == "table" and first[0]["boxes"] == [[114, 70, 883, 570]]
    assert first[0]["boxes_px"] == [list(to_pixels((114, 70, 883, 570), 1224, 1584))]
    assert "<table>" in first[0]["text"] and "operation_id" in first[0]["text"]
    assert pages[3]["finish_reason"] == "length" and pages[3]["counters"]["hit_max_tokens"] == 1
    assert pages[1]["regions"] == [] and pages[4]["error"] == "the model returned no text"


def test_clean_records_have_no_regions(tmp_path):
    pdf = fixture_pdf("en_scan_mixed_orientation_pages.pdf")
    result = finish_page(EngineOutput(PageKey(0, 1), raw_output("10_clean-pipe-table-empty-rows-en.txt"), 500, "stop"),
                         mode="clean")
    path = jsonl_out.write_pages_jsonl(tmp_path / "doc.md", header(pdf, "clean", [1]), [result], grounded=False,
                                       image_sizes={})
    _, page = validate_file(path)
    assert "regions" not in page and page["image"] is None and "Table 6.3" in page["text"]


@pytest.mark.parametrize("record, why", [
    ({"status": "weird"}, "status"),
    ({"page": 0}, "page"),
    ({"regions": [{"label": "table", "boxes": [[1, 2, 3]], "boxes_px": None, "text": ""}]}, "box"),
])
def test_schema_rejects_records_that_break_it(tmp_path, record, why):
    pdf = fixture_pdf("en_scan_mixed_orientation_pages.pdf")
    text = jsonl_out.jsonl_text(header(pdf), grounded_results()[:1], grounded=True, image_sizes={})
    page = {**json.loads(text.splitlines()[1]), **record}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(page, SCHEMA)


def test_page_pixel_size_is_the_rendered_size():
    for name in ("en_scan_mixed_orientation_pages.pdf", "en_scan_poster_huge_page.pdf",
                 "en_digital_skinny_tall_page.pdf"):
        with open_pdf(fixture_pdf(name)) as doc:
            for page in range(1, min(doc.page_count, 3) + 1):
                image = render_page(doc, page, 144, 12_000_000)
                assert jsonl_out.page_pixel_size(doc, page, 144, 12_000_000) == image.size


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    pdf = fixture_pdf("en_scan_mixed_orientation_pages.pdf")
    md = tmp_path / "doc.md"
    path = jsonl_out.write_pages_jsonl(md, header(pdf), grounded_results(), grounded=True, image_sizes={})
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(WriteError, match="cannot write doc.jsonl: no space left on device"):
        jsonl_out.write_pages_jsonl(md, header(pdf), grounded_results()[:1], grounded=True, image_sizes={})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["doc.jsonl"]


def test_dolma_corpus_from_jsonl_outputs(tmp_path):
    pdf = fixture_pdf("en_scan_mixed_orientation_pages.pdf")
    out = tmp_path / "out"
    results = grounded_results()
    (out / "sub").mkdir(parents=True)
    md = out / "sub" / "doc.md"
    md.write_text(assemble(results), encoding="utf-8")
    jsonl_out.write_pages_jsonl(md, header(pdf), results, grounded=True, image_sizes={})
    dest = tmp_path / "corpus.jsonl.gz"
    assert dolma.main([str(out), str(out), "-o", str(dest)]) == 0      # the same folder twice: written once
    docs = [json.loads(line) for line in gzip.open(dest, "rt", encoding="utf-8")]
    assert len(docs) == 1
    doc = docs[0]
    assert doc["id"] == sha256_of(pdf) and doc["metadata"]["Source-File"] == pdf.name
    spans = doc["metadata"]["pdf_page_numbers"]
    assert [s[2] for s in spans] == [1, 3, 4]             # blank, failed and damaged pages left out
    page3 = doc["text"][spans[1][0]:spans[1][1]]
    assert page3.startswith("## 2 References, definitions") and "[1] Blue" in page3
    assert "<|ref|>" not in doc["text"] and "<|det|>" not in doc["text"]
    assert doc["attributes"]["pdf_page_numbers"] == spans


def test_dolma_reads_markdown_only_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.md").write_text("First page.\n\n----- Page 2 -----\n\n[[Blank page]]\n\n----- Page 3 -----\n\n"
                              "Third page.\n\n----- Page 4 -----\n\n[[Page 4 failed: damaged PDF: page content "
                              "missing (truncated or damaged file)]]\n", encoding="utf-8")
    [pdf] = read_run(out)
    assert [p.status for p in pdf.pages.values()] == ["ok", "blank", "ok", "damaged"]
    doc = dolma.document(pdf, "test", "2026-01-01")
    assert doc["text"] == "First page.\n\nThird page." and doc["metadata"]["pdf_page_numbers"] == [[0, 11, 1], [13, 24, 3]]


def test_the_schema_in_the_docs_is_the_schema_in_the_package():
    from conftest import ROOT
    docs = (ROOT / "docs" / "output.md").read_text(encoding="utf-8")
    shown = docs.split("## Schema", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(shown) == SCHEMA


@pytest.mark.parametrize("text, formats", [("md", ("md",)), ("md,jsonl", ("md", "jsonl")),
                                           (" JSONL ", ("md", "jsonl")), ("jsonl,md", ("md", "jsonl"))])
def test_formats(text, formats):
    assert jsonl_out.parse_formats(text) == formats


@pytest.mark.parametrize("text, says", [("", "empty"), ("md,json", "unknown 'json'"), ("pdf", "unknown 'pdf'")])
def test_bad_formats_say_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        jsonl_out.parse_formats(text)


# --- the runner with --format md,jsonl (scripted engine double) -----------------------------------------
def test_runner_writes_jsonl_beside_the_markdown(tmp_path, inline_render, monkeypatch):
    from PIL import Image
    import ocr.render
    from conftest import run_cli
    from doubles import ScriptedEngine
    from pdfgen import ENGLISH, GREEK, make_pdf
    src, out = tmp_path / "in", tmp_path / "out"
    pdf = make_pdf(src / "sub" / "doc.pdf", [ENGLISH, None, GREEK, ENGLISH, ENGLISH, ENGLISH])
    answers = {1: raw_output("11_grounded-same-page-as-10-en.txt"), 3: raw_output("13_grounded-table-footnote-refs-en.txt"),
               4: ""}
    render = ocr.render._render

    def page_5_does_not_render(page, dpi, max_pixels):
        if page.number == 4:
            raise RuntimeError("cannot render page 5")
        return render(page, dpi, max_pixels)
    monkeypatch.setattr(ocr.render, "_render", page_5_does_not_render)
    engine = ScriptedEngine(script=lambda r: answers[r.key.page])
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded", "--required-labels", "",
                    "--format", "md,jsonl", "--save-page-images", "--pages", "1-5"], engine=engine) == 1
    head, *pages = validate_file(out / "sub" / "doc.jsonl")
    assert head["source"] == {"name": "sub/doc.pdf", "sha256": sha256_of(pdf), "size": pdf.stat().st_size}
    assert head["output"] == "sub/doc.md" and head["mode"] == "grounded" and head["page_count"] == 6
    assert head["settings"]["mode"] == "grounded" and head["pages"] == [1, 2, 3, 4, 5]
    assert [(p["page"], p["status"]) for p in pages] == [(1, "ok"), (2, "blank"), (3, "ok"), (4, "failed"),
                                                        (5, "damaged")]
    md = (out / "sub" / "doc.md").read_text(encoding="utf-8")
    assert md.startswith("[[Pages 1-5 of 6 selected]]\n\n")
    assert {p["page"]: p["text"] for p in pages} == split_markdown(md).pages
    # the pixel boxes are in the page image the model saw (--save-page-images wrote it)
    png = Image.open(out / "sub" / "doc_assets" / "page-0001.png")
    assert (pages[0]["image"]["width"], pages[0]["image"]["height"]) == png.size
    assert pages[0]["regions"][0]["boxes_px"] == [list(to_pixels((114, 70, 883, 570), *png.size))]
    assert pages[3]["error"] == "the model returned no text" and pages[3]["regions"] == []
    assert pages[4]["error"] == "render failed: RuntimeError: cannot render page 5"


def test_jsonl_is_written_only_when_asked_and_a_missing_one_redoes_the_pdf(tmp_path, inline_render):
    from conftest import run_cli
    from doubles import ScriptedEngine
    from pdfgen import make_pdf, numbered_pages
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(2))
    base = ["--input-dir", str(src), "--output-dir", str(out)]
    runs = []
    for extra in ([], ["--format", "md,jsonl"], ["--format", "md,jsonl"], []):
        engine = ScriptedEngine()
        assert run_cli(base + extra, engine=engine) == 0
        runs.append((len(engine.log), (out / "a.jsonl").exists()))
    # md only; jsonl asked for and missing: redone; present: skipped; md only again: skipped (the jsonl stays)
    assert runs == [(2, False), (2, True), (0, True), (0, True)]
    validate_file(out / "a.jsonl")


def test_a_bad_format_is_a_usage_error(tmp_path, capsys):
    from conftest import run_cli
    from pdfgen import make_pdf, numbered_pages
    make_pdf(tmp_path / "in" / "a.pdf", numbered_pages(1))
    assert run_cli(["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
                    "--format", "md,json"]) == 2
    assert "--format 'md,json': unknown 'json'" in capsys.readouterr().err
