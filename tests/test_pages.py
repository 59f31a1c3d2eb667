"""--pages specs, their combination with --max-pages, the selection line, and splitting Markdown by page."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from ocr.finish import assemble
from ocr.pages import (PageSpecError, canonical, compact, expand, parse_spec, select, selection_line,
                       split_markdown)
from ocr.records import PageResult, PageStatus


@pytest.mark.parametrize("spec, count, max_pages, expected", [
    ("1-5,10,20-", 22, None, [1, 2, 3, 4, 5, 10, 20, 21, 22]),
    ("3", 10, None, [3]),
    (" 2 - 4 , 9 ", 10, None, [2, 3, 4, 9]),
    ("5-", 7, None, [5, 6, 7]),
    ("20-", 7, None, []),                     # a range past the end selects nothing of a short PDF
    ("4-100", 6, None, [4, 5, 6]),
    ("1-3,2-5", 10, None, [1, 2, 3, 4, 5]),   # overlaps count once
    ("10,1", 10, None, [1, 10]),              # pages are read in page order
    (None, 4, None, [1, 2, 3, 4]),
    ("", 4, 2, [1, 2]),                       # --max-pages alone: the first K pages, as before
    ("10-", 30, 5, [10, 11, 12, 13, 14]),     # --max-pages caps the count of selected pages
    ("2,4,6,8", 10, 3, [2, 4, 6]),
])
def test_selected_pages(spec, count, max_pages, expected):
    assert select(parse_spec(spec), count, max_pages) == expected


@pytest.mark.parametrize("spec, says", [
    ("0-3", "counted from 1"),
    ("5-2", "'5-2' ends before it starts"),
    ("-4", "has no first page: write 1-4"),
    ("1,,3", "cannot read ''"),
    ("a-b", "cannot read 'a-b'"),
    ("1-2-3", "cannot read '1-2-3'"),
    ("1.5", "cannot read '1.5'"),
    ("-", "cannot read '-'"),
])
def test_bad_specs_say_what_is_wrong(spec, says):
    with pytest.raises(PageSpecError) as err:
        parse_spec(spec)
    assert says in str(err.value) and repr(spec) in str(err.value)


@pytest.mark.parametrize("pages, count, line", [
    ([1, 2, 3], 3, ""),
    ([1, 2], 3, "[[Pages 1-2 of 3 selected]]"),
    ([1, 2, 3, 5, 7, 8], 9, "[[Pages 1-3, 5, 7-8 of 9 selected]]"),
    ([4], 10, "[[Pages 4 of 10 selected]]"),
])
def test_selection_line(pages, count, line):
    assert selection_line(pages, count) == line


def _md(pages: list[int], count: int) -> str:
    """A PDF's Markdown as the runner writes it for a selection (selection line, real page numbers)."""
    results = [PageResult(p, PageStatus.OK, f"Text of page {p}.\n\nSecond paragraph.") for p in pages]
    line = selection_line(pages, count)
    parts = [line] if line else []
    parts += [r.text if r.page == 1 else f"----- Page {r.page} -----\n\n{r.text}" for r in results]
    return "\n\n".join(parts) + "\n"


def test_split_markdown_inverts_assemble():
    results = [PageResult(1, PageStatus.OK, "# Title\n\nIntro."), PageResult(2, PageStatus.BLANK, "[[Blank page]]"),
               PageResult(3, PageStatus.OK, "<table><tr><td>1</td></tr></table>")]
    split = split_markdown(assemble(results))
    assert split.pages == {1: "# Title\n\nIntro.", 2: "[[Blank page]]", 3: "<table><tr><td>1</td></tr></table>"}
    assert split.selected_of is None


def test_split_markdown_keeps_real_page_numbers_of_a_selection():
    split = split_markdown(_md([3, 4, 9], 12))
    assert sorted(split.pages) == [3, 4, 9] and split.selected_of == 12
    assert split.pages[9] == "Text of page 9.\n\nSecond paragraph."


@given(st.sets(st.integers(1, 60), min_size=1), st.integers(0, 40))
def test_compact_expand_round_trip(pages, extra):
    count = max(pages) + extra
    assert expand(compact(sorted(pages))) == sorted(pages)
    split = split_markdown(_md(sorted(pages), count))
    assert sorted(split.pages) == sorted(pages)
    assert split.selected_of == (None if sorted(pages) == list(range(1, count + 1)) else count)


