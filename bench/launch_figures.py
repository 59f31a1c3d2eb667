"""Figures of one bench/gpu_launch_032.sh run from what it brought back: pages read by the model per second
over the time engines were up, the time two workers were up side by side, and the GPU's busy share then.

    python bench/launch_figures.py DIR/NAME [--json OUT]

reads NAME-run_report.json(.gz), the shard reports in NAME-parts.tar.gz and NAME-smi.csv(.gz) (nvidia-smi's
timestamps are taken as UTC, as on the lent machine). The pages read are the report's `read_pages`, or where
it has none (session 15's runs, from before reports counted them; nothing was resumed there) the pages less the
blank ones. Each worker's span is `ocr.merge_reports.engine_span` of its report, as in the merge.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ocr.merge_reports import engine_span, union_seconds   # noqa: E402


def _open_text(path: Path) -> io.TextIOBase:
    gz = path.with_name(path.name + ".gz")
    return gzip.open(gz, "rt") if not path.exists() and gz.exists() else open(path)


def shard_reports(prefix: Path, merged: dict[str, Any]) -> list[dict[str, Any]]:
    """Each worker's report: the shard reports in NAME-parts.tar.gz, or the one report."""
    parts = prefix.with_name(prefix.name + "-parts.tar.gz")
    reports = []
    if parts.exists():
        with tarfile.open(parts) as tar:
            for member in tar.getmembers():
                if Path(member.name).name.startswith("run_report.shard-"):
                    reports.append(json.load(tar.extractfile(member)))
    return reports or [merged]


def smi_samples(prefix: Path) -> list[tuple[float, float]]:
    """(Unix seconds, GPU utilization %) of every nvidia-smi sample."""
    out = []
    with _open_text(prefix.with_name(prefix.name + "-smi.csv")) as f:
        for row in csv.reader(f):
            try:
                t = dt.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
                out.append((t.timestamp(), float(row[1])))
            except (ValueError, IndexError):
                continue
    return out


def busy(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    inside = [u for t, u in samples if start <= t <= end]
    return round(sum(inside) / len(inside), 1) if inside else None


def figures(prefix: Path) -> dict[str, Any]:
    with _open_text(prefix.with_name(prefix.name + "-run_report.json")) as f:
        merged = json.load(f)
    t = merged["totals"]
    read = t.get("read_pages")
    read = read if read is not None else t["pages"] - t["blank_pages"]
    ready = [(r, span) for r in shard_reports(prefix, merged) if (span := engine_span(r))]
    if not ready:
        raise SystemExit(f"{prefix}: no engine got ready in this run")
    spans = [span for _, span in ready]
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    both = max(a for a, _ in spans), min(b for _, b in spans)
    up = union_seconds(spans)                      # a gap between workers that ran one after the other: out
    samples = smi_samples(prefix)
    res = {"workers": len(spans), "pages": t["pages"], "read_pages": read,
           "loads_s": [round(r["clock"]["engine_ready"] - r["clock"]["started"], 1) for r, _ in ready],
           "engines_up_s": round(up, 1), "read_pages_per_s": round(read / up, 2),
           "gpu_busy_engines_up": busy(samples, first, last)}
    if len(spans) > 1:
        res.update(side_by_side_s=round(max(0.0, both[1] - both[0]), 1),
                   gpu_busy_side_by_side=busy(samples, *both) if both[1] > both[0] else None)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix", type=Path, help="DIR/NAME of the run's files")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args(argv)
    res = figures(a.prefix)
    print(json.dumps(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
