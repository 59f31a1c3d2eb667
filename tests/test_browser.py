"""A review page and a compare page opened in headless Chromium: page images load, grounded boxes are drawn
(from the DOM after the page's script ran, and in the screenshot's pixels); screenshots kept as artifacts.
Chromium comes from the system packages (Debian: `apt-get install -y chromium`); without it these fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, raw_output
from doubles import ScriptedEngine
from ocr import compare, review
from pdfgen import ENGLISH, GREEK, make_pdf

WINDOW = (1400, 1800)
BOX_RED, TABLE_BLUE = (230, 25, 75), (31, 111, 235)      # stroke colours in ocr/html_assets/page.css


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium not found on PATH: install the system package (Debian/Ubuntu: "
                "`apt-get install -y chromium`); the browser tests need it")


def browse(page: Path, tmp: Path, *mode: str) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           "--force-device-scale-factor=1", *mode, page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def body_data(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))


def keep(screenshot: Path, name: str, capsys) -> Path:
    dest_dir = Path(os.environ.get("OCR_TEST_ARTIFACTS", screenshot.parent.parent / "artifacts"))
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    shutil.copyfile(screenshot, dest)
    with capsys.disabled():
        print(f"\nscreenshot: {dest}")
    return dest


def colour_pixels(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    pixels = np.asarray(image, dtype=int)
    return int((np.abs(pixels - np.array(colour)).max(axis=2) <= tolerance).sum())


def grounded_run(tmp_path: Path, answers: dict[int, str]) -> Path:
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "doc.pdf", [ENGLISH, GREEK])
    engine = ScriptedEngine(script=lambda r: answers[r.key.page])
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded",
                    "--required-labels", ""], engine=engine) == 0
    return out


def first_scan_shot(page: Path, tmp_path: Path, data: dict, name: str, capsys) -> Image.Image:
    """A screenshot of the page (kept as `name`), cropped to the first page image the page reported."""
    shot = tmp_path / "shots" / name
    shot.parent.mkdir()
    browse(page, tmp_path, f"--screenshot={shot}")
    keep(shot, name, capsys)
    x, y, w, h = map(int, data["first-scan"].split(","))
    return Image.open(shot).convert("RGB").crop((x, y, x + w, y + h))


def test_review_page_in_a_browser(tmp_path, capsys, inline_render):
    out = grounded_run(tmp_path, {1: raw_output("11_grounded-same-page-as-10-en.txt"),
                                  2: "<|ref|>title<|/ref|><|det|>[[80, 60, 900, 140]]<|/det|>\n# Άρθρο 5\n\n"
                                     "Rate \\(\\frac{1}{2}\\) and \\[x_1 + x_2\\]"})
    assert review.main([str(out)]) == 0
    page = out / "review" / "doc.html"
    data = body_data(browse(page, tmp_path, "--dump-dom"))
    assert data["checked"] == "1"
    assert data["images-total"] == "2" and data["images-loaded"] == "2"
    assert data["boxes-total"] == "6" and data["boxes-drawn"] == "6"
    assert data["math-total"] == "2" and data["math-drawn"] == "2"          # MathML drawn by the browser

    scan = first_scan_shot(page, tmp_path, data, "review.png", capsys)
    assert scan.size[0] > 300
    # page 1 of fixture 11: two tables (blue) and three other boxes (red) drawn over the page image
    assert colour_pixels(scan, TABLE_BLUE) > 500 and colour_pixels(scan, BOX_RED) > 100


def test_compare_page_in_a_browser(tmp_path, capsys, inline_render):
    base = "<|ref|>text<|/ref|><|det|>[[60, 60, 940, 300]]<|/det|>\nThe quick brown fox jumps over the lazy dog."
    out_a = grounded_run(tmp_path / "a", {1: base, 2: base})
    out_b = grounded_run(tmp_path / "b", {1: base, 2: base.replace("lazy dog", "sleepy cat")})
    html_page = tmp_path / "compare.html"
    assert compare.main([str(out_a), str(out_b), "--html", str(html_page)]) == 0
    dom = browse(html_page, tmp_path, "--dump-dom")
    data = body_data(dom)
    assert data["images-total"] == "1" and data["images-loaded"] == "1"    # only the page that differs
    assert "<del>lazy dog.</del>" in dom and "<ins>sleepy cat.</ins>" in dom and "doc.md page 2" in dom

    scan = first_scan_shot(html_page, tmp_path, data, "compare.png", capsys)
    assert np.asarray(scan.convert("L")).std() > 5        # the page image is there, not an empty box
