"""Merge the per-shard run reports of one launch into OUT/run_report.json and a printed summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import Config
from .report import counter_lines, merged_text, passes, up_rates
from .store import write_atomic

SUMMED = ("pdfs", "pages", "blank_pages", "failed_pages", "tokens", "read_pages")
AFTER_LOAD = {"pages_per_s_after_load": "pages", "read_pages_per_s_after_load": "read_pages"}   # rate: count
PROBLEM_STATUSES = ("failed", "partial", "unfinished", "damaged")


@dataclass
class Shard:
    """One worker's part of a launch: where its report is, what it said, how the worker ended."""
    index: int
    path: Path
    report: dict[str, Any] | None = None
    problem: str | None = None
    exit_code: int | None = None
    gpus: str | None = None


def report_path(output_dir: Path, index: int, num_shards: int) -> Path:
    """The runner's own name for a shard's report (run_report.shard-I-of-N.json; run_report.json if N=1)."""
    return Config(input_dir=Path("."), output_dir=output_dir, num_shards=num_shards,
                  shard_index=index).report_path


def load_shard(index: int, path: Path, since: float | None = None) -> Shard:
    """Read one shard report; a missing, older-than-`since` or broken file becomes a problem line."""
    shard = Shard(index, path)
    if not path.is_file():
        shard.problem = f"no report {path.name} (the worker stopped before writing one)"
    elif since is not None and path.stat().st_mtime < since:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
        shard.problem = f"{path.name} is from an earlier run ({when}): this worker wrote no report"
    else:
        try:
            shard.report = json.loads(path.read_text(encoding="utf-8"))
            shard.report["totals"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            shard.report, shard.problem = None, f"{path.name} is unreadable ({type(exc).__name__}: {exc})"
    return shard


def load_shards(output_dir: Path, num_shards: int, since: float | None = None) -> list[Shard]:
    return [load_shard(i, report_path(output_dir, i, num_shards), since) for i in range(num_shards)]


def merged_totals(shards: list[Shard], wall_seconds: float | None) -> dict[str, Any]:
    """Counts summed over shards; rates over the launch's wall time (the slowest worker if unknown)."""
    sums: Counter = Counter()
    counters: Counter = Counter()
    greek: list[dict[str, Any]] = []
    seconds = 0.0
    rates: Counter = Counter()              # pages, and pages read, per second of engines up
    spans: list[tuple[float, float]] = []   # each worker's engine up, where it got ready
    for s in shards:
        if s.report is None:
            continue
        t = s.report["totals"]
        sums.update({k: v for k, v in t.items() if k in SUMMED or k.startswith("pdfs_")})
        counters.update(t.get("counters", {}))
        greek += [t["greek"]] if isinstance(t.get("greek"), dict) else []
        seconds = max(seconds, float(t.get("seconds", 0.0)))
        rates.update({k: float(t.get(k) or 0.0) for k in AFTER_LOAD})
        span = engine_span(s.report)
        spans += [span] if span else []
    seconds = wall_seconds if wall_seconds is not None else seconds
    if all("clock" in s.report for s in shards if s.report is not None):
        # The pages over the time any worker's engine was up: the workers' own rates add up only where they
        # ran side by side (two workers on one GPU whose loads were one after the other did not). Reports
        # written before they had a clock: their rates summed.
        up = union_seconds(spans)
        rates = Counter({k: sums[pages] / up if up else 0.0 for k, pages in AFTER_LOAD.items()})
    totals: dict[str, Any] = {"pdfs": sums["pdfs"]}
    totals.update({k: v for k, v in sorted(sums.items()) if k.startswith("pdfs_")})
    totals.update({k: sums[k] for k in SUMMED[1:]})
    totals.update(seconds=round(seconds, 1),
                  pages_per_s=round(sums["pages"] / seconds, 3) if seconds else 0.0,
                  tokens_per_s=round(sums["tokens"] / seconds, 1) if seconds else 0.0,
                  **{k: round(rates[k], 3) for k in AFTER_LOAD},
                  counters=dict(sorted(counters.items())), passes=passes(counters))
    if any("read_pages" not in s.report["totals"] for s in shards if s.report is not None):
        # A report from before reports counted them: the sum would count only the newer shards' pages.
        totals.update(read_pages=None, read_pages_per_s_after_load=None)
    if greek:
        totals["greek"] = merged_greek(greek)
    return totals


def engine_span(report: dict[str, Any]) -> tuple[float, float] | None:
    """From a worker's engine being ready to its report's last write, in Unix seconds; None where its engine
    never got ready (or the report has no clock)."""
    clock = report.get("clock") or {}
    ready, written = clock.get("engine_ready"), clock.get("written")
    if not isinstance(ready, (int, float)) or not isinstance(written, (int, float)) or written < ready:
        return None
    return float(ready), float(written)


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """How long at least one of the spans lasted."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def merged_greek(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Greek signals of the shards: counts summed, letter shares over all letters (as ocr.report does)."""
    total: Counter = Counter()
    for part in parts:
        total.update({k: v for k, v in part.items() if isinstance(v, int) and not isinstance(v, bool)})
    letters = sum(total[f"{k}_letters"] for k in ("greek", "latin", "other"))
    shares = {f"{k}_share": round(total[f"{k}_letters"] / letters, 3) if letters else 0.0
              for k in ("greek", "latin", "other")}
    return {**dict(sorted(total.items())), **shares}


def worker_row(s: Shard) -> dict[str, Any]:
    t = s.report["totals"] if s.report else {}
    return {"worker": s.index, "gpus": s.gpus, "exit_code": s.exit_code, "report": s.path.name,
            "problem": s.problem, "pdfs": t.get("pdfs", 0), "pages": t.get("pages", 0),
            "seconds": t.get("seconds", 0.0), "pages_per_s": t.get("pages_per_s", 0.0)}


def merge(shards: list[Shard], wall_seconds: float | None = None) -> dict[str, Any]:
    """One report with the single-run shape (settings, engine, totals, events, pdfs) plus `workers`."""
    present = [s for s in shards if s.report is not None]
    settings = dict(present[0].report.get("settings", {})) if present else {}
    settings.pop("shard_index", None)
    stops = [f"worker {s.index}: {s.report['interrupted']}" for s in present if s.report.get("interrupted")]
    return {"settings": settings,
            "engine": {str(s.index): s.report.get("engine", {}) for s in present},
            "interrupted": "; ".join(stops) or None,
            "totals": merged_totals(shards, wall_seconds),
            "workers": [worker_row(s) for s in shards],
            "events": [{**e, "worker": s.index} for s in present for e in s.report.get("events", [])],
            "pdfs": [{**p, "worker": s.index} for s in present for p in s.report.get("pdfs", [])]}


def _gpu_label(gpus: str | None) -> str:
    if not gpus:
        return ""
    return f" (GPU {gpus})" if "," not in gpus else f" (GPUs {gpus})"


def worker_line(w: dict[str, Any]) -> str:
    code = w["exit_code"]
    code = "" if code is None else f", killed by signal {-code}" if code < 0 else f", exit {code}"
    head = f"  worker {w['worker']}{_gpu_label(w['gpus'])}: "
    if w["problem"]:
        return head + w["problem"] + code
    return head + (f"{w['pdfs']} PDFs, {w['pages']} pages in {w['seconds']} s, "
                   f"{w['pages_per_s']} pages/s{code}")


def summary_lines(merged: dict[str, Any]) -> list[str]:
    """What a user reads at the end: PDFs by status, pages and pages/s per worker and in total."""
    t = merged["totals"]
    by_status = ", ".join(f"{v} {k[5:]}" for k, v in t.items() if k.startswith("pdfs_")) or "none"
    lines = [f"{len(merged['workers'])} workers, {t['pdfs']} PDFs: {by_status}",
             f"{t['pages']} pages ({t['blank_pages']} blank, {t['failed_pages']} failed) in {t['seconds']} s: "
             f"{t['pages_per_s']} pages/s in total, {t['tokens_per_s']} tokens/s"
             + up_rates(t)]
    lines += [worker_line(w) for w in merged["workers"]]
    lines += counter_lines(t["counters"])
    for p in merged["pdfs"]:
        if p["status"] in PROBLEM_STATUSES:
            why = p.get("error") or (f"pages {p['failed_pages']} failed" if p.get("failed_pages")
                                     else "not finished")
            lines.append(f"  {p['status']}: {p['pdf']}: {why} (worker {p['worker']})")
    if merged["interrupted"]:
        lines.append(f"stopped: {merged['interrupted']}")
    return lines


def complete(merged: dict[str, Any]) -> bool:
    """True when every worker left a report and no PDF is failed, partial or unfinished."""
    return (not any(w["problem"] for w in merged["workers"])
            and not any(p["status"] in PROBLEM_STATUSES for p in merged["pdfs"]))


def write_merged(output_dir: Path, merged: dict[str, Any], num_shards: int) -> Path | None:
    """Write OUT/run_report.json; with one shard that file is the worker's own report, left as it is."""
    if num_shards == 1:
        return None
    path = output_dir / "run_report.json"
    write_atomic(path, merged_text(merged))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ocr.merge_reports OUT --num-shards N`: merge again, e.g. after a detached tmux launch."""
    parser = argparse.ArgumentParser(prog="python -m ocr.merge_reports", description=main.__doc__)
    parser.add_argument("output_dir", type=Path, help="the runner's --output-dir")
    parser.add_argument("--num-shards", type=int, required=True, help="the launch's number of workers")
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        print("error: --num-shards must be >= 1", file=sys.stderr)
        return 2
    merged = merge(load_shards(args.output_dir, args.num_shards))
    path = write_merged(args.output_dir, merged, args.num_shards)
    print("\n".join(summary_lines(merged)))
    print(f"merged report: {path or report_path(args.output_dir, 0, 1)}")
    return 0 if complete(merged) else 1


if __name__ == "__main__":
    sys.exit(main())
