"""Generated benchmark corpora: A4 PDFs of dense text pages, with a blank page every K pages.

    python bench/corpus.py OUT_DIR 8x32 [--blank-every 8] [--kind scan|text]

Each text page holds a heading and about 45 lines of distinct words (seeded per PDF and page), so every
rendered page is a different image, as in a real corpus. By default ("scan") each page is stored as a
greyscale JPEG at 150 DPI, like the scanned documents the runner is for; "text" keeps vector text. Pages whose number is a multiple of
--blank-every are left empty (the runner's blank check skips them). Generation is fast (a 1,000-page
PDF takes a few seconds), so memory-scaling runs can make their own.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

A4 = (595.0, 842.0)   # points
KINDS = ("scan", "text")
WORDS = ("the of and to in is page table text figure total name date law article section court "
         "decision ministry payment annex committee regional budget report year amount number "
         "paragraph provision decree minister office article council public service record").split()


def parse_shape(text: str) -> tuple[int, int]:
    """'8x32' -> (8 PDFs, 32 pages each)."""
    try:
        n_pdfs, pages = (int(x) for x in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N_PDFSxPAGES (e.g. 8x32), got {text!r}") from None
    if n_pdfs < 1 or pages < 1:
        raise argparse.ArgumentTypeError("N_PDFS and PAGES must be >= 1")
    return n_pdfs, pages


def is_blank_page(page: int, blank_every: int) -> bool:
    """1-based page numbers that are generated blank."""
    return blank_every > 0 and page % blank_every == 0


def _page_lines(rnd: random.Random, n_lines: int = 45, words_per_line: int = 13) -> list[str]:
    lines = []
    for i in range(n_lines):
        words = [rnd.choice(WORDS) for _ in range(words_per_line)]
        if i % 9 == 0:
            words.append(str(rnd.randint(1, 99999)))
        lines.append(" ".join(words).capitalize() + ".")
    return lines


def _text_page(doc, page_no: int, seed: int) -> None:
    import pymupdf

    page = doc.new_page(width=A4[0], height=A4[1])
    rnd = random.Random(f"{seed}:{page_no}")
    page.insert_text((60, 70), f"Document {seed}, page {page_no}: {rnd.choice(WORDS).title()} report",
                     fontsize=15, fontname="hebo")
    page.insert_textbox(pymupdf.Rect(60, 90, A4[0] - 55, A4[1] - 40), "\n".join(_page_lines(rnd)),
                        fontsize=10, fontname="helv", lineheight=1.5)


def make_pdf(path: Path, pages: int, seed: int = 0, blank_every: int = 8, kind: str = "scan") -> Path:
    """kind "text": vector text pages (cheap to render); "scan": each page a greyscale JPEG of such a
    page at 150 DPI, as in a scanned corpus (rendering then decodes and scales an image)."""
    import pymupdf

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = pymupdf.open()
    for page_no in range(1, pages + 1):
        if is_blank_page(page_no, blank_every):
            doc.new_page(width=A4[0], height=A4[1])
            continue
        if kind == "text":
            _text_page(doc, page_no, seed)
            continue
        with pymupdf.open() as src:
            _text_page(src, page_no, seed)
            jpeg = src[0].get_pixmap(dpi=150, colorspace=pymupdf.csGRAY).tobytes("jpeg", jpg_quality=70)
        page = doc.new_page(width=A4[0], height=A4[1])
        page.insert_image(page.rect, stream=jpeg)
    part = path.with_name(path.name + ".part")       # a killed run leaves no half PDF to be reused
    doc.save(part, garbage=0, deflate=True)
    doc.close()
    os.replace(part, path)
    return path


def generate(out_dir: Path, n_pdfs: int, pages: int, blank_every: int = 8, kind: str = "scan") -> list[Path]:
    """n_pdfs PDFs of `pages` A4 pages under out_dir (reused if already there with the same shape)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{kind}{i:03d}-{pages}p-b{blank_every}.pdf" for i in range(n_pdfs)]
    missing = [(path, pages, i, blank_every, kind) for i, path in enumerate(paths) if not path.exists()]
    # One process per PDF, as many as there are cores: 2,048 scan pages took 198 s in one process on the
    # H200's 16-core host (session 10), device time that waited for them.
    workers = min(len(missing), os.cpu_count() or 1)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(make_pdf, *zip(*missing)))
    else:
        for args in missing:
            make_pdf(*args)
    return paths


def expected_blank(n_pdfs: int, pages: int, blank_every: int) -> int:
    return n_pdfs * sum(is_blank_page(p, blank_every) for p in range(1, pages + 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("shape", type=parse_shape, help="N_PDFSxPAGES, e.g. 8x32")
    ap.add_argument("--blank-every", type=int, default=8, help="every K-th page is blank (0: none)")
    ap.add_argument("--kind", choices=KINDS, default="scan", help="scanned-like image pages or vector text")
    a = ap.parse_args(argv)
    paths = generate(a.out_dir, *a.shape, blank_every=a.blank_every, kind=a.kind)
    print(f"{len(paths)} PDFs x {a.shape[1]} pages in {a.out_dir} "
          f"({expected_blank(*a.shape, a.blank_every)} blank pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
