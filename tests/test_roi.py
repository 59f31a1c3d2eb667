"""ROI second pass: crop planning, merging the answers back in the model's order, saving crops."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ocr import postprocess
from ocr.grounding import parse_regions, to_pixels
from ocr.roi import (FREE_OCR, MARKDOWN, counters, merge, plan_crops, save_crops)
from conftest import shared

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "raw_outputs"
EOS = "<｜end▁of▁sentence｜>"


def block(label: str, box) -> str:
    return f"<|ref|>{label}<|/ref|><|det|>[[{box[0]}, {box[1]}, {box[2]}, {box[3]}]]<|/det|>"


# Two-column page, its regions in an order no box sort would give: the pass keeps the model's order.
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


# --- planning -------------------------------------------------------------------------------------------

def test_plan_keeps_the_models_order_and_crops_the_wanted_labels():
    img = image()
    crops = plan_crops(PAGE, img)
    assert [c.region.boxes[0] for c in crops] == [R1, TITLE, L2, TABLE, L1, FOOT, R2]
    assert [c.order for c in crops] == list(range(7))
    assert [c.reread for c in crops] == [True] * 5 + [False, True]     # page_footer is not re-read
    assert crops[5].image is None and crops[5].region.text == "7"
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


def test_merge_replaces_region_texts_in_the_models_order():
    crops = plan_crops(PAGE, image())
    new = {c.order: f"NEW {c.label} {c.order}" for c in crops}
    new[3] = "<table><tr><td>new</td></tr></table>" + EOS
    merged = merge([(c, new[c.order] if c.reread else None) for c in crops])
    regions = parse_regions(merged)
    assert [r.boxes[0] for r in regions] == [R1, TITLE, L2, TABLE, L1, FOOT, R2]
    assert [r.text for r in regions] == ["NEW text 0", "# NEW title 1", "NEW text 2",
                                         "<table><tr><td>new</td></tr></table>" + EOS, "NEW text 4", "7",
                                         "NEW text 6"]
    finished, _ = postprocess.grounded_output(merged)
    assert EOS not in finished and "# NEW title 1" in finished


@pytest.mark.parametrize("answer", [None, "", EOS, "\n".join(["same line over and over again"] * 30)])
def test_unusable_answers_keep_the_original(answer):
    crops = plan_crops(PAGE, image())
    merged = merge([(c, answer) for c in crops])
    assert merged == PAGE + "\n"                                  # as the model wrote it


def test_a_table_crop_answer_without_a_table_keeps_the_original():
    crops = plan_crops(PAGE, image())
    merged = merge(answers_for(crops, {"table": "Just some words."}))
    assert "<table><tr><td>old</td></tr></table>" in merged and "Just some words." not in merged
    merged = merge(answers_for(crops, {"table": "| a | b |\n|---|---|\n| 1 | 2 |"}))
    assert "| 1 | 2 |" in merged and "old" not in merged


def test_heading_marker_is_kept_unless_the_answer_has_one():
    crops = plan_crops(PAGE, image())
    assert parse_regions(merge(answers_for(crops, {"title": "Annual Report 2024"})))[1].text == \
        "# Annual Report 2024"
    assert parse_regions(merge(answers_for(crops, {"title": "## Annual"})))[1].text == "## Annual"


def real_pages() -> list[tuple[str, str]]:
    shared(RAW)
    return [(f.name, page) for f in sorted(RAW.glob("*.txt"))
            for page in f.read_text(encoding="utf-8").split("<--- Page Split --->") if page.strip()]


def test_a_pass_that_uses_no_answer_changes_no_real_page():
    """Every real output (malformed blocks, text inside refs, cut-off blocks): with no crop answer used,
    the finished page is the one the model's own answer gives, in both modes."""
    pages = real_pages()
    for name, page in pages:
        merged = merge([(c, None) for c in plan_crops(page, image(1240, 1754))])
        for mode in ("grounded", "clean"):
            assert postprocess.process_page(merged, mode=mode)[0] == \
                postprocess.process_page(page, mode=mode)[0], (name, mode)
    assert len(pages) > 25


def test_answers_replace_region_texts_but_keep_the_models_order_on_real_pages():
    """Centred headings and figures crossing a column gutter stay where the model put them (fixtures 07
    and 16), and what is not re-read, such as recognised text inside a ref (fixture 34), is kept."""
    key = lambda r: (r.label, r.boxes)                                          # noqa: E731
    reread = Counter()
    for name, page in real_pages():
        crops = plan_crops(page, image(1240, 1754))
        merged = merge([(c, f"NEW {c.order}" if c.reread else None) for c in crops])
        assert [key(r) for r in parse_regions(merged)] == [key(r) for r in parse_regions(page)], name
        assert all(f"NEW {c.order}" in merged for c in crops if c.reread and c.label != "table"), name
        if name.startswith("34_"):
            finished, _ = postprocess.grounded_output(merged)
            assert "latest chat, code, image, audio, video models and" in finished
        if name.startswith("24_"):
            reread.update((c.label, c.reread) for c in crops)
    assert reread[("image", True)] == 2 and reread[("image_caption", False)] == 2
    assert reread[("sub_title", True)] > 5 and reread[("text", True)] > 40


def test_counters():
    crops = plan_crops(PAGE, image(), max_crops=4)
    pairs = answers_for(crops, {"text": "A new paragraph.", "title": ""})
    assert counters(pairs) == {"roi_pages": 1, "roi_crops": 4, "roi_replaced": 2, "roi_kept_original": 2,
                               "roi_capped": 2}


# --- saving ---------------------------------------------------------------------------------------------

def test_save_crops_writes_only_reread_crops(tmp_path):
    crops = plan_crops(PAGE, image())
    paths = save_crops(crops, tmp_path / "doc_assets", page=3)
    assert [p.name for p in paths] == ["page-0003-roi-00-text.png", "page-0003-roi-01-title.png",
                                       "page-0003-roi-02-text.png", "page-0003-roi-03-table.png",
                                       "page-0003-roi-04-text.png", "page-0003-roi-06-text.png"]
    with Image.open(paths[3]) as saved:
        assert saved.size == crops[3].image.size
    assert sorted(p.name for p in (tmp_path / "doc_assets").iterdir()) == sorted(p.name for p in paths)
