"""ocr-compare: parts scored apart over real outputs, similarity properties, and two real runs compared end
to end (the page that differs comes first, the HTML shows its image beside both texts)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from conftest import run_cli, raw_output
from doubles import ScriptedEngine
from ocr import compare
from ocr.run_outputs import Page, PdfOutput
from pdfgen import ENGLISH, GREEK, make_pdf


def test_parts_of_a_grounded_page_with_html_tables():
    parts = compare.split_parts(raw_output("11_grounded-same-page-as-10-en.txt"))
    cells = parts["tables"].splitlines()
    assert cells[:2] == ["operation_id", "Expected operation to be performed by the TG"]
    assert "<|det|>" not in parts["all"] and "114, 70" not in parts["all"]
    assert "<td>" not in parts["all"] and "Table 6.3: Operation_id List - Category 3" in parts["text"]


def test_parts_of_a_clean_page_with_a_pipe_table_and_headings():
    parts = compare.split_parts(raw_output("10_clean-pipe-table-empty-rows-en.txt"))
    assert "6.4 Operation_id of Category 4" in parts["headings"].splitlines()
    assert "operation_id" in parts["tables"].splitlines() and "---" not in parts["tables"]


def test_the_same_page_in_clean_and_grounded_mode_scores_high_in_tables_not_perfect():
    a, b = (compare.split_parts(raw_output(n)) for n in ("10_clean-pipe-table-empty-rows-en.txt",
                                                 "11_grounded-same-page-as-10-en.txt"))
    score = compare.similarity(a["all"], b["all"])
    assert 0.3 < score < 1.0


def test_a_changed_table_cell_lowers_only_the_table_score():
    page = "# Results\n\nSome text here.\n\n<table><tr><td>alpha</td><td>12.5</td></tr></table>"
    a = Page(1, "ok", page)
    b = Page(1, "ok", page.replace("12.5", "17.9"))
    s = compare.score_page("x.md", 1, a, b)
    assert s.scores["headings"] == 1.0 and s.scores["text"] == 1.0 and s.scores["tables"] < 1.0


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_similarity_is_symmetric_bounded_and_one_only_for_equal_texts(a, b):
    s = compare.similarity(a, b)
    if not a and not b:
        assert s is None
        return
    assert 0.0 <= s <= 1.0 and s == compare.similarity(b, a)
    assert (s == 1.0) == (a == b)


def _out(key: str, pages: dict[int, str]) -> PdfOutput:
    return PdfOutput(key, None, None, None, None, "clean", {n: Page(n, "ok", t) for n, t in pages.items()},
                     None, False)


def test_run_statistics_and_missing_pages():
    a = [_out("a.md", {1: "same", 2: "one two three", 3: "gone"}), _out("b.md", {1: "x"})]
    b = [_out("a.md", {1: "same", 2: "one two tree"}), _out("c.md", {1: "y"})]
    c = compare.compare_runs(a, b, threshold=0.95)
    assert [(s.page, s.status_b) for s in c.pages][:2] == [(3, None), (2, "ok")]     # missing page first
    assert c.run["pages"] == 3 and c.run["below"] == 2 and c.only_a == ["b.md"] and c.only_b == ["c.md"]
    assert c.run["mean"] == pytest.approx((1.0 + 12 / 13 + 0.0) / 3, abs=1e-4)


def test_failed_pages_are_not_scored_as_text():
    stub = "[[Page 2 failed: the model returned no text]]"
    a = [PdfOutput("a.md", None, None, None, None, "clean", {1: Page(1, "ok", "text"), 2: Page(2, "failed", stub),
                                                            3: Page(3, "ok", "three")}, None, False)]
    b = [PdfOutput("a.md", None, None, None, None, "clean", {1: Page(1, "ok", "text"), 2: Page(2, "failed", stub),
                                                            3: Page(3, "failed", stub)}, None, False)]
    c = compare.compare_runs(a, b)
    assert c.failed_both == [("a.md", 2)] and [(s.page, s.score) for s in c.pages] == [(3, 0.0), (1, 1.0)]
    assert "  a.md page 3 (failed in B)" in "\n".join(compare.summary_lines(c, 5))


def test_diff_marks_only_the_changed_words():
    da, db = compare.diff_html("the cat sat <here>", "the dog sat <here>")
    assert da == "the <del>cat </del>sat &lt;here&gt;" and db == "the <ins>dog </ins>sat &lt;here&gt;"


def two_runs(tmp_path):
    """Two real runs over the same PDFs that differ on page 2 of b.pdf only."""
    src = tmp_path / "in"
    make_pdf(src / "a.pdf", [ENGLISH, GREEK])
    make_pdf(src / "b.pdf", [ENGLISH, ENGLISH + " second", None])
    table = "<table><tr><td>Year</td><td>1995</td></tr></table>"

    def script(changed):
        def answer(request):
            text = f"# Heading {request.key.page}\n\nBody of page {request.key.page}, the same in both.\n\n{table}"
            if changed and request.key.pdf == 1 and request.key.page == 2:
                text = text.replace("the same in both", "read differently").replace("1995", "1996")
            return text
        return answer

    outs = []
    for name, changed in (("run_a", False), ("run_b", True)):
        out = tmp_path / name
        assert run_cli(["--input-dir", str(src), "--output-dir", str(out)],
                       engine=ScriptedEngine(script=script(changed))) == 0
        outs.append(out)
    return outs


def test_two_runs_compared_worst_page_first_with_html(tmp_path, capsys, inline_render):
    out_a, out_b = two_runs(tmp_path)
    html_path, json_path = tmp_path / "report.html", tmp_path / "scores.json"
    assert compare.main([str(out_a), str(out_b), "--html", str(html_path), "--json", str(json_path)]) == 0
    printed = capsys.readouterr().out
    assert "5 pages in 2 PDFs" in printed and "1 pages below 0.9" in printed
    worst = printed.split("worst pages")[1].splitlines()[1]
    assert worst.endswith("b.md page 2")
    scores = json.loads(json_path.read_text(encoding="utf-8"))
    assert scores["pages"][0]["page"] == 2 and scores["pages"][0]["scores"]["headings"] == 1.0
    assert scores["pages"][0]["scores"]["tables"] < 1.0 and scores["pdfs"]["a.md"]["mean"] == 1.0
    page = html_path.read_text(encoding="utf-8")
    assert page.count('<img class="scan"') == 1 and "src=\"data:image/jpeg;base64," in page   # the page that differs
    assert "<del>the same </del><del>in both." in page and "<ins>read differently." in page
    assert "&lt;td&gt;<del>1995</del>" in page and "&lt;td&gt;<ins>1996</ins>" in page


def test_compare_says_what_is_wrong_with_its_arguments(tmp_path, capsys):
    assert compare.main([str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty"), str(tmp_path / "empty")]) == 2
    assert "no Markdown outputs" in capsys.readouterr().err
