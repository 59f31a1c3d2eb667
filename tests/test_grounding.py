"""Grounding parser: regions from well-formed, malformed and truncated DeepSeek-OCR blocks."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr.grounding import (
    Region, format_boxes, is_layout_label, iter_blocks, parse_boxes, parse_regions, to_pixels, usable,
    valid_boxes,
)

BLOCK = "<|ref|>{label}<|/ref|><|det|>{coords}<|/det|>"


def block(label: str, *boxes: tuple[int, int, int, int]) -> str:
    return BLOCK.format(label=label, coords=format_boxes(boxes))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            block("title", (10, 20, 300, 40)) + "\n# Μελέτη της γλώσσας \n\n"
            + block("text", (10, 50, 900, 80)) + "\nΟ λόγος είναι σαφής.",
            [Region("title", ((10, 20, 300, 40),), "# Μελέτη της γλώσσας"),
             Region("text", ((10, 50, 900, 80),), "Ο λόγος είναι σαφής.")],
            id="two-blocks-greek",
        ),
        pytest.param(
            "<|ref|>image<|/ref|><|det|>[[1, 2, 3, 4], [5, 6, 7, 8]]<|/det|>",
            [Region("image", ((1, 2, 3, 4), (5, 6, 7, 8)), "")],
            id="one-ref-two-boxes",
        ),
        pytest.param(
            "<|ref|>equation<|/ref|>  \n<|det|> [[125, 264, 737, 311]]<|/det|>\n\\[ x^2 \\]",
            [Region("equation", ((125, 264, 737, 311),), "\\[ x^2 \\]")],
            id="whitespace-between-ref-and-det",
        ),
        pytest.param(
            "0 **0**\n\n<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]",
            [Region("", (), "0 **0**"), Region("text", ((0, 0, 997, 0),), "")],
            id="sample-15-unclosed-det-after-complete-box",
        ),
        pytest.param(
            "<|ref|>text<|/ref|><|det|>[[130, 322, 171, 329]]<|/det|>\n1. način:  \n\n"
            "<|ref|>text<|/ref|><|det|>[[520",
            [Region("text", ((130, 322, 171, 329),), "1. način:"), Region("text", (), "")],
            id="sample-22-cut-mid-coordinate",
        ),
        pytest.param(
            "<|/ref|><|det|>[[37, 48, 279, 140]]<|/det|>\n"
            "<|ref|>Deploy open-source models<|/ref|><|det|>[[42, 48, 857, 133]]<|/det|>\n"
            "<|ref|>latest chat, code<|/ref|><|det|>[[41, 291, 9",
            [Region("", ((37, 48, 279, 140),), ""),
             Region("Deploy open-source models", ((42, 48, 857, 133),), ""),
             Region("latest chat, code", (), "")],
            id="sample-34-text-inside-ref-orphan-closer-truncated",
        ),
        pytest.param(
            "<|ref|>equation<|/ref|><|det|>\\[ V = \\pi r^2 h \\]\n\n"
            + block("text", (115, 480, 710, 526)) + "\nf)",
            [Region("equation", (), "\\[ V = \\pi r^2 h \\]"),
             Region("text", ((115, 480, 710, 526),), "f)")],
            id="sample-01-det-without-coordinates",
        ),
        pytest.param(
            "<|ref|>equation<|/ref|><|det|>[underline[underline[underline",
            [Region("equation", (), "underline[underline[underline")],
            id="sample-01-garbage-coordinates",
        ),
        pytest.param(
            "<|ref|>tex", [Region("tex", (), "")], id="cut-inside-ref",
        ),
        pytest.param(
            "Intro paragraph.\n\n" + block("text", (1, 1, 2, 2)) + "\nBody<|/det|> text",
            [Region("", (), "Intro paragraph."), Region("text", ((1, 1, 2, 2),), "Body text")],
            id="leading-text-and-stray-closer",
        ),
        pytest.param("Plain text, no tags.", [Region("", (), "Plain text, no tags.")], id="no-tags"),
        pytest.param("", [], id="empty"),
    ],
)
def test_parse_regions(text: str, expected: list[Region]) -> None:
    assert parse_regions(text) == expected


@pytest.mark.parametrize(
    ("coords", "boxes"),
    [
        ("[[1, 2, 3, 4]]", ((1, 2, 3, 4),)),
        ("[[1,2,3,4],[5, 6 ,7,8]]", ((1, 2, 3, 4), (5, 6, 7, 8))),
        ("[[1, 2, 3, 4], [5, 6", ((1, 2, 3, 4),)),
        ("[[1200, 5, 1208, 9]]", ((1200, 5, 1208, 9),)),  # sample 37: values above 999 happen
        ("[[" + "9" * 5000 + ", 1, 2, 3]]", ()),  # int() of 5000 digits would raise
        ("__import__('os').system('x')", ()),  # never eval()
        ("[[1.5, 2, 3, 4]]", ()),
    ],
)
def test_parse_boxes(coords: str, boxes: tuple) -> None:
    assert parse_boxes(coords) == boxes


@pytest.mark.parametrize(
    ("box", "size", "pixels"),
    [
        ((0, 0, 999, 999), (1000, 500), (0, 0, 1000, 500)),
        ((499, 250, 500, 750), (999, 999), (499, 250, 500, 750)),
        ((100, 200, 300, 400), (1654, 2339), (165, 468, 496, 936)),
        ((1208, 10, 1200, 20), (800, 600), (800, 6, 800, 12)),  # beyond the grid: clamped
        ((900, 800, 100, 200), (999, 999), (100, 200, 900, 800)),  # inverted: reordered
        ((5, 5, 10, 10), (0, 0), (0, 0, 0, 0)),
    ],
)
def test_to_pixels(box, size, pixels) -> None:
    assert to_pixels(box, *size) == pixels


@pytest.mark.parametrize(
    ("label", "layout"),
    [("text", True), ("sub_title", True), ("image_caption", True), ("page_header", True),
     ("Deploy open-source models", False), ("smarterandfasterwithsimpleApls.Accessthe", False),
     ("Ελληνικά", False), ("", False)],
)
def test_is_layout_label(label: str, layout: bool) -> None:
    assert is_layout_label(label) is layout


def test_region_is_frozen() -> None:
    region = Region("text", ((1, 2, 3, 4),), "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        region.text = "y"  # type: ignore[misc]


def test_block_canonical_closes_a_cut_off_det() -> None:
    (found,) = iter_blocks("<|ref|>text<|/ref|>\n<|det|>[[0, 0, 997, 0]], [[3")
    assert not found.det_closed and found.gap == "\n"
    assert found.canonical() == "<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]<|/det|>"


coordinate = st.integers(0, 999)
raw_box_st = st.tuples(coordinate, coordinate, coordinate, coordinate)
# valid boxes (x1 <= x2, y1 <= y2): inverted ones are dropped since issue 17 (test_invalid_boxes_never_reach_regions)
box_st = raw_box_st.map(lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))
label_st = st.sampled_from(["title", "sub_title", "text", "table", "image", "image_caption"])
body_st = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="<|>"), max_size=40
).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(label_st, st.lists(box_st, min_size=1, max_size=3), body_st), max_size=8))
def test_parse_regions_round_trips_rendered_blocks(regions) -> None:
    text = "\n\n".join(block(label, *boxes) + "\n" + body for label, boxes, body in regions)
    assert parse_regions(text) == [Region(lb, tuple(bx), body) for lb, bx, body in regions]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parse_regions_never_raises(text: str) -> None:
    for region in parse_regions(text):
        assert all(len(box) == 4 for box in region.boxes)


tagged_text = st.lists(
    st.sampled_from(["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[", "]]", ", ", "1", "999",
                     "text", "\n", " ", "Ωμέγα"]),
    max_size=30,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(tagged_text)
def test_parse_regions_never_raises_on_tag_soup(text: str) -> None:
    regions = parse_regions(text)
    assert all("<|/ref|>" not in r.text and "<|/det|>" not in r.text for r in regions)


@settings(max_examples=200, deadline=None)
@given(box_st | st.tuples(*[st.integers(-5000, 5000)] * 4), st.integers(0, 5000), st.integers(0, 5000))
def test_to_pixels_stays_inside_the_image_and_ordered(box, width, height) -> None:
    x1, y1, x2, y2 = to_pixels(box, width, height)
    assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


# --- invalid boxes (issue 17): dropped, never a region's box ----------------------------------------

@pytest.mark.parametrize(
    ("coords", "valid", "dropped"),
    [
        ("[[1, 2, 3, 4]]", ((1, 2, 3, 4),), 0),
        ("[[1100, 50, 400, 80]]", (), 1),                       # x1 > 999 and x1 > x2
        ("[[10, 50, 400, 1000]]", (), 1),                       # y2 past the grid
        ("[[900, 800, 100, 200], [5, 6, 7, 8]]", ((5, 6, 7, 8),), 1),   # inverted
        ("[[0, 0, 997, 0]]", ((0, 0, 997, 0),), 0),             # empty: valid, not usable
        ("[[" + "9" * 5000 + ", 1, 2, 3]]", (), 1),
        ("[[1, 2, 3", (), 0),                                    # incomplete: not a box at all
    ],
)
def test_valid_boxes(coords: str, valid: tuple, dropped: int) -> None:
    assert valid_boxes(coords) == (valid, dropped)


def test_usable_boxes_have_an_area() -> None:
    assert usable(((0, 0, 997, 0), (5, 5, 5, 9), (1, 2, 3, 4))) == ((1, 2, 3, 4),)


def test_a_block_with_an_impossible_box_is_rewritten_without_it() -> None:
    (found,) = iter_blocks("<|ref|>image<|/ref|><|det|>[[1100, 50, 400, 80], [10, 20, 30, 40]]<|/det|>")
    assert found.boxes == ((10, 20, 30, 40),) and found.dropped_boxes == 1
    assert found.canonical() == "<|ref|>image<|/ref|><|det|>[[10, 20, 30, 40]]<|/det|>"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(label_st, st.lists(st.tuples(*[st.integers(0, 1500)] * 4), min_size=1, max_size=3)),
                max_size=6))
def test_invalid_boxes_never_reach_regions(regions) -> None:
    text = "\n\n".join(block(label, *boxes) + "\nbody" for label, boxes in regions)
    for region in parse_regions(text):
        assert all(max(b) <= 999 and b[0] <= b[2] and b[1] <= b[3] for b in region.boxes)
