#!/usr/bin/env python
"""Runner figures of bench.py processes that shared one GPU (--barrier), summed over their common span.

    python bench/combine_rows.py A.json B.json [--json both.json]

The runner phases started together at the barrier; the combined rate is every process's OCR pages over the
span from the first start to the last end on the machine's clock, and the steady rate is taken over all
their pages' finish times together (bench.steady_rate, the batch being the sum of theirs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import rate, steady_rate  # noqa: E402


def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
    runners = [r.get("runner") or {} for r in rows]
    missing = [i for i, r in enumerate(runners) if "clock" not in r]
    if missing:
        raise SystemExit(f"row(s) {missing} have no runner clock: run bench.py with --barrier DIR:N")
    start = min(r["clock"]["start"] for r in runners)
    end = max(r["clock"]["end"] for r in runners)
    pages = sum(r["ocr_pages"] for r in runners)
    tokens = sum(r["out_tokens"] for r in runners)
    batch = sum(int((row.get("settings") or {}).get("batch_pages") or 0) for row in rows)
    finished = [t for r in runners for t in r["clock"]["finished_at"]]
    busy = [((row.get("gpu") or {}).get("runner") or {}).get("util_mean_pct") for row in rows]
    return {"processes": len(rows), "ocr_pages": pages, "seconds": round(end - start, 2),
            "pages_per_s": rate(pages, end - start), "out_tokens_per_s": rate(tokens, end - start),
            "steady_pages_per_s": steady_rate(finished, batch=batch), "batch_pages_total": batch,
            "start_spread_s": round(max(r["clock"]["start"] for r in runners) - start, 2),
            "per_process_pages_per_s": [r["pages_per_s"] for r in runners],
            "failed_pages": sum(r["failed_pages"] for r in runners),
            "engine_restarts": sum(r.get("engine_restarts", 0) for r in runners),
            "gpu_util_mean_runner": busy}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", type=Path, help="bench.py --json files of the processes")
    ap.add_argument("--json", type=Path, help="write the combined figures here")
    a = ap.parse_args(argv)
    out = combine([json.loads(p.read_text(encoding="utf-8")) for p in a.rows])
    out["rows"] = [str(p) for p in a.rows]
    text = json.dumps(out, indent=1)
    if a.json:
        a.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
