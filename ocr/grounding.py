"""Parse DeepSeek-OCR grounding blocks (`<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`)
into regions, tolerating the malformed and truncated blocks real output contains."""

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

Box = tuple[int, int, int, int]

REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"
GROUNDING_TAGS = (REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE)

# Layout labels the model writes inside <|ref|>; anything else there is recognised text
# (the "<|grounding|>OCR this image." style, where the text sits inside the ref).
LAYOUT_LABELS = frozenset({
    "title", "sub_title", "text", "table", "table_caption", "table_footnote", "image",
    "image_caption", "equation", "figure", "figure_caption", "formula", "code", "list",
    "header", "footer", "page_number", "footnote", "caption", "reference", "abstract",
})
_SNAKE_LABEL_RE = re.compile(r"[a-z]+(?:_[a-z]+)+")

_NO_TAG = r"(?:(?!<\|).)"  # any character that does not start a <|...|> tag
_BLOCK_RE = re.compile(
    r"(?=<\|(?:ref|det)\|>)"
    rf"(?:<\|ref\|>(?P<label>{_NO_TAG}*?)(?:(?P<ref_close><\|/ref\|>)|(?=<\|)|\Z))?"
    r"(?:(?P<gap>\s*)<\|det\|>"
    rf"(?:(?P<coords>{_NO_TAG}*?)(?P<det_close><\|/det\|>)|(?P<partial>[\d \t,\[\]]*)))?",
    re.DOTALL,
)
# At most 9 digits: int() of a huge digit run would raise (and no real box needs more).
_BOX_RE = re.compile(r"\[\s*(\d{1,9})\s*,\s*(\d{1,9})\s*,\s*(\d{1,9})\s*,\s*(\d{1,9})\s*\]")
_ANY_BOX_RE = re.compile(r"\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]")
MAX_COORD = 999               # DeepSeek-OCR writes coordinates as int(v / 999 * 1000)-style 0-999 values
_STRAY_CLOSE_RE = re.compile(r"<\|/(?:ref|det)\|>")


@dataclass(frozen=True)
class Region:
    """One grounded block: its label, its valid boxes (0-999 normalised, `valid_boxes`) and the text after it.
    `head` and `raw` are the block and the whole region as the model wrote them (malformed or not)."""

    label: str
    boxes: tuple[Box, ...]
    text: str
    head: str = field(default="", compare=False, repr=False)
    raw: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Block:
    """A grounding block as found in raw text, well-formed or not."""

    start: int
    end: int
    label: str | None  # None: a bare <|det|> with no <|ref|> before it
    ref_closed: bool
    has_det: bool
    det_closed: bool
    gap: str  # whitespace between <|/ref|> and <|det|> (the official regex rejects any)
    boxes: tuple[Box, ...]  # the valid ones (`valid_boxes`)
    coords: str  # the text between <|det|> and <|/det|>, or the partial coordinates
    dropped_boxes: int = 0  # complete boxes that are not valid

    @property
    def well_formed(self) -> bool:
        return self.has_det and self.det_closed and (self.label is None or self.ref_closed)

    def canonical(self) -> str:
        """The block as the model writes it when nothing went wrong."""
        coords = self.coords if self.det_closed and not self.dropped_boxes else format_boxes(self.boxes)
        ref = "" if self.label is None else f"{REF_OPEN}{self.label}{REF_CLOSE}"
        return f"{ref}{DET_OPEN}{coords}{DET_CLOSE}"


def is_layout_label(label: str) -> bool:
    """True for a layout label (`text`, `sub_title`), False for recognised text inside a ref."""
    label = label.strip()
    return label in LAYOUT_LABELS or bool(_SNAKE_LABEL_RE.fullmatch(label))


def parse_boxes(coords: str) -> tuple[Box, ...]:
    """Every complete `[x1, y1, x2, y2]` in a det payload as written, in range or not; incomplete ones are
    skipped. What may be used as a box is `valid_boxes`."""
    return tuple(
        (int(a), int(b), int(c), int(d)) for a, b, c, d in _BOX_RE.findall(coords)
    )


def valid_boxes(coords: str) -> tuple[tuple[Box, ...], int]:
    """The boxes of a det payload that can be on the page, and how many complete ones were not.

    Dropped, not clamped: a coordinate above MAX_COORD (or of 10+ digits) or an inverted box
    (x1 > x2 or y1 > y2) means the model lost its place, and a clamped `[[1100, 50, 400, 80]]`
    would crop a part of the page it never pointed at. An empty box (x1 == x2 or y1 == y2, in
    range: sample 15's `[[0, 0, 997, 0]]`) is valid here, as the model wrote it, but not `usable`
    for a crop or a figure link.
    """
    boxes, dropped = [], 0
    for m in _ANY_BOX_RE.finditer(coords):
        values = re.findall(r"\d+", m.group(0))
        if any(len(v) > 3 for v in values):
            dropped += 1
            continue
        x1, y1, x2, y2 = map(int, values)
        if max(x1, y1, x2, y2) > MAX_COORD or x1 > x2 or y1 > y2:
            dropped += 1
        else:
            boxes.append((x1, y1, x2, y2))
    return tuple(boxes), dropped


def usable(boxes: tuple[Box, ...]) -> tuple[Box, ...]:
    """The boxes with an area: the only ones crops and figure links use."""
    return tuple(b for b in boxes if b[0] < b[2] and b[1] < b[3])


def format_boxes(boxes: tuple[Box, ...]) -> str:
    return "[" + ", ".join(f"[{a}, {b}, {c}, {d}]" for a, b, c, d in boxes) + "]"


def iter_blocks(text: str) -> Iterator[Block]:
    """Every grounding block in text, in order, including truncated and malformed ones."""
    for m in _BLOCK_RE.finditer(text):
        has_det = m.group("gap") is not None
        coords = m.group("coords") if m.group("det_close") else (m.group("partial") or "")
        boxes, dropped = valid_boxes(coords) if has_det else ((), 0)
        yield Block(
            start=m.start(),
            end=m.end(),
            label=m.group("label"),
            ref_closed=m.group("ref_close") is not None,
            has_det=has_det,
            det_closed=m.group("det_close") is not None,
            gap=m.group("gap") or "",
            boxes=boxes,
            coords=coords,
            dropped_boxes=dropped,
        )


def parse_regions(text: str) -> list[Region]:
    """Regions of a grounded page; never raises.

    A region's text runs from the end of its block to the start of the next block,
    stripped, with stray closing tags removed. Non-blank text before the first block
    becomes a region with label "" and no boxes, so no page text is lost.
    """
    blocks = list(iter_blocks(text))
    regions = []
    lead_raw = text[: blocks[0].start if blocks else len(text)]
    lead = _region_text(lead_raw)
    if lead:
        regions.append(Region("", (), lead, "", lead_raw))
    for block, nxt in zip(blocks, blocks[1:] + [None]):
        end = nxt.start if nxt else len(text)
        regions.append(Region((block.label or "").strip(), block.boxes, _region_text(text[block.end : end]),
                              text[block.start : block.end], text[block.start : end]))
    return regions


def _region_text(body: str) -> str:
    return _STRAY_CLOSE_RE.sub("", body).strip()


def to_pixels(box: Box, width: int, height: int) -> Box:
    """A 0-999 normalised box in pixels: int(v / 999 * size), clamped to the image, ordered."""
    x1, y1, x2, y2 = (
        min(max(int(v / 999 * size), 0), max(size, 0))
        for v, size in zip(box, (width, height, width, height))
    )
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)
