"""ROI second pass (`--roi-pass`, grounded runs): crop the page's table, title, paragraph (`text`) and
figure (`image`) regions, read each crop again, and rebuild the page from the region answers in reading
order. Pure functions, apart from `save_crops`.

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
- Reading order: a region spanning more than 55% of the page width ends a band; inside a band, regions
  fall into columns where their horizontal extents do not overlap (gutters); bands top to bottom, columns
  left to right, regions top to bottom (then left to right). Text before the first block stays first;
  other box-less regions stay after the region they followed, as their text alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from .grounding import Box, Region, format_boxes, parse_regions, to_pixels
from .runaway import is_empty, verdict

ROI_LABELS = ("table", "title", "sub_title", "text", "image")
FREE_OCR = "<image>\nFree OCR."
MARKDOWN = "<image>\nConvert the document to markdown."
PROMPTS = {"text": FREE_OCR, "title": FREE_OCR, "sub_title": FREE_OCR, "table": MARKDOWN, "image": MARKDOWN}
SPAN_FRACTION = 0.55          # a region wider than this share of the page is a band break
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


# --- reading order ----------------------------------------------------------------------------------

def _union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes))


def reading_order(boxes: Sequence[Box], page_width: int = 999) -> list[int]:
    """Indices of boxes in reading order (rule in the module docstring)."""
    spans = sorted((i for i, b in enumerate(boxes) if b[2] - b[0] > SPAN_FRACTION * page_width),
                   key=lambda i: (boxes[i][1], boxes[i][0]))
    span_tops = [boxes[i][1] for i in spans]
    bands: list[list[int]] = [[] for _ in range(len(spans) + 1)]
    for i, b in enumerate(boxes):
        if i not in spans:
            bands[sum(1 for top in span_tops if top <= b[1])].append(i)
    order: list[int] = []
    for k, band in enumerate(bands):
        for column in _columns(band, boxes):
            order.extend(sorted(column, key=lambda i: (boxes[i][1], boxes[i][0])))
        if k < len(spans):
            order.append(spans[k])
    return order


def _columns(band: list[int], boxes: Sequence[Box]) -> list[list[int]]:
    """Group a band's boxes into columns: runs of overlapping horizontal extents, left to right."""
    columns: list[list[int]] = []
    right = None
    for i in sorted(band, key=lambda i: (boxes[i][0], boxes[i][1])):
        if right is not None and boxes[i][0] < right:
            columns[-1].append(i)
            right = max(right, boxes[i][2])
        else:
            columns.append([i])
            right = boxes[i][2]
    return columns


# --- planning -----------------------------------------------------------------------------------------

def plan_crops(grounded_text: str, image: Image.Image, *, labels: Iterable[str] = ROI_LABELS,
               max_crops: int = MAX_CROPS) -> list[Crop]:
    """Every region of a grounded page in reading order; those of `labels` carry their crop."""
    wanted = set(labels)
    regions = parse_regions(grounded_text)
    boxed = [i for i, r in enumerate(regions) if r.boxes]
    ordered = _with_followers(regions, [boxed[j] for j in reading_order([_union(regions[i].boxes) for i in boxed])])
    width, height = image.size
    crops, taken = [], 0
    for order, i in enumerate(ordered):
        region = regions[i]
        if not region.boxes:
            crops.append(Crop(region.label, None, None, order, region))
            continue
        x1, y1, x2, y2 = to_pixels(_union(region.boxes), width, height)
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


def _with_followers(regions: Sequence[Region], boxed_order: list[int]) -> list[int]:
    """Box-less regions (text before the first block, a ref without boxes, a block cut off at the end)
    stay right after the region they followed in the model's answer."""
    followers: dict[int | None, list[int]] = {}
    previous = None
    for i, region in enumerate(regions):
        if region.boxes:
            previous = i
        else:
            followers.setdefault(previous, []).append(i)
    return followers.get(None, []) + [k for i in boxed_order for k in (i, *followers.get(i, []))]


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
    """The page's raw grounded text rebuilt from its regions in reading order: each original block
    (label and 0-999 boxes) followed by the chosen text. Feed it to finish_page(mode="grounded")."""
    parts = []
    for crop, answer in sorted(crops_with_texts, key=lambda pair: pair[0].order):
        text, _ = choose(crop, answer)
        region = crop.region
        if not region.boxes:          # no box to keep: its text alone (a cut-off block has none)
            parts.append(text)
            continue
        block = f"<|ref|>{region.label}<|/ref|><|det|>{format_boxes(region.boxes)}<|/det|>"
        parts.append(f"{block}\n{text}" if text else block)
    return "\n\n".join(p for p in parts if p).strip() + "\n"


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
