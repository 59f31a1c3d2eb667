"""ROI second pass: reading order, crop planning, merging the answers back, saving crops."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from ocr import postprocess
from ocr.grounding import parse_regions, to_pixels
from ocr.roi import (FREE_OCR, MARKDOWN, counters, merge, plan_crops, reading_order, save_crops)

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "raw_outputs"
EOS = "<｜end▁of▁sentence｜>"


def block(label: str, box) -> str:
    return f"<|ref|>{label}<|/ref|><|det|>[[{box[0]}, {box[1]}, {box[2]}, {box[3]}]]<|/det|>"


# Two-column page, written by the model in a scrambled order.
TITLE, L1, L2, R1, R2, TABLE, FOOT = ((50, 30, 950, 80), (50, 100, 480, 300), (50, 320, 480, 500),
                                      (520, 100, 950, 250), (520, 270, 950, 500), (50, 520, 950, 700),
                                      (50, 950, 200, 970))
PAGE = "\n\n".join([
    f"{block('text', R1)}\nRight column, first paragraph.",
    f"{block('title', TITLE)}\n# Annual report",
    f"{block('text', L2)}\nLeft column, second paragraph.",
    f"{block('table', TABLE)}\n<table><tr><td>old</td></tr></table>",
    f"{block('text', L1)}\nLeft column, first paragraph.",
    f"{block('page_footer', FOOT)}\n7",
    f"{block('text', R2)}\nRight column, second paragraph.",
])


def image(w: int = 1000, h: int = 1400) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    for x in range(0, w, 7):                        # a pattern, so each crop's content is checkable
        for y in range(0, h, 11):
            img.putpixel((x, y), (x % 256, y % 256, 0))
    return img


# --- reading order --------------------------------------------------------------------------------------

def test_two_columns_between_full_width_blocks():
    boxes = [R1, TITLE, L2, TABLE, L1, FOOT, R2]
    assert [boxes[i] for i in reading_order(boxes)] == [TITLE, L1, L2, R1, R2, TABLE, FOOT]


def test_single_column_is_top_to_bottom():
    boxes = [(100, 500, 800, 520), (100, 100, 800, 120), (100, 300, 800, 320)]
    assert reading_order(boxes) == [1, 2, 0]


def test_side_by_side_blocks_in_one_row_read_left_to_right():
    boxes = [(600, 100, 900, 200), (100, 100, 400, 200)]
    assert reading_order(boxes) == [1, 0]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 900), st.integers(0, 900), st.integers(1, 99), st.integers(1, 99)),
                max_size=25))
def test_reading_order_is_a_permutation(raw_boxes):
    boxes = [(x, y, x + w, y + h) for x, y, w, h in raw_boxes]
    assert sorted(reading_order(boxes)) == list(range(len(boxes)))


# --- planning -------------------------------------------------------------------------------------------

def test_plan_orders_regions_and_crops_the_wanted_labels():
    img = image()
    crops = plan_crops(PAGE, img)
    assert [c.region.boxes[0] for c in crops] == [TITLE, L1, L2, R1, R2, TABLE, FOOT]
    assert [c.order for c in crops] == list(range(7))
    assert [c.reread for c in crops] == [True] * 6 + [False]          # page_footer is not re-read
    assert crops[-1].image is None and crops[-1].region.text == "7"
    assert {c.label: c.prompt for c in crops if c.reread} == {"title": FREE_OCR, "text": FREE_OCR,
                                                             "table": MARKDOWN}


def test_crop_box_is_the_region_in_pixels_with_a_margin():
    img = image()
    table = next(c for c in plan_crops(PAGE, img) if c.label == "table")
    x1, y1, x2, y2 = to_pixels(TABLE, *img.size)
    assert table.box == (x1 - 10, y1 - 14, x2 + 10, y2 + 14)          # 1% of 1000 x 1400
    assert table.image.size == (table.box[2] - table.box[0], table.box[3] - table.box[1])
    assert table.image.getpixel((0, 0)) == img.getpixel(table.box[:2])


def test_margin_is_clamped_to_the_page():
    crops = plan_crops(block("text", (0, 0, 999, 999)) + "\nall", image(300, 200))
    assert crops[0].box == (0, 0, 300, 200)


def test_tiny_regions_and_the_cap_keep_their_text():
    text = PAGE + "\n\n" + block("text", (500, 980, 501, 981)) + "\nspeck"
    crops = plan_crops(text, image(), max_crops=3)
    speck = next(c for c in crops if c.region.text == "speck")
    assert not speck.reread and not speck.capped
    assert sum(c.reread for c in crops) == 3 and sum(c.capped for c in crops) == 3


def test_text_before_the_first_block_stays_first():
    crops = plan_crops("Lead line.\n\n" + PAGE, image())
    assert crops[0].region.text == "Lead line." and crops[0].box is None and not crops[0].reread


def test_boxless_regions_stay_where_they_were_as_plain_text():
    """A block cut off at --max-tokens (no complete box) stays last and writes no empty layout block;
    the page keeps what the post-processing of the original would keep."""
    cut = PAGE + "\n\n" + block("text", (50, 980, 400, 990)) + "\nTail line.\n\n<|ref|>text<|/ref|><|det|>[[100, 320, 9"
    crops = plan_crops(cut, image())
    assert crops[-1].box is None and not crops[-1].reread
    assert crops[-2].region.text == "Tail line."
    merged = merge([(c, "new text" if c.reread else None) for c in crops])
    assert "<|det|>[]" not in merged and "<|ref|><|/ref|>" not in merged
    finished, _ = postprocess.grounded_output(merged)
    assert "<|det|>[]" not in finished and finished.rstrip().endswith("new text")


def test_labels_are_configurable():
    crops = plan_crops(PAGE, image(), labels=("table",))
    assert [c.label for c in crops if c.reread] == ["table"]


# --- merging --------------------------------------------------------------------------------------------

def answers_for(crops, mapping):
    return [(c, mapping.get(c.label) if c.reread else None) for c in crops]


def test_merge_replaces_region_texts_in_reading_order():
    crops = plan_crops(PAGE, image())
    new = {c.order: f"NEW {c.label} {c.order}" for c in crops}
    new[5] = "<table><tr><td>new</td></tr></table>" + EOS
    merged = merge([(c, new[c.order] if c.reread else None) for c in crops])
    regions = parse_regions(merged)
    assert [r.boxes[0] for r in regions] == [TITLE, L1, L2, R1, R2, TABLE, FOOT]
    assert [r.text for r in regions] == ["# NEW title 0", "NEW text 1", "NEW text 2", "NEW text 3",
                                         "NEW text 4", "<table><tr><td>new</td></tr></table>" + EOS, "7"]
    finished, _ = postprocess.grounded_output(merged)
    assert EOS not in finished and "# NEW title 0" in finished


@pytest.mark.parametrize("answer", [None, "", EOS, "\n".join(["same line over and over again"] * 30)])
def test_unusable_answers_keep_the_original(answer):
    crops = plan_crops(PAGE, image())
    merged = merge([(c, answer) for c in crops])
    assert [r.text for r in parse_regions(merged)] == [
        "# Annual report", "Left column, first paragraph.", "Left column, second paragraph.",
        "Right column, first paragraph.", "Right column, second paragraph.",
        "<table><tr><td>old</td></tr></table>", "7"]


def test_a_table_crop_answer_without_a_table_keeps_the_original():
    crops = plan_crops(PAGE, image())
    merged = merge(answers_for(crops, {"table": "Just some words."}))
    assert "<table><tr><td>old</td></tr></table>" in merged and "Just some words." not in merged
    merged = merge(answers_for(crops, {"table": "| a | b |\n|---|---|\n| 1 | 2 |"}))
    assert "| 1 | 2 |" in merged and "old" not in merged


def test_heading_marker_is_kept_unless_the_answer_has_one():
    crops = plan_crops(PAGE, image())
    assert parse_regions(merge(answers_for(crops, {"title": "Annual Report 2024"})))[0].text == \
        "# Annual Report 2024"
    assert parse_regions(merge(answers_for(crops, {"title": "## Annual"})))[0].text == "## Annual"


def test_merge_of_real_pages_without_answers_keeps_every_region():
    path = RAW / "24_official-pdf-runner-det-mmd-6pages-en.txt"
    if not path.exists():
        pytest.skip(f"raw outputs not found at {RAW}")
    pages = [p for p in path.read_text(encoding="utf-8").split("<--- Page Split --->") if p.strip()]
    key = lambda r: (r.label, r.boxes, r.text)                                  # noqa: E731
    reread = Counter()
    for page in pages:
        crops = plan_crops(page, image(1240, 1754))
        merged = merge([(c, None) for c in crops])
        assert Counter(map(key, parse_regions(merged))) == Counter(map(key, parse_regions(page)))
        reread.update((c.label, c.reread) for c in crops)
    assert len(pages) == 6
    assert reread[("image", True)] == 2 and reread[("image_caption", False)] == 2
    assert reread[("sub_title", True)] > 5 and reread[("text", True)] > 40


def test_counters():
    crops = plan_crops(PAGE, image(), max_crops=4)
    pairs = answers_for(crops, {"text": "A new paragraph.", "title": ""})
    assert counters(pairs) == {"roi_pages": 1, "roi_crops": 4, "roi_replaced": 3, "roi_kept_original": 1,
                               "roi_capped": 2}


# --- saving ---------------------------------------------------------------------------------------------

def test_save_crops_writes_only_reread_crops(tmp_path):
    crops = plan_crops(PAGE, image())
    paths = save_crops(crops, tmp_path / "doc_assets", page=3)
    assert [p.name for p in paths] == ["page-0003-roi-00-title.png", "page-0003-roi-01-text.png",
                                       "page-0003-roi-02-text.png", "page-0003-roi-03-text.png",
                                       "page-0003-roi-04-text.png", "page-0003-roi-05-table.png"]
    with Image.open(paths[-1]) as saved:
        assert saved.size == crops[5].image.size
    assert sorted(p.name for p in (tmp_path / "doc_assets").iterdir()) == sorted(p.name for p in paths)
