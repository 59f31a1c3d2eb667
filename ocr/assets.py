"""Optional files beside the Markdown: page images and grounded figure/table crops in <stem>_assets/."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from .grounding import Region, parse_regions, to_pixels, usable, valid_boxes

CROP_LABELS = ("image", "table")
_IMAGE_BLOCK_RE = re.compile(r"<\|ref\|>image<\|/ref\|><\|det\|>((?:(?!<\|).)*)<\|/det\|>", re.DOTALL)


def assets_dir(md_path: Path) -> Path:
    return md_path.with_name(md_path.stem + "_assets")


def save_png(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    image.save(tmp, format="PNG")
    tmp.replace(path)             # atomic: a killed run never leaves a half-written image
    return path


def page_image_path(md_path: Path, page: int) -> Path:
    return assets_dir(md_path) / f"page-{page:04d}.png"


def save_crops(image: Image.Image, raw_text: str, md_path: Path, page: int) -> dict[str, list[str]]:
    """Crop the figure and table regions of a grounded page; returns label -> relative paths, in order.

    One crop for each usable box (`grounding.usable`: valid, with an area; never an impossible or empty
    box) and only for those, at least 1 px a side, so `link_figures` can pair links with boxes."""
    saved: dict[str, list[str]] = {}
    regions: list[Region] = [r for r in parse_regions(raw_text) if r.label in CROP_LABELS]
    width, height = image.size
    for region in regions:
        for box in usable(region.boxes):
            x1, y1, x2, y2 = to_pixels(box, width, height)
            x1, y1 = min(x1, max(width - 1, 0)), min(y1, max(height - 1, 0))
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            n = len(saved.get(region.label, [])) + 1
            path = save_png(image.crop((x1, y1, x2, y2)),
                            assets_dir(md_path) / f"page-{page:04d}-{region.label}-{n}.png")
            saved.setdefault(region.label, []).append(path.relative_to(md_path.parent).as_posix())
    return saved


def link_figures(text: str, links: list[str]) -> str:
    """Put a Markdown image link after each grounded image block, one for each of its usable boxes, in
    order (relative to the .md): a block with no usable box gets none, so links stay with their boxes."""
    pending = iter(links)

    def add(match: re.Match[str]) -> str:
        mine = [link for _ in usable(valid_boxes(match.group(1))[0]) if (link := next(pending, None))]
        return match.group(0) + "".join(f"\n![]({link.replace(' ', '%20')})" for link in mine)
    return _IMAGE_BLOCK_RE.sub(add, text)
