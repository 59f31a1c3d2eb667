"""Merged shard reports: a damaged PDF (some pages lost in the file) is a problem, as in one worker's report;
the rate with engines up counts workers side by side only where they were."""

from pathlib import Path

import pytest

from ocr import merge_reports


def merged_with(*statuses: str) -> dict:
    return {"workers": [{"problem": None}], "pdfs": [{"pdf": f"d{i}.pdf", "status": s, "worker": 0}
                                                       for i, s in enumerate(statuses)]}


def test_a_damaged_pdf_keeps_the_merged_run_from_counting_as_complete():
    assert merge_reports.complete(merged_with("complete", "skipped"))
    assert not merge_reports.complete(merged_with("complete", "damaged"))
    for status in ("failed", "partial", "unfinished"):
        assert not merge_reports.complete(merged_with(status))


def shard(index: int, pages: int, ready: float | None, written: float, rate: float) -> merge_reports.Shard:
    """A worker's report whose engine was up from `ready` to `written` (Unix seconds)."""
    totals = {"pdfs": 1, "pdfs_complete": 1, "pages": pages, "blank_pages": 0, "failed_pages": 0, "tokens": 0,
              "seconds": written - 1000.0, "pages_per_s": 1.0, "pages_per_s_after_load": rate}
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
