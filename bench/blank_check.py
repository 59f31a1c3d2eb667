"""Blank-check speed: ms per page for the check alone (evidence + ink test), the render excluded.

Usage: python bench/blank_check.py [--repeat 3] [PDF ...]   (default: the shared fixture PDFs)
Prints one line per PDF and the median and 90th percentile over all pages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ocr.blank import check_page  # noqa: E402
from ocr.render import PdfError, open_pdf, render_page  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pdfs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pdfs", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="timings per page; the fastest counts")
    parser.add_argument("--dpi", type=int, default=144)
    args = parser.parse_args()
    times: list[float] = []
    for path in args.pdfs or sorted(FIXTURES.glob("*.pdf")):
        try:
            doc = open_pdf(path)
        except PdfError as exc:
            print(f"{path.name}: skipped ({exc})")
            continue
        mine, blank = [], 0
        for n in range(1, doc.page_count + 1):
            image = render_page(doc, n, args.dpi, 12_000_000)
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                verdict = check_page(doc[n - 1], image)
                best = min(best, time.perf_counter() - start)
            mine.append(best * 1000)
            blank += verdict.blank
        times += mine
        print(f"{path.name}: {len(mine)} pages, {blank} blank, median {statistics.median(mine):.1f} ms, "
              f"max {max(mine):.1f} ms")
    times.sort()
    print(f"all: {len(times)} pages, median {statistics.median(times):.1f} ms/page, "
          f"p90 {times[int(0.9 * (len(times) - 1))]:.1f} ms/page")


if __name__ == "__main__":
    main()
