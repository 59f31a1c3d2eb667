"""--pages specs, their combination with --max-pages, the selection line, and splitting Markdown by page."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from ocr.finish import assemble
from ocr.pages import (PageSpecError, compact, expand, parse_spec, select, selection_line, split_markdown)
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
