#!/usr/bin/env python
"""PyMuPDF versions compared as the runner uses them: import time, render speed and a render worker's RSS.

    python bench/pymupdf_bench.py [--site DIR ...] [--pdfs DIR] [--scan-pages 4] [--repeat 5] [--json OUT]

Each version is measured in fresh child processes: the one installed here, and one per --site DIR (a folder
made with `pip install --target DIR --no-deps pymupdf==X`, put first on the child's sys.path). A child renders
every page of the --pdfs folder (default ../shared/fixtures/pdfs; bad files are skipped as the runner skips
them) plus a generated A4 scan PDF, with the runner's own ocr.render.render_task (render, blank check, store
emptied per page) at --dpi, as one render worker does. Figures: `import pymupdf` wall seconds (median of
--repeat fresh processes) and the RSS right after it; pages/s and ms/page of the render loop (best of
--repeat); the worker's peak RSS (VmHWM); pages rendered to the same pixels as the installed version. Prints a
table and, with --json, writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

IMPORT_CHILD = r"""
import time
start = time.perf_counter()
import pymupdf
seconds = time.perf_counter() - start
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
import json
print(json.dumps({"version": pymupdf.__version__, "import_s": seconds, "rss_after_import_mb": rss / 1024}))
"""

RENDER_CHILD = r"""
import hashlib, json, sys, time
from pathlib import Path
from ocr.records import PageKey
from ocr.render import PdfError, open_pdf, render_task
dpi, max_pixels, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
jobs = []
for path in paths:
    try:
        with open_pdf(Path(path)) as doc:
            jobs += [(path, n) for n in range(1, doc.page_count + 1)]
    except PdfError:
        continue
# each page is digested and dropped at once, as a render worker hands it on: the peak RSS is one worker's,
# not that of every page image held together (which is what this measured before session 5)
digests, failed, seconds = [], 0, 0.0
for path, n in jobs:
    start = time.perf_counter()
    p = render_task(path, PageKey(0, n), dpi, max_pixels)
    seconds += time.perf_counter() - start
    failed += bool(p.error)
    digests.append(p.error or ("blank" if p.blank else hashlib.sha256(p.image.tobytes()).hexdigest()[:16]))
    del p
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"pages": len(jobs), "failed": failed, "render_s": seconds,
                  "peak_rss_mb": hwm / 1024, "digests": digests}))
"""


def child(code: str, site: str | None, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, str(ROOT)) if p)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         timeout=1800, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit(f"child failed ({site or 'installed'}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(site: str | None, paths: list[str], a: argparse.Namespace) -> dict:
    imports = [child(IMPORT_CHILD, site) for _ in range(a.repeat)]
    renders = [child(RENDER_CHILD, site, str(a.dpi), str(a.max_pixels), *paths) for _ in range(a.repeat)]
    best = min(renders, key=lambda r: r["render_s"])
    return {"version": imports[0]["version"], "site": site or "(installed)",
            "import_s_median": round(statistics.median(r["import_s"] for r in imports), 3),
            "import_s_min": round(min(r["import_s"] for r in imports), 3),
            "rss_after_import_mb": round(statistics.median(r["rss_after_import_mb"] for r in imports), 1),
            "pages": best["pages"], "failed_pages": best["failed"],
            "pages_per_s": round(best["pages"] / best["render_s"], 2),
            "ms_per_page": round(1000 * best["render_s"] / best["pages"], 1),
            "render_s_all": [round(r["render_s"], 2) for r in renders],
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in renders), 1), "digests": best["digests"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", action="append", default=[], help="a --target folder holding another pymupdf")
    ap.add_argument("--pdfs", type=Path, default=ROOT.parent / "shared" / "fixtures" / "pdfs")
    ap.add_argument("--scan-pages", type=int, default=4, help="pages of the generated A4 scan PDF (0: none)")
    ap.add_argument("--dpi", type=int, default=144)
    ap.add_argument("--max-pixels", type=int, default=12_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if not a.pdfs.is_dir():
        raise SystemExit(f"--pdfs {a.pdfs} is not a folder (the fixture corpus is expected in ../shared)")
    paths = sorted(str(p) for p in a.pdfs.glob("*.pdf"))
    with tempfile.TemporaryDirectory(prefix="pymupdf-bench-") as tmp:
        if a.scan_pages:
            import corpus      # bench/corpus.py, with the installed pymupdf
            paths += [str(p) for p in corpus.generate(Path(tmp), 1, a.scan_pages, blank_every=0, kind="scan")]
        results = [measure(site, paths, a) for site in [None, *a.site]]
    first = results[0]["digests"]
    for r in results:         # pages rendered to the same pixels (and blank verdicts) as the installed version
        r["same_pixels_as_installed"] = sum(a == b for a, b in zip(r.pop("digests"), first))
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    res = {"cpus": os.cpu_count(), "load_avg_1min_at_end": load, "python": sys.version.split()[0], "dpi": a.dpi,
           "repeat": a.repeat, "pdfs": [Path(p).name for p in paths], "versions": results}
    print(f"{'pymupdf':>10}{'import s':>10}{'RSS@import':>12}{'pages':>7}{'pages/s':>9}{'ms/page':>9}"
          f"{'peak RSS':>10}{'same px':>9}  (MiB; {os.cpu_count()} CPUs, load {load}, DPI {a.dpi}, "
          f"median/best of {a.repeat})")
    for r in results:
        print(f"{r['version']:>10}{r['import_s_median']:>10}{r['rss_after_import_mb']:>12}{r['pages']:>7}"
              f"{r['pages_per_s']:>9}{r['ms_per_page']:>9}{r['peak_rss_mb']:>10}{r['same_pixels_as_installed']:>9}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print("PYMUPDF_BENCH " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
