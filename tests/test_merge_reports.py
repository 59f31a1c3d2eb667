"""Merged shard reports: a damaged PDF (some pages lost in the file) is a problem, as in one worker's report;
the rate with engines up counts workers side by side only where they were, and the pages the model read apart
from the blank and resumed ones."""

from pathlib import Path

import pytest

from ocr import merge_reports
from ocr.finish import blank_page, failed_page
from ocr.records import PageResult, PageStatus
from ocr.report import PdfStatus, RunReport


def merged_with(*statuses: str) -> dict:
    return {"workers": [{"problem": None}], "pdfs": [{"pdf": f"d{i}.pdf", "status": s, "worker": 0}
                                                       for i, s in enumerate(statuses)]}


def test_a_damaged_pdf_keeps_the_merged_run_from_counting_as_complete():
    assert merge_reports.complete(merged_with("complete", "skipped"))
    assert not merge_reports.complete(merged_with("complete", "damaged"))
    for status in ("failed", "partial", "unfinished"):
        assert not merge_reports.complete(merged_with(status))


def shard(index: int, pages: int, ready: float | None, written: float, rate: float,
          read: int | None = None) -> merge_reports.Shard:
    """A worker's report whose engine was up from `ready` to `written` (Unix seconds), `read` of its pages
    read by the model (None: a report from before it counted them)."""
    totals = {"pdfs": 1, "pdfs_complete": 1, "pages": pages, "blank_pages": 0, "failed_pages": 0, "tokens": 0,
              "seconds": written - 1000.0, "pages_per_s": 1.0, "pages_per_s_after_load": rate}
    if read is not None:
        totals.update(read_pages=read, read_pages_per_s_after_load=read / (written - ready) if ready else 0.0)
    return merge_reports.Shard(index, Path(f"r{index}.json"), report={
        "totals": totals, "clock": {"started": 1000.0, "engine_ready": ready, "written": written}})


@pytest.mark.parametrize("spans, expected", [
    ([], 0.0),
    ([(0.0, 10.0)], 10.0),
    ([(0.0, 10.0), (10.0, 25.0)], 25.0),                  # one after the other
    ([(0.0, 10.0), (2.0, 8.0)], 10.0),                    # one inside the other
    ([(5.0, 9.0), (0.0, 6.0), (20.0, 21.0)], 10.0),       # overlapping, out of order, and a gap
])
def test_union_seconds(spans, expected):
    assert merge_reports.union_seconds(spans) == pytest.approx(expected)


def test_workers_that_ran_one_after_the_other_do_not_add_their_rates_up():
    """Two workers on one GPU whose engines ran one after the other (session 14's H200 launch): each did 672
    pages in 40 s, so together 1344 pages in 80 s of engines up, not 2 x 16.8 pages/s."""
    serial = merge_reports.merged_totals([shard(0, 672, 1100.0, 1140.0, 16.8),
                                          shard(1, 672, 1140.0, 1180.0, 16.8)], wall_seconds=180.0)
    assert serial["pages_per_s_after_load"] == pytest.approx(16.8)
    side_by_side = merge_reports.merged_totals([shard(0, 672, 1100.0, 1140.0, 16.8),
                                                shard(1, 672, 1100.0, 1140.0, 16.8)], wall_seconds=140.0)
    assert side_by_side["pages_per_s_after_load"] == pytest.approx(33.6)
    never_loaded = shard(2, 0, None, 1050.0, 0.0)          # all its PDFs were done already: no engine
    assert merge_reports.merged_totals([shard(0, 672, 1100.0, 1140.0, 16.8), never_loaded],
                                       wall_seconds=140.0)["pages_per_s_after_load"] == pytest.approx(16.8)
    old = shard(1, 672, 1140.0, 1180.0, 16.8)
    del old.report["clock"]                                # a report from before reports had a clock
    assert merge_reports.merged_totals([shard(0, 672, 1100.0, 1140.0, 16.8), old],
                                       wall_seconds=180.0)["pages_per_s_after_load"] == pytest.approx(33.6)


def ok(page: int) -> PageResult:
    return PageResult(page, PageStatus.OK, f"text of page {page}", tokens=10)


def test_the_pages_read_by_the_model_leave_out_blank_failed_and_resumed_pages(tmp_path, monkeypatch):
    """A 10-page PDF resumed with pages 1-3 from the journal, then 5 read, one blank, one failed: the model read
    5 pages in this run. Its rate is what compares with the engine; the pages rate counts all 9 written."""
    clock = [1000.0]
    monkeypatch.setattr("ocr.report.time.time", lambda: clock[0])
    report = RunReport(tmp_path / "run_report.json", {})
    report.pdf_opened("a.pdf", 10, [ok(1), ok(2), blank_page(3)])
    clock[0] = 1030.0
    report.engine_ready = clock[0]
    for page in range(4, 9):
        report.add_page("a.pdf", ok(page))
    report.add_page("a.pdf", blank_page(9))
    report.add_page("a.pdf", failed_page(10, "engine error"))
    report.pdf_settled("a.pdf", PdfStatus.PARTIAL)
    clock[0] = 1040.0
    t = report.totals()
    assert (t["pages"], t["blank_pages"], t["failed_pages"], t["read_pages"]) == (9, 2, 1, 5)
    assert t["pages_per_s_after_load"] == pytest.approx(0.9)
    assert t["read_pages_per_s_after_load"] == pytest.approx(0.5)
    assert "0.9 pages/s (0.5 read by the model) while the engine was up" in report.summary_lines()[1]


def test_the_merged_read_rate_is_over_the_time_engines_were_up():
    merged = merge_reports.merged_totals([shard(0, 672, 1100.0, 1140.0, 16.8, read=588),
                                          shard(1, 672, 1140.0, 1180.0, 16.8, read=588)], wall_seconds=180.0)
    assert merged["read_pages"] == 1176
    assert merged["read_pages_per_s_after_load"] == pytest.approx(1176 / 80)
    line = merge_reports.summary_lines({"totals": {**merged, "counters": {}}, "workers": [], "pdfs": [],
                                        "interrupted": None})[1]
    assert f"16.8 pages/s ({merged['read_pages_per_s_after_load']} read by the model) while engines were up" in line
    old = merge_reports.merged_totals([shard(0, 672, 1100.0, 1140.0, 16.8)], wall_seconds=180.0)
    assert old["read_pages"] is None and "read by the model" not in merge_reports.up_rates(old)


def test_a_report_from_before_pages_read_were_counted_leaves_the_merged_count_unknown():
    """One shard from an older runner (no read_pages) beside a new one: 588 of 1,176 pages read would be half
    the truth, so the merged report says nothing of pages read, and its pages rate stands."""
    merged = merge_reports.merged_totals([shard(0, 672, 1100.0, 1140.0, 16.8, read=588),
                                          shard(1, 672, 1140.0, 1180.0, 16.8)], wall_seconds=180.0)
    assert merged["read_pages"] is None and merged["read_pages_per_s_after_load"] is None
    assert merged["pages_per_s_after_load"] == pytest.approx(16.8)
    assert merge_reports.up_rates(merged) == ", 16.8 pages/s while engines were up"
