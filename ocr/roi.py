"""ROI second pass (`--roi-pass`, grounded runs): crop the page's table, title, paragraph (`text`) and
figure (`image`) regions, read each crop again, and rebuild the page from the region answers in the
page's reading order. Pure functions, apart from `save_crops`.

Flow for one page: `plan_crops(raw_page_text, page_image)` gives every region of the page in reading
order, each a `Crop`; those with an `image` are sent to the engine with `crop.prompt`; then
`merge([(crop, answer_or_None), ...])` gives the page's new raw grounded text (the original blocks, each
followed by its new text), which goes through the usual `finish_page(..., mode="grounded")`.

Decisions:
- Prompts: `<image>\\nFree OCR.` for `text`, `title` and `sub_title` crops (DeepSeek-OCR's prompt for
  plain text: a paragraph needs no layout, and the markdown prompt on a lone paragraph tends to invent
  headings); `<image>\\nConvert the document to markdown.` for `table` (HTML table markup) and `image`
  (reads the text inside a figure). No `<|grounding|>`: the region already has its box.
- A crop is cut from the page image around the region's boxes (their union when there are several) with
  a margin of 1% of the page side (at least 4 px) so edge glyphs are whole; vLLM scales a small crop up
  into its 1024 global view, which is the point of the pass. Regions smaller than 8 px either way are not
  re-read, nor those beyond `max_crops`.
- Merge keeps the original text of a region when the crop's answer is missing, empty or a runaway
  (`ocr.runaway.verdict`), or when a table crop's answer holds no table. A title keeps its Markdown
  heading marker (`## `) when the Free OCR answer has none.
- Reading order is the model's: DeepSeek-OCR writes a page's regions in reading order, and a geometric
  re-sort (bands and columns from the boxes) put centred headings and figures that cross a gutter in the
  wrong place on real pages. A region whose answer is not used, and every region without boxes (text
  before the first block, a ref without a det, a block cut off at the end), is written back exactly as
  the model wrote it, so a pass that uses no answer changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from .grounding import Box, Region, parse_regions, to_pixels, usable
from .runaway import is_empty, verdict

ROI_LABELS = ("table", "title", "sub_title", "text", "image")
FREE_OCR = "<image>\nFree OCR."
MARKDOWN = "<image>\nConvert the document to markdown."
PROMPTS = {"text": FREE_OCR, "title": FREE_OCR, "sub_title": FREE_OCR, "table": MARKDOWN, "image": MARKDOWN}
MARGIN_FRACTION, MIN_MARGIN_PX = 0.01, 4
MIN_CROP_PX = 8
MAX_CROPS = 48                # per page
# Counter names (PageResult.counters; the run report sums them).
COUNTERS = (
    "roi_pages",                  # pages that went through the pass
    "roi_crops",                  # crops read again
    "roi_replaced",               # regions whose text the crop's answer replaced
    "roi_kept_original",          # crops read again whose answer was not used
    "roi_capped",                 # regions not re-read: beyond max_crops per page
)

_HEADING_RE = re.compile(r"\A(#{1,6}) ")
_TABLE_RE = re.compile(r"<table\b|^\s*\|.*\|\s*$", re.IGNORECASE | re.MULTILINE)
_UNSAFE_RE = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class Crop:
    """One region of the page, in reading order. `image` is None when the region is not re-read
    (its label is not in the pass, it is too small or over the cap); merge then keeps its text."""
    label: str
    box: Box | None               # pixels in the page image, margin included; None without boxes
    image: Image.Image | None
    order: int
    region: Region                # the original region: label, 0-999 boxes, text
    prompt: str | None = None
    capped: bool = False

    @property
    def reread(self) -> bool:
        return self.image is not None


def _union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes))


# --- planning -----------------------------------------------------------------------------------------

def plan_crops(grounded_text: str, image: Image.Image, *, labels: Iterable[str] = ROI_LABELS,
               max_crops: int = MAX_CROPS) -> list[Crop]:
    """Every region of a grounded page in the model's order; those of `labels` carry their crop."""
    wanted = set(labels)
    width, height = image.size
    crops, taken = [], 0
    for order, region in enumerate(parse_regions(grounded_text)):
        boxes = usable(region.boxes)          # never an impossible or empty box (grounding.valid_boxes)
        if not boxes:
            crops.append(Crop(region.label, None, None, order, region))
            continue
        x1, y1, x2, y2 = to_pixels(_union(boxes), width, height)
        big_enough = x2 - x1 >= MIN_CROP_PX and y2 - y1 >= MIN_CROP_PX
        box = _with_margin((x1, y1, x2, y2), width, height)
        if region.label not in wanted or not big_enough:
            crops.append(Crop(region.label, box, None, order, region))
        elif taken >= max_crops:
            crops.append(Crop(region.label, box, None, order, region, capped=True))
        else:
            taken += 1
            crops.append(Crop(region.label, box, image.crop(box), order, region,
                              prompt=PROMPTS.get(region.label, MARKDOWN)))
    return crops


