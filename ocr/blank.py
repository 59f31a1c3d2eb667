"""Blank-page check: the PDF's own evidence first (text, drawings), then a noise-robust ink test over the
whole rendered page, so only pages with nothing a reader would miss skip inference (and hallucinations)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image

WORK_PIXELS = 1_000_000  # the check runs on a copy scaled to about this many pixels (keeps tall pages)
INK_CONTRAST = 36       # grey levels darker than the paper that count as ink: grey-0.75 text is 64 below
                        # white, faint pencil ~50; bleed-through on the blank book fixture stays under 30
NOISE_SIGMAS = 5        # ... or this many times the paper's grain, if that is more (grainy scans)
BLOB_SIDE = 7           # ink thicker than this (px at WORK_PIXELS) is a blob: a punched hole, a stain
LONG_RUN = 0.2          # straight ink longer than this share of the page side is a rule: a frame, a
                        # scanner edge, a fold; letters never are (underlined text keeps its letters)
CELL = 8                # ink is counted per CELL x CELL cell; a cell needs CELL_MIN_INK ink pixels, and
CELL_MIN_INK = 3        # touching inked cells make one mark (a word, a number, a speck)
MIN_MARK_INK = 20       # default: a mark with fewer ink pixels than this is dust. Measured at WORK_PIXELS:
                        # dust on the 1-bit law scan's blank pages <= 15, one 8-pt digit 21, "- 12 -" 66
CLEARLY_TEXT_CELLS = 2500  # more partly inked cells than this: a page of text (~5,000 on the fixtures'
                           # text pages), no need to weigh each mark; a frame or the rims of dark scanner
                           # edges fill ~500 (solid cells, blob interiors, do not count)


class BlankReason(str, Enum):
    """Why a page was called blank (the report's page details)."""
    EMPTY_PAGE = "empty page: no text, drawings or images"
    NO_INK = "no ink: its images hold only paper, grain, dust, edges or holes"


@dataclass(frozen=True)
class Verdict:
    blank: bool
    reason: BlankReason | None = None      # set when blank
    evidence: str = ""                     # what made it content: "text", "drawings", "ink"


def _grey(image: Image.Image) -> np.ndarray:
    grey = image.convert("L")
    scale = (WORK_PIXELS / (grey.width * grey.height)) ** 0.5
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.BOX)
    return np.asarray(grey)


def _shift_and(m: np.ndarray, n: int, axis: int) -> np.ndarray:
    """out[i] = m[i] & m[i+1] & ... & m[i+n-1] along axis (False past the end): log2(n) passes."""
    out, span = m.copy(), 1
    while span < n:
        step = min(span, n - span)
        a = np.moveaxis(out, axis, 0)
        a[:-step] &= a[step:]
        a[-step:] = False
        span += step
    return out


def _shift_or(m: np.ndarray, n: int, axis: int) -> np.ndarray:
    """out[i] = m[i] | m[i-1] | ... | m[i-n+1] along axis: each True spreads n-1 places on."""
    out, span = m.copy(), 1
    while span < n:
        step = min(span, n - span)
        a = np.moveaxis(out, axis, 0)
        a[step:] |= a[:-step].copy()
        span += step
    return out


def _shifted(m: np.ndarray, by: int, axis: int) -> np.ndarray:
    """m moved `by` places towards index 0 along axis (False where nothing comes in)."""
    out = np.zeros_like(m)
    src, dst = np.moveaxis(m, axis, 0), np.moveaxis(out, axis, 0)
    dst[:len(src) - by] = src[by:]
    return out


def _grain(grey: np.ndarray) -> float:
    """The paper's noise (a standard deviation), from neighbour differences: ink edges are too rare to
    move their median."""
    rows = grey[::max(1, grey.shape[0] // 256)].astype(np.int16)
    return float(np.median(np.abs(np.diff(rows, axis=1)))) * 1.05   # median |N(0, 2s^2)| = 0.95 s


def _majority3(m: np.ndarray) -> np.ndarray:
    """3x3 majority vote (a binary median): drops isolated specks, keeps strokes two pixels wide."""
    p = np.pad(m, 1).view(np.uint8)
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:-2] + rows[1:-1] + rows[2:]) >= 5


def _ink(grey: np.ndarray) -> np.ndarray:
    """Ink pixels: darker than the paper by the contrast, or by several times the grain on a grainy scan."""
    levels = np.bincount(grey[::2, ::2].ravel(), minlength=256).cumsum()
    paper = int(np.searchsorted(levels, 0.9 * levels[-1]))               # the 90th percentile
    contrast = max(INK_CONTRAST, NOISE_SIGMAS * _grain(grey))
    return _majority3(grey < paper - contrast)


