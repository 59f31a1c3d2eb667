"""The run report's file: the JSON of its entries is made once per change (a long run rewrites it every 10 s
on the control loop's thread), and what is written always parses to the report as it is now."""

from __future__ import annotations

import json

import pytest

from ocr.finish import blank_page, failed_page
from ocr.records import PageResult, PageStatus
from ocr.report import PdfStatus, RunReport, merged_text


def page(n: int, text: str = "κείμενο") -> PageResult:
    return PageResult(n, PageStatus.OK, text, tokens=7, finish_reason="stop", counters={"fixed": 1},
                      stats={"greek_letters": 7, "latin_letters": 1, "other_letters": 0, "non_nfc": 0})


@pytest.fixture
def report(tmp_path, monkeypatch):
    monkeypatch.setattr("ocr.report.time.time", lambda: 2000.0)    # the clock and rates stay put between reads
    r = RunReport(tmp_path / "run_report.json", {"mode": "markdown"})
    r.engine_ready = 1990.0
    return r


def written(report: RunReport) -> dict:
    report.write()
    return json.loads(report.path.read_text(encoding="utf-8"))


def test_an_empty_report_is_written_as_it_is(report):
    assert written(report) == report.to_json() and written(report)["pdfs"] == []


def test_every_change_to_an_entry_reaches_the_next_write(report):
    report.pdf_opened("α.pdf", 3, [page(1)])
    assert written(report) == report.to_json()
    report.add_page("α.pdf", blank_page(2))
    report.add_page("α.pdf", failed_page(3, "engine error"))
    assert written(report) == report.to_json()
    report.entry("α.pdf").repaired = "MuPDF: repaired xref"      # set from outside (pipeline, Ray worker)
    report.pdf_settled("α.pdf", PdfStatus.PARTIAL, output="α.md", seconds=3.5)
    report.pdf_opened("b.pdf", 1, [])
    report.add_page("b.pdf", page(1, "text"))
    got = written(report)
    assert got == report.to_json()
    first = got["pdfs"][0]
    assert (first["status"], first["repaired"], first["failed_pages"], first["blank_pages"]) == \
        ("partial", "MuPDF: repaired xref", [3], 1)
    greek = got["totals"]["greek"]
    assert (greek["greek_letters"], greek["latin_letters"], greek["other_letters"], greek["non_nfc"]) == (14, 2, 0, 0)
    assert got["totals"]["read_pages"] == 1


def test_each_pdf_is_one_line_of_the_file(report):
    for name in ("a.pdf", "b\nc.pdf"):                             # a new line in a name stays escaped
        report.pdf_opened(name, 1, [])
        report.add_page(name, page(1))
    report.write()
    lines = report.path.read_text(encoding="utf-8").splitlines()
    assert sum(line.lstrip().startswith('{"pdf": ') for line in lines) == 2


def test_a_name_that_is_not_utf8_is_still_written(report):
    name = "scan-\udcb5.pdf"                                       # an archive unzipped from CP1253
    report.pdf_opened(name, 1, [])
    report.add_page(name, page(1))
    assert written(report)["pdfs"][0]["pdf"] == name


def test_a_merged_report_is_written_one_line_per_pdf_and_parses_back(tmp_path):
    """The launcher's merge writes its run_report.json as a worker does: grep finds a PDF on one line."""
    from ocr import merge_reports
    merged = {"settings": {}, "totals": {"pages": 2}, "workers": [{"worker": 0}],
              "pdfs": [{"pdf": "α.pdf", "status": "complete", "worker": 0, "page_details": [{"page": 1}]},
                       {"pdf": "b.pdf", "status": "failed", "worker": 1, "page_details": []}]}
    path = merge_reports.write_merged(tmp_path, merged, num_shards=2)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == merged
    assert [line for line in text.splitlines() if "α.pdf" in line] == \
        ['  {"pdf": "α.pdf", "status": "complete", "worker": 0, "page_details": [{"page": 1}]},']
    assert json.loads(merged_text({**merged, "pdfs": []}))["pdfs"] == []
