#!/usr/bin/env python
"""One Ray worker against the plain runner on the same pages (issue 20's "one actor" figure, target >= 0.97).

    python bench/ray_bench.py (--pdfs DIR | --generate 8x32) [--json OUT.json] -- RUNNER FLAGS
    python bench/ray_bench.py --generate 4x4 --double            # CPU smoke test with the scripted engine

Each path runs in its own process with the same runner flags and a fresh output folder (--overwrite), in
this order: the plain runner (run_pdf_ocr_vllm.py), then ocr-ray --address local --num-workers 1 (one
actor; its engine loads inside the actor). Both read their figures from their own run_report.json:
pages/s over the whole run, pages/s after engine load (the steady rate: what to compare), and the wall
seconds of the process (Ray start-up included). It prints each and the ratios ray/plain, JSON with --json.
Typical GPU flags: --model /tmp/ckpt --load-format dummy --max-tokens 256 --batch-pages 256
--runaway-retry off --required-labels '' (dummy weights make every page a runaway for the passes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

DOUBLE_STEP_S = float(os.environ.get("OCR_DOUBLE_STEP_S", "0.05"))


def double_maker(cfg: Any) -> Any:
    """--double: each Ray worker's engine is the scripted double (tests/doubles.py), as drive_double.py's."""
    from doubles import ScriptedEngine
    return lambda: ScriptedEngine(per_poll=2, step_s=DOUBLE_STEP_S)


def run_path(name: str, argv: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (out.parent / f"{name}.log").write_text(proc.stdout + proc.stderr)
    try:
        report = json.loads((out / "run_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sys.exit(f"{name}: no run report (exit {proc.returncode}); log: {out.parent / f'{name}.log'}\n"
                 + (proc.stderr or proc.stdout)[-2000:])
    t = report["totals"]
    return {"exit_code": proc.returncode, "wall_s": round(wall, 2), "pages": t["pages"],
            "blank_pages": t["blank_pages"], "tokens": t["tokens"], "seconds": t["seconds"],
            "pages_per_s": t["pages_per_s"], "pages_per_s_after_load": t["pages_per_s_after_load"],
            "tokens_per_s": t["tokens_per_s"]}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_ray_double":                 # the Ray path of --double, in its own process
        from ocr.ray_run import main as ray_main
        return ray_main(argv[1:], engine_maker=double_maker)
    cut = argv.index("--") if "--" in argv else len(argv)
    own, runner_flags = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="bench/ray_bench.py", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pdfs", type=Path, help="a folder of PDFs")
    src.add_argument("--generate", help="N_PDFSxPAGES of generated A4 scan-like pages (bench/corpus.py)")
    p.add_argument("--work", type=Path, help="where corpus and outputs go (default: a temporary folder)")
    p.add_argument("--double", action="store_true", help="the scripted engine double instead of vLLM (CPU)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(own)

    work = a.work or Path(tempfile.mkdtemp(prefix="ray-bench-"))
    if a.pdfs:
        pdfs = a.pdfs
    else:
        import corpus
        n, pages = corpus.parse_shape(a.generate)
        pdfs = work / f"corpus-{n}x{pages}"
        corpus.generate(pdfs, n, pages)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    common = ["--input-dir", str(pdfs), "--overwrite", "--no-progress", *runner_flags]
    if a.double:
        env["OCR_DOUBLE_STEP_S"] = str(DOUBLE_STEP_S)
        plain_cmd = [sys.executable, str(ROOT / "tests" / "drive_double.py")]
        ray_cmd = [sys.executable, str(Path(__file__).resolve()), "_ray_double", "--gpus-per-worker", "0"]
    else:
        plain_cmd = [sys.executable, str(ROOT / "run_pdf_ocr_vllm.py")]
        ray_cmd = [sys.executable, "-m", "ocr.ray_run"]
    res: dict[str, Any] = {"corpus": str(pdfs), "runner_flags": runner_flags, "double": a.double}
    res["plain"] = run_path("plain", [*plain_cmd, *common, "--output-dir", str(work / "plain")], work / "plain", env)
    print(f"plain runner: {res['plain']}", flush=True)
    res["ray"] = run_path("ray", [*ray_cmd, *common, "--output-dir", str(work / "ray"), "--address", "local",
                                  "--num-workers", "1", "--progress-every", "30"], work / "ray", env)
    print(f"ray, one worker: {res['ray']}", flush=True)
    res["same_pages"] = res["plain"]["pages"] == res["ray"]["pages"]
    res["ratio_pages_per_s"] = ratio(res["ray"]["pages_per_s"], res["plain"]["pages_per_s"])
    res["ratio_after_load"] = ratio(res["ray"]["pages_per_s_after_load"], res["plain"]["pages_per_s_after_load"])
    res["ratio_wall"] = ratio(res["plain"]["wall_s"], res["ray"]["wall_s"])
    print(f"ray/plain pages/s: {res['ratio_pages_per_s']} overall, {res['ratio_after_load']} after engine load "
          f"(target >= 0.97); wall plain/ray {res['ratio_wall']}; same pages: {res['same_pages']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    print("BENCH_JSON " + json.dumps(res), flush=True)
    return 0 if res["same_pages"] and res["plain"]["exit_code"] == res["ray"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