_range = st.tuples(st.integers(1, 50), st.one_of(st.none(), st.integers(0, 30)))


@given(st.lists(_range, min_size=1, max_size=6), st.integers(0, 80), st.one_of(st.none(), st.integers(1, 20)))
def test_selection_properties(parts, count, max_pages):
    spec_text = ",".join(f"{a}-" if n is None else (f"{a}" if n == 0 else f"{a}-{a + n}") for a, n in parts)
    pages = select(parse_spec(spec_text), count, max_pages)
    assert pages == sorted(set(pages)) and all(1 <= p <= count for p in pages)
    if max_pages:
        assert len(pages) <= max_pages
    wanted = {p for a, n in parts for p in range(a, (count if n is None else a + n) + 1) if p <= count}
    assert pages == sorted(wanted)[:max_pages] if max_pages else pages == sorted(wanted)


# --- the runner with --pages (scripted engine double) ---------------------------------------------------
def _run(src, out, *extra, engine=None):
    from conftest import run_cli
    return run_cli(["--input-dir", str(src), "--output-dir", str(out), *extra], engine=engine)


def test_pages_selects_pages_and_the_markdown_keeps_their_numbers(tmp_path, inline_render):
    from doubles import ScriptedEngine
    from pdfgen import make_pdf, numbered_pages
    from conftest import load_report, pdf_entry
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "long.pdf", numbered_pages(12))
    engine = ScriptedEngine()
    assert _run(src, out, "--pages", "3-4,9", engine=engine) == 0
    assert sorted(p for _, p, _ in engine.log) == [3, 4, 9]
    md = (out / "long.md").read_text(encoding="utf-8")
    assert md.startswith("[[Pages 3-4, 9 of 12 selected]]\n\n----- Page 3 -----\n\n# Page 3")
    split = split_markdown(md)
    assert sorted(split.pages) == [3, 4, 9] and split.selected_of == 12
    assert pdf_entry(load_report(out), "long.pdf")["pages"] == 3


def test_pages_with_max_pages_and_the_resume_fingerprint(tmp_path, inline_render):
    from doubles import ScriptedEngine
    from pdfgen import make_pdf, numbered_pages
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "long.pdf", numbered_pages(10))
    runs = []
    for args in (["--pages", "5-", "--max-pages", "2"], ["--pages", "5-", "--max-pages", "2"], ["--pages", "5-"], []):
        engine = ScriptedEngine()
        assert _run(src, out, *args, engine=engine) == 0
        runs.append(sorted(p for _, p, _ in engine.log))
    assert runs == [[5, 6], [], [5, 6, 7, 8, 9, 10], list(range(1, 11))]
    assert not (out / "long.md").read_text(encoding="utf-8").startswith("[[")     # all pages: no selection line


def test_a_bad_pages_spec_is_a_usage_error(tmp_path, capsys):
    from pdfgen import make_pdf, numbered_pages
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(2))
    assert _run(src, out, "--pages", "5-2") == 2
    assert "--pages '5-2': '5-2' ends before it starts" in capsys.readouterr().err


@given(st.lists(_range, min_size=1, max_size=6), st.integers(0, 80))
def test_canonical_spelling_selects_the_same_pages(parts, count):
    spec = parse_spec(",".join(f"{a}-" if n is None else f"{a}-{a + n}" for a, n in parts))
    assert select(parse_spec(canonical(spec)), count) == select(spec, count)
    assert canonical(parse_spec(canonical(spec))) == canonical(spec)


def test_a_selection_past_the_end_of_a_short_pdf_skips_it_and_says_why(tmp_path, inline_render):
    from conftest import load_report, pdf_entry
    from doubles import ScriptedEngine
    from pdfgen import make_pdf, numbered_pages
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "short.pdf", numbered_pages(3))
    make_pdf(src / "long.pdf", numbered_pages(22))
    engine = ScriptedEngine()
    assert _run(src, out, "--pages", "20-25", engine=engine) == 0
    assert sorted(p for _, p, _ in engine.log) == [20, 21, 22]
    assert not (out / "short.md").exists()
    entry = pdf_entry(load_report(out), "short.pdf")
    assert entry["status"] == "skipped" and entry["error"] == "none of --pages 20-25 is in it (3 pages)"
