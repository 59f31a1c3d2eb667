"""Fast blank-page check on a rendered page, so blank scans skip inference (and hallucinations)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

WORK_PIXELS = 1_000_000  # the check runs on a copy scaled to about this many pixels (keeps tall pages)
MARGIN = 0.05           # scanner edges, binding shadows and borders live in the outer 5%
INK_CONTRAST = 70       # grey levels darker than the paper that count as ink (bleed-through is fainter)
BLOB_SIDE = 7           # ink thicker than this (px at WORK_PIXELS) is a blob: a punched hole, a stain
CELL = 8                # ink is counted per CELL x CELL cell ...
CELL_MIN_INK = 3        # ... and a cell needs this many ink pixels
MIN_INKED_CELLS = 3     # fewer inked cells than this: blank. One short word fills more.
CLEARLY_TEXT_CELLS = 400  # more than this before blob removal: a page of text (holes fill ~40 cells each);
                          # skipping the slow max/min filters keeps the check at a few ms per page


def _grey_interior(image: Image.Image) -> np.ndarray:
    grey = image.convert("L")
    scale = (WORK_PIXELS / (grey.width * grey.height)) ** 0.5
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.BOX)
    arr = np.asarray(grey)
    h, w = arr.shape
    dy, dx = int(h * MARGIN), int(w * MARGIN)
    return arr[dy:h - dy or None, dx:w - dx or None]


def _ink(grey: np.ndarray) -> tuple[np.ndarray, Image.Image]:
    """Ink pixels (darker than the paper), after a 3x3 median that drops isolated specks (scanner noise)
    but keeps strokes two pixels wide."""
    paper = np.percentile(grey, 90)
    mask = Image.fromarray((grey < paper - INK_CONTRAST).astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(3))
    return np.asarray(mask) > 0, mask


def _without_blobs(ink: np.ndarray, mask: Image.Image) -> np.ndarray:
    """Ink that belongs to thin strokes (text, rules): solid blobs removed."""
    blob_core = mask.filter(ImageFilter.MinFilter(BLOB_SIDE))            # survives only inside thick ink
    blobs = blob_core.filter(ImageFilter.MaxFilter(BLOB_SIDE + 4))        # grow back over the blob's rim
    return ink & (np.asarray(blobs) == 0)


def _linked_cells(ink: np.ndarray) -> int:
    h, w = ink.shape
    h, w = h - h % CELL, w - w % CELL
    if h == 0 or w == 0:
        return 0
    inked = ink[:h, :w].reshape(h // CELL, CELL, w // CELL, CELL).sum(axis=(1, 3)) >= CELL_MIN_INK
    # Letters make runs of neighbouring cells; dust makes lone cells. Count cells with an inked neighbour.
    padded = np.pad(inked, 1)
    neighbours = sum(np.roll(np.roll(padded, dy, 0), dx, 1)
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)[1:-1, 1:-1]
    return int((inked & (neighbours > 0)).sum())


def inked_cells(image: Image.Image) -> int:
    """How many CELL x CELL cells of the page interior hold thin ink and touch another such cell."""
    ink, mask = _ink(_grey_interior(image))
    cells = _linked_cells(ink)
    if cells < MIN_INKED_CELLS or cells > CLEARLY_TEXT_CELLS:
        return cells        # blob removal only lowers the count; it matters near the threshold only
    return _linked_cells(_without_blobs(ink, mask))


def is_mostly_blank(image: Image.Image) -> bool:
    """True for blank and near-blank pages (noise, faint borders, a punched hole); False for any text."""
    return inked_cells(image) < MIN_INKED_CELLS
