"""What runaway pages produce, at small sizes: the output each adversarial shape of issue 17 gives (their
time is measured by bench/postprocess_bench.py, never asserted here), text that used to crash, and boxes
that cannot be on the page."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr.postprocess import COUNTER_NAMES, process_page
from ocr.runaway import verdict

MODES = ("clean", "grounded")
TOC = "\n".join(f"{n}.{k} Section {n}{k} heading {'.' * 120} {n * 10 + k}" for n in range(1, 4) for k in range(9))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("raw", "expected", "counters"),
    [
        pytest.param(" " * 3000 + "x", " " * 3000 + "x\n", {}, id="spaces-then-x"),
        pytest.param("=====\n" * 300, "", {"runaway_lines_dropped": 300}, id="rulers"),
        pytest.param("Intro\n" + "<table><tr><td>" * 200, "Intro\n", {"runaway_lines_dropped": 1},
                     id="table-tr-td-wall"),
        pytest.param("Intro\n<table>" + "<td>" * 600 + "</table>", "Intro\n", {"runaway_lines_dropped": 1},
                     id="td-wall"),
        pytest.param(TOC, TOC + "\n", {}, id="dot-leader-toc"),
        pytest.param("\n" * 5000 + "x" + "\n" * 5000, "x\n", {"blank_runs_collapsed": 2}, id="blank-lines"),
    ],
)
def test_adversarial_shapes(mode: str, raw: str, expected: str, counters: dict) -> None:
    assert process_page(raw, mode=mode) == (expected, counters)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("=====\n" * 300, "repeated_lines"), ("Intro\n" + "<table><tr><td>" * 200, "repeated_ngrams"),
     ("Intro\n<table>" + "<td>" * 600 + "</table>", "repeated_ngrams"), (TOC, None), (" " * 3000 + "x", None)],
)
def test_adversarial_verdicts(raw: str, reason: str | None) -> None:
    v = verdict(raw, "stop", 8192)
    assert (v.reason if v else None) == reason


# --- text that used to crash ---------------------------------------------------------------------------

PRIVATE_USE = "".join(map(chr, range(0xE000, 0xF900)))


@pytest.mark.parametrize("mode", MODES)
def test_every_private_use_code_point_is_text(mode: str) -> None:
    """The deletion mark used to be searched among them: StopIteration."""
    raw = f"{PRIVATE_USE}\n<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nword <|/det|>"
    out, _ = process_page(raw, mode=mode)
    assert PRIVATE_USE in out and "word" in out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("raw", "expected", "counters"),
    [
        pytest.param("Αθήνα \ud800 και \udfff.", "Αθήνα \ufffd και \ufffd.\n", {"surrogates_replaced": 2},
                     id="lone-surrogates"),
        pytest.param("a\x00b\x00\x00c\n\x01d\x1f\te\r", "abc\nd\te\n", {"control_chars_removed": 6},
                     id="nul-and-controls"),
    ],
)
def test_any_string_can_be_written(mode: str, raw: str, expected: str, counters: dict) -> None:
    out, found = process_page(raw, mode=mode)
    assert (out, found) == (expected, counters)
    out.encode("utf-8")                      # what write_atomic does


# --- boxes ---------------------------------------------------------------------------------------------

def test_impossible_box_is_dropped_in_grounded_mode() -> None:
    raw = ("<|ref|>image<|/ref|><|det|>[[1100, 50, 400, 80]]<|/det|>\n\n"
           "<|ref|>text<|/ref|><|det|>[[10, 20, 900, 40]], [[5, 900, 4, 950]]<|/det|>\nBody")
    out, counters = process_page(raw, mode="grounded")
    assert out == "<|ref|>text<|/ref|><|det|>[[10, 20, 900, 40]]<|/det|>\nBody\n"
    assert counters == {"boxes_dropped": 2}


def test_an_empty_box_stays_as_written() -> None:
    """Sample 15's `[[0, 0, 997, 0]]` is in range: kept in the Markdown, never cropped (grounding.usable)."""
    raw = "<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]<|/det|>\n0 0"
    assert process_page(raw, mode="grounded") == (raw + "\n", {})


COORD = st.integers(0, 1300) | st.integers(0, 10**12)
BLOCK = st.builds(lambda label, boxes, closed: f"<|ref|>{label}<|/ref|><|det|>"
                  + "[" + ", ".join(f"[{a}, {b}, {c}, {d}]" for a, b, c, d in boxes) + ("]<|/det|>" if closed else ""),
                  st.sampled_from(["text", "image", "table", "Words inside"]),
                  st.lists(st.tuples(COORD, COORD, COORD, COORD), min_size=1, max_size=3), st.booleans())
PAGE = st.lists(BLOCK | st.sampled_from(["\n", "\n\n", "Body text", "<|/det|>", "<|det|>", "[[1, 2"]),
                max_size=20).map("".join)
DET_RE = re.compile(r"<\|det\|>(.*?)<\|/det\|>", re.DOTALL)


@settings(max_examples=200, deadline=None)
@given(PAGE)
def test_no_box_outside_the_grid_survives_grounded_mode(raw: str) -> None:
    out, counters = process_page(raw, mode="grounded")
    for payload in DET_RE.findall(out):
        for box in re.findall(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]", payload):
            x1, y1, x2, y2 = map(int, box)
            assert max(x1, y1, x2, y2) <= 999 and x1 <= x2 and y1 <= y2
    assert process_page(out, mode="grounded") == (out, {})


WILD = st.text(st.characters(blacklist_categories=()), max_size=300) | st.lists(
    st.sampled_from(["\x00", "\ud800", "\udc00", "\x1b[31m", "\r\n", PRIVATE_USE[:50], "=====\n", "<td>", "<table>",
                     "<tr>", "</table>", " " * 50, "overline[[", "\n\n\n", "x"]), max_size=60).map("".join)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=150, deadline=None)
@given(WILD)
def test_any_text_is_writable_and_processing_idempotent(mode: str, raw: str) -> None:
    out, counters = process_page(raw, mode=mode)
    out.encode("utf-8")
    assert not re.search("[\x00-\x08\x0b-\x1f]", out)
    assert set(counters) <= set(COUNTER_NAMES)
    assert process_page(out, mode=mode) == (out, {})