def _with_margin(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    mx = max(MIN_MARGIN_PX, int(MARGIN_FRACTION * width))
    my = max(MIN_MARGIN_PX, int(MARGIN_FRACTION * height))
    return max(0, x1 - mx), max(0, y1 - my), min(width, x2 + mx), min(height, y2 + my)


# --- merging ------------------------------------------------------------------------------------------

def choose(crop: Crop, answer: str | None) -> tuple[str, bool]:
    """The region's text in the merged page, and whether the crop's answer replaced the original."""
    original = crop.region.text
    if not crop.reread or answer is None or is_empty(answer) or verdict(answer, None, 0) is not None:
        return original, False
    text = answer.strip()
    if crop.label == "table" and not _TABLE_RE.search(text):
        return original, False
    heading = _HEADING_RE.match(original)
    if heading and not _HEADING_RE.match(text):
        text = f"{heading.group(1)} {text}"
    return text, True


def merge(crops_with_texts: Iterable[tuple[Crop, str | None]]) -> str:
    """The page's raw grounded text rebuilt from its regions in order: each region as the model wrote
    it, or its original block followed by the crop's answer where that replaced the region's text.
    Feed it to finish_page(mode="grounded")."""
    parts = []
    for crop, answer in sorted(crops_with_texts, key=lambda pair: pair[0].order):
        text, replaced = choose(crop, answer)
        raw = crop.region.raw
        gap = raw[len(raw.rstrip()):] or "\n\n"        # the original spacing before the next region
        parts.append(f"{crop.region.head}\n{text}{gap}" if replaced else raw)
    return "".join(parts).strip() + "\n"


def counters(crops_with_texts: Iterable[tuple[Crop, str | None]]) -> dict[str, int]:
    """The page's ROI counters (names in COUNTERS), non-zero only."""
    out = {"roi_pages": 1}
    for crop, answer in crops_with_texts:
        if crop.capped:
            out["roi_capped"] = out.get("roi_capped", 0) + 1
        if not crop.reread:
            continue
        out["roi_crops"] = out.get("roi_crops", 0) + 1
        key = "roi_replaced" if choose(crop, answer)[1] else "roi_kept_original"
        out[key] = out.get(key, 0) + 1
    return out


def save_crops(crops: Iterable[Crop], folder: Path, page: int) -> list[Path]:
    """Write the re-read crops as `page-NNNN-roi-OO-label.png` in `folder` (normally <stem>_assets/)."""
    from .assets import save_png

    paths = []
    for crop in crops:
        if crop.image is None:
            continue
        label = _UNSAFE_RE.sub("-", crop.label.lower()).strip("-") or "region"
        paths.append(save_png(crop.image, Path(folder) / f"page-{page:04d}-roi-{crop.order:02d}-{label}.png"))
    return paths
