"""What rewriting the run report costs the control loop as a run grows (it is rewritten every 10 s on the
loop's thread), against the old way (the whole report encoded with indentation at every write), in one run.

    python bench/report_bench.py [--pages 50000] [--pages-per-pdf 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocr.records import PageResult, PageStatus   # noqa: E402
from ocr.report import RunReport                # noqa: E402
from ocr.store import json_text, write_atomic   # noqa: E402

STATS = {"mixed_script_words": 0, "latex_greek": 0, "final_sigma_medial": 0, "non_nfc": 0, "greek_letters": 1200,
         "latin_letters": 30, "other_letters": 0}


def filled(path: Path, pages: int, per_pdf: int) -> RunReport:
    report = RunReport(path, {})
    for p in range(pages):
        pdf = f"doc{p // per_pdf:05d}.pdf"
        if p % per_pdf == 0:
            report.pdf_opened(pdf, per_pdf, [])
        report.add_page(pdf, PageResult(p % per_pdf + 1, PageStatus.OK, "", tokens=576, finish_reason="stop",
                                        counters={"special_tokens_stripped": 100}, stats=STATS))
    return report


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=50000)
    ap.add_argument("--pages-per-pdf", type=int, default=32)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = filled(Path(tmp) / "run_report.json", a.pages, a.pages_per_pdf)
        old = timed(lambda: write_atomic(report.path, json_text(report.to_json(), indent=1) + "\n"))
        first = timed(report.write)
        report.add_page("doc00000.pdf", PageResult(a.pages_per_pdf + 1, PageStatus.OK, "", tokens=5, stats=STATS))
        again = timed(report.write)
        size = report.path.stat().st_size
    res = {"pages": a.pages, "report_mb": round(size / 1e6, 1), "old_write_s": round(old, 3),
           "first_write_s": round(first, 3), "next_write_s": round(again, 3),
           "old_over_next": round(old / again, 1) if again else None}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
