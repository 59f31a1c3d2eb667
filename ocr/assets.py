"""Optional files beside the Markdown: page images and grounded figure/table crops in <stem>_assets/."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from .grounding import Region, parse_regions, to_pixels

CROP_LABELS = ("image", "table")
_IMAGE_BLOCK_RE = re.compile(r"<\|ref\|>image<\|/ref\|><\|det\|>.*?<\|/det\|>", re.DOTALL)


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
    """Crop the figure and table regions of a grounded page; returns label -> relative paths, in order."""
    saved: dict[str, list[str]] = {}
    regions: list[Region] = [r for r in parse_regions(raw_text) if r.label in CROP_LABELS]
    for region in regions:
        for box in region.boxes:
            x1, y1, x2, y2 = to_pixels(box, *image.size)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            n = len(saved.get(region.label, [])) + 1
            path = save_png(image.crop((x1, y1, x2, y2)),
                            assets_dir(md_path) / f"page-{page:04d}-{region.label}-{n}.png")
            saved.setdefault(region.label, []).append(path.relative_to(md_path.parent).as_posix())
    return saved


def link_figures(text: str, links: list[str]) -> str:
    """Put a Markdown image link after each grounded image block, in order (relative to the .md)."""
    pending = iter(links)

    def add(match: re.Match[str]) -> str:
        link = next(pending, None)
        return match.group(0) + (f"\n![]({link.replace(' ', '%20')})" if link else "")
    return _IMAGE_BLOCK_RE.sub(add, text)
