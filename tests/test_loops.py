"""The one loop detector (ocr.loops): every shape of issue 17 on synthetic pages, what is kept (the first
genuine copy and its grounding block), what is left alone, and that the runaway verdict sees the same loops."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr import loops
from ocr.postprocess import drop_runaway_lines, process_page
from ocr.runaway import loop_lines, verdict

TAG = "<|ref|>{}<|/ref|><|det|>[[{}, 100, 900, 140]]<|/det|>"
MATRIX = "\\[\n\\begin{bmatrix}\nk_{11} & k_{12} \\\\\nk_{21} & k_{22}\n\\end{bmatrix}\n\\]"
INTRO = TAG.format("text", 10) + "\nThe stiffness matrix of the element reads\n\n"
EQUATION = TAG.format("equation", 20)
RECEIPT = "Subtotal: 38.00\nTax (8%): 3.04\nTotal: 41.04\nThank you!"
SENTENCE = "3. The tenant shall keep the premises in good repair at all times."
BASE = "The committee approved the annual budget for the coming year."
DRIFT = [BASE, BASE.replace("budget", "**budget**"), BASE.replace("budget", "bud get"),
         BASE.replace("budget", "budget budget budget")]


def matrix_page(copies: int) -> str:
    return INTRO + EQUATION + "\n" + "\n".join([MATRIX] * copies) + "\n\nEnd of the derivation."


def receipt(copies: int) -> str:
    return "Corner Cafe\n2 Coffee 7.00\n" + "\n".join([RECEIPT] * copies) + "\nVisit again"


def clauses(copies: int) -> str:
    others = [f"Clause {i}: the lease runs for {i + 1} years from the signing date." for i in range(copies)]
    return "\n\n".join(x for i in range(copies) for x in (SENTENCE, others[i]))


# --- each shape: what is left ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["clean", "grounded"])
def test_matrix_block_loop_keeps_the_first_matrix_and_its_layout_block(mode: str) -> None:
    out, counters = process_page(matrix_page(100), mode=mode)
    assert out.count("\\begin{bmatrix}") == 1 and MATRIX in out
    assert "The stiffness matrix of the element reads" in out and out.rstrip().endswith("End of the derivation.")
    assert counters["runaway_lines_dropped"] == 99 * 6
    if mode == "grounded":
        assert out.startswith(INTRO + EQUATION + "\n" + MATRIX)


def test_matrix_block_loop_is_a_runaway() -> None:
    v = verdict(matrix_page(100), "stop", 8192)
    assert v is not None and v.reason == "repeated_lines" and v.repeated_lines == 99 * 6


def test_drifting_copies_go_and_the_genuine_first_line_stays() -> None:
    page = "Minutes\n\n" + "\n\n".join(DRIFT[i % 4] for i in range(16)) + "\n\nSigned, the chair."
    out, counters = process_page(page, mode="clean")
    assert out == f"Minutes\n\n{BASE}\n\nSigned, the chair.\n"
    assert counters["runaway_lines_dropped"] == 15


@pytest.mark.parametrize("copies", [4, 6, 10])
def test_short_block_repeated_4_to_10_times_keeps_one_block(copies: int) -> None:
    out, counters = process_page(receipt(copies), mode="clean")
    assert out == "Corner Cafe\n2 Coffee 7.00\n" + RECEIPT + "\nVisit again\n"
    assert counters["runaway_lines_dropped"] == 4 * (copies - 1)
    assert verdict(receipt(copies), "stop", 8192).reason == "repeated_lines"


def test_ocr2_drifting_sentence_back_8_times_keeps_the_first_copy() -> None:
    page = "\n\n".join(x for i in range(8) for x in (DRIFT[i % 4], f"Item {i}: notes of the meeting, page {i}."))
    out, counters = process_page(page, mode="clean")
    assert out.count("committee") == 1 and out.startswith(BASE)
    assert all(f"Item {i}:" in out for i in range(8)) and counters["runaway_lines_dropped"] == 7


def test_sentences_that_differ_by_a_word_are_not_copies() -> None:
    clauses = [BASE.replace("budget", word) for word in ("plan", "report", "audit", "minutes", "agenda",
                                                           "charter", "roster", "schedule", "policy")]
    page = "\n\n".join(x for c in clauses for x in (c, "Approved by the chair."))
    assert drop_runaway_lines(page) == (page, 0)


def test_ocr2_sentence_back_8_times_keeps_one_copy_and_every_other_line() -> None:
    out, counters = process_page(clauses(8), mode="clean")
    assert out.count(SENTENCE) == 1 and out.startswith(SENTENCE)
    assert all(f"Clause {i}:" in out for i in range(8))
    assert counters["runaway_lines_dropped"] == 7
    assert verdict(clauses(8), "stop", 8192).reason == "repeated_lines"


@pytest.mark.parametrize("mode", ["clean", "grounded"])
def test_a_grounded_loop_of_markup_goes_whole(mode: str) -> None:
    """A unit with no page text (`<pre>` walls, sample 22): no copy is genuine."""
    loop = "\n\n".join(f"{TAG.format('text', 520 + i)}\n<pre> <pre> <pre></pre></pre>" for i in range(20))
    out, _ = process_page("(a) Ground truth image\n\n" + loop + "\n\n<|ref|>text<|/ref|><|det|>[[520", mode=mode)
    assert "<pre>" not in out and "[[520" not in out and out.startswith("(a) Ground truth image")


def test_rulers_wall_goes() -> None:
    out, counters = process_page("Report\n\n" + "=====\n" * 400, mode="clean")
    assert out == "Report\n" and counters["runaway_lines_dropped"] == 400


ROW = "<tr><td></td><td></td></tr>"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("Die Lösung der Aufgabe lautet " + "x = 1, " * 60 + "und so weiter.",
                     "Die Lösung der Aufgabe lautet x = 1, und so weiter.", id="prose-then-repeats"),
        pytest.param("<table><tr><td>Name</td><td>Wert</td></tr>" + ROW * 40 + "</table>",
                     "<table><tr><td>Name</td><td>Wert</td></tr>" + ROW + "</table>", id="table-rows-in-one-line"),
        pytest.param("Intro\n" + "overline[[overline][|| " * 40, "Intro", id="the-line-is-the-loop"),
    ],
)
def test_a_unit_repeated_inside_a_line_keeps_the_text_around_it(raw: str, expected: str) -> None:
    assert drop_runaway_lines(raw) == (expected, 1)
    assert verdict(raw, "stop", 8192).reason == "repeated_ngrams"


# --- what is not a loop ------------------------------------------------------------------------------

NOT_LOOPS = [
    pytest.param("\n".join(["Die Funktion f ist stetig auf dem Intervall."] * 9), id="nine-in-a-row"),
    pytest.param(receipt(3), id="block-three-times"),
    pytest.param(clauses(7), id="sentence-seven-times"),
    pytest.param("\n".join(f"Name:\nPerson {chr(65 + i)} Surname{i}" for i in range(12)), id="form-label-12"),
    pytest.param("\n".join(f"Figure {i}" for i in range(1, 40)), id="numbered-lines"),
    pytest.param("\n".join(f"| {i} | 0.{i:02d} | 1.00 |" for i in range(60)), id="numeric-rows"),
    pytest.param("\n".join(f"{n}.{k} Section {'.' * 300} {n * 10 + k}" for n in range(3) for k in range(9)),
                 id="dot-leaders"),
    pytest.param("\n\n".join(["<Tg>"] * 7 + ["<Tb>"] * 7 + ["NowPlayingContentChangedNotification"] * 7),
                 id="sample-12-repeats"),
]


@pytest.mark.parametrize("text", NOT_LOOPS)
def test_text_without_a_loop_is_unchanged(text: str) -> None:
    assert drop_runaway_lines(text) == (text, 0)
    assert loops.find_loops(text).loops == () and loop_lines(text) == 0


def test_find_loops_names_each_kind() -> None:
    page = receipt(6) + "\n\n" + clauses(9)
    kinds = sorted((loop.kind, loop.period) for loop in loops.find_loops(page).loops)
    assert kinds == [("block", 4), ("sentence", 1)]


# --- properties --------------------------------------------------------------------------------------

LINE = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd", "Zs", "Po")), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE, max_size=60))
def test_lines_that_never_repeat_are_never_touched(lines: list[str]) -> None:
    """Each line carries its own number: numbers are never drift, so no two lines are copies."""
    text = "\n".join(f"{line} {i}" for i, line in enumerate(lines))
    assert drop_runaway_lines(text) == (text, 0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([MATRIX, RECEIPT, SENTENCE, *DRIFT, "x", "", "<pre></pre>", "=====",
                                 TAG.format("text", 5)]), max_size=80),
       st.sampled_from(["clean", "grounded"]))
def test_loop_removal_is_idempotent(parts: list[str], mode: str) -> None:
    text = "\n".join(parts)
    once, _ = drop_runaway_lines(text)
    assert drop_runaway_lines(once) == (once, 0)
    out, _ = process_page(text, mode=mode)
    assert process_page(out, mode=mode) == (out, {})