def _without_blobs(ink: np.ndarray) -> np.ndarray:
    """Thin ink (strokes): solid blobs (holes, stains, dark scanner edges) and their rims removed."""
    grow = BLOB_SIDE + 4                                                   # back over the blob and its rim
    padded = np.pad(ink, grow)
    core = _shift_and(_shift_and(padded, BLOB_SIDE, 0), BLOB_SIDE, 1)    # a BLOB_SIDE square, all ink
    blobs = _shift_or(_shift_or(core, grow, 0), grow, 1)
    back = (grow - BLOB_SIDE) // 2                                         # centred on the blob again
    blobs = _shifted(_shifted(blobs, back, 0), back, 1)[grow:-grow, grow:-grow]
    return ink & ~blobs


def _long_runs(ink: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Pixels in a straight run of ink at least `length` long along axis."""
    if length > ink.shape[axis]:
        return np.zeros_like(ink)
    return _shift_or(_shift_and(ink, length, axis), length, axis)


def _without_rules(ink: np.ndarray) -> np.ndarray:
    """Ink without long straight lines across or down the page (a skewed line breaks into shorter runs,
    so the bar is a fifth of the side)."""
    h, w = ink.shape
    return ink & ~_long_runs(ink, max(8, int(w * LONG_RUN)), 1) & ~_long_runs(ink, max(8, int(h * LONG_RUN)), 0)


def _cell_ink(ink: np.ndarray) -> np.ndarray:
    h, w = ink.shape
    h, w = h - h % CELL, w - w % CELL
    counts = ink[:h, :w].reshape(h // CELL, CELL, w // CELL, CELL).sum(axis=(1, 3))
    return np.where(counts >= CELL_MIN_INK, counts, 0)


def _largest_mark(cells: np.ndarray) -> int:
    """Ink pixels of the biggest group of touching inked cells (8-neighbours)."""
    todo = {(int(y), int(x)) for y, x in zip(*np.nonzero(cells))}
    best = 0
    while todo:
        stack, total = [todo.pop()], 0
        while stack:
            y, x = stack.pop()
            total += int(cells[y, x])
            for n in ((y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
                if n in todo:
                    todo.remove(n)
                    stack.append(n)
        best = max(best, total)
    return best


def largest_mark(image: Image.Image) -> int:
    """Ink pixels (at WORK_PIXELS) of the page's biggest mark: thin ink that is not a long rule, over the
    whole page, margins too (page numbers are content). A page full of marks returns its ink."""
    ink = _ink(_grey(image))
    cells = _cell_ink(ink)
    if np.count_nonzero(cells < CELL * CELL * 3 // 4) - np.count_nonzero(cells == 0) > CLEARLY_TEXT_CELLS:
        return int(cells.sum())         # a page of text: the slower blob and rule removal cannot change that
    cells = _cell_ink(_without_rules(_without_blobs(ink)))
    return _largest_mark(cells)


def is_mostly_blank(image: Image.Image, min_mark: int = MIN_MARK_INK) -> bool:
    """True for blank and near-blank images (grain, dust, faint borders, a punched hole); False for any
    text, however faint or small."""
    return largest_mark(image) < min_mark


def _visible(colour) -> bool:
    return colour is not None and min(colour) < 0.95     # white on white draws nothing a reader sees


def page_content(page) -> str:
    """What the PDF page itself says it shows: "text", "drawings", "images" or "" (nothing)."""
    if page.get_text("text").strip():
        return "text"
    if any(_visible(d.get("fill")) or _visible(d.get("color")) for d in page.get_cdrawings()):
        return "drawings"
    return "images" if page.get_image_info() else ""


def check_page(page, image: Image.Image, min_mark: int = MIN_MARK_INK) -> Verdict:
    """Blank only if the page holds no text and no visible drawings, and its render (its images) has
    no mark beyond dust. min_mark 0: never blank."""
    if min_mark <= 0:
        return Verdict(False, evidence="blank check off")
    content = page_content(page)
    if content in ("text", "drawings"):
        return Verdict(False, evidence=content)
    if largest_mark(image) >= min_mark:
        return Verdict(False, evidence="ink")
    return Verdict(True, BlankReason.NO_INK if content else BlankReason.EMPTY_PAGE)
