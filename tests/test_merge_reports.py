"""Merged shard reports: a damaged PDF (some pages lost in the file) is a problem, as in one worker's report."""

from ocr import merge_reports


def merged_with(*statuses: str) -> dict:
    return {"workers": [{"problem": None}], "pdfs": [{"pdf": f"d{i}.pdf", "status": s, "worker": 0}
                                                       for i, s in enumerate(statuses)]}


def test_a_damaged_pdf_keeps_the_merged_run_from_counting_as_complete():
    assert merge_reports.complete(merged_with("complete", "skipped"))
    assert not merge_reports.complete(merged_with("complete", "damaged"))
    for status in ("failed", "partial", "unfinished"):
        assert not merge_reports.complete(merged_with(status))
