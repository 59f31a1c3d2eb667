"""Seconds of post-processing (clean, grounded) and runaway.verdict on adversarial and ordinary pages up to
200 KB: the shapes runaway pages produce. Targets: every input <= 0.5 s per mode, 200 KB of ordinary page
text <= 0.2 s.

    python bench/postprocess_bench.py [--json out.json] [--scale 0.1] [--only NAME] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ocr import postprocess, runaway  # noqa: E402

KB = 1000
TAG = "<|ref|>{}<|/ref|><|det|>[[{}, {}, {}, {}]]<|/det|>"
SYLLABLES = ("ka", "lo", "mi", "ne", "ta", "ri", "so", "pe", "thi", "gra", "sto", "ly", "ma", "ke", "do",
             "πα", "ρα", "γρα", "φος", "λο", "γος", "κει", "με", "νο", "τη", "τα", "σι")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))


def ordinary(size: int, grounded: bool = False, seed: int = 7) -> str:
    """Page text without any repetition: headings, paragraphs of ~80-character lines, a pipe table."""
    rng, parts, n = random.Random(seed), [], 0
    while sum(map(len, parts)) < size:
        n += 1
        head = TAG.format("text", 50, n % 900, 950, n % 900 + 20) + "\n" if grounded else ""
        kind = n % 7
        if kind == 0:
            parts.append(f"{head}## {n}. {' '.join(_word(rng) for _ in range(4)).capitalize()}\n")
        elif kind == 6:
            rows = "\n".join(f"| {_word(rng)} | {rng.randint(0, 9999)} | {rng.random():.3f} |" for _ in range(6))
            parts.append(f"{head}| name | count | share |\n|---|---|---|\n{rows}\n")
        else:
            lines = [" ".join(_word(rng) for _ in range(12)) + f" {n}.{k}" for k in range(rng.randint(3, 8))]
            parts.append(head + "\n".join(lines) + "\n")
    return "\n".join(parts)[:size]


def repeat_to(unit: str, size: int, head: str = "") -> str:
    return head + unit * max(1, (size - len(head)) // len(unit))


def toc(size: int) -> str:
    lines, n = [], 0
    while sum(len(x) + 1 for x in lines) < size:
        n += 1
        lines.append(f"{n // 10 + 1}.{n % 10} Section {n} heading {'.' * 120} {n + 3}")
    return "\n".join(lines)


MATRIX = "\\[\n\\begin{bmatrix}\na_{11} & a_{12} \\\\\na_{21} & a_{22}\n\\end{bmatrix}\n\\]\n"
RECEIPT = "Subtotal: 38.00\nTax (8%): 3.04\nTotal: 41.04\nThank you!\n"
SENTENCE = "3. The tenant shall keep the premises in good repair at all times.\n"
BASE = "The committee approved the annual budget for the coming year."
DRIFT = [BASE, BASE.replace("budget", "**budget**"), BASE.replace("budget", "bud get"),
         BASE.replace("budget", "budget budget budget")]


def ocr2_sentences(size: int) -> str:
    rng, parts = random.Random(3), []
    while sum(map(len, parts)) < size:
        parts.append(SENTENCE + " ".join(_word(rng) for _ in range(10)) + f" {len(parts)}\n")
    return "".join(parts)


def drifting(size: int) -> str:
    parts, i = [], 0
    while sum(len(p) + 1 for p in parts) < size:
        parts.append(DRIFT[i % 4])
        i += 1
    return "Minutes\n" + "\n".join(parts)


def grounded_pre_loop(size: int) -> str:
    unit = lambda i: TAG.format("text", 520, i % 999, 780, i % 999 + 7) + "\n<pre> <pre> <pre></pre></pre>\n\n"
    parts, i = [ordinary(2000, grounded=True)], 0
    while sum(map(len, parts)) < size:
        parts.append(unit(i))
        i += 1
    return "".join(parts)


def inputs(scale: float) -> dict[str, Callable[[], str]]:
    s = lambda n: max(1, int(n * scale))
    return {
        "spaces_10k_then_x": lambda: " " * s(10_000) + "x",
        "spaces_200k_then_x": lambda: " " * s(200_000) + "x",
        "rulers_=====_x4000": lambda: "=====\n" * s(4000),
        "table_tr_td_x2000": lambda: "<table><tr><td>" * s(2000),
        "table_tr_td_x5000": lambda: "<table><tr><td>" * s(5000),
        "table_td_x6000": lambda: "<table>" + "<td>" * s(6000) + "</table>",
        "toc_dot_leaders_200KB": lambda: toc(s(200 * KB)),
        "ordinary_200KB": lambda: ordinary(s(200 * KB)),
        "ordinary_grounded_200KB": lambda: ordinary(s(200 * KB), grounded=True),
        "loop_matrix_block_200KB": lambda: repeat_to(MATRIX, s(200 * KB), "The matrix reads\n"),
        "loop_receipt_block_200KB": lambda: repeat_to(RECEIPT, s(200 * KB), "Corner Cafe\n"),
        "loop_drifting_lines_200KB": lambda: drifting(s(200 * KB)),
        "loop_ocr2_sentences_200KB": lambda: ocr2_sentences(s(200 * KB)),
        "loop_pre_grounded_200KB": lambda: grounded_pre_loop(s(200 * KB)),
        "loop_overline_lines_200KB": lambda: repeat_to("overline[[overline][||\n\n", s(200 * KB)),
        "degenerate_one_line_200KB": lambda: repeat_to("the ", s(200 * KB), "Intro\n"),
        "blank_lines_200KB": lambda: "\n" * s(200 * KB),
        "private_use_all": lambda: "".join(map(chr, range(0xE000, 0xF900))) + "x",
    }


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of `repeat` calls (CPU time: the figure a loaded machine distorts least)."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        runaway.loops.find_loops.cache_clear()     # each call pays for the detector
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def _stall_while(work_done: Callable[[], bool], begin: Callable[[], object] = lambda: None,
                 limit_s: float = 120.0) -> float:
    """The longest gap between two ticks of a 1 ms loop on this thread (a control loop) from begin() until
    work_done() (begin is timed too: a thread holding the GIL can stall Thread.start itself)."""
    worst, last, end = 0.0, time.perf_counter(), time.perf_counter() + limit_s
    begin()
    while not work_done() and time.perf_counter() < end:
        time.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    return worst


def beside(texts: list[str]) -> dict[str, float]:
    """The control loop's worst stall while the pages are post-processed by a thread, then by PostWorkers."""
    import threading

    from ocr.postwork import PostWorkers, finish_job
    from ocr.records import EngineOutput, PageKey

    outs = [EngineOutput(PageKey(0, i + 1), t, 0, "stop") for i, t in enumerate(texts)]
    thread = threading.Thread(target=lambda: [postprocess.process_page(o.text, mode="clean") for o in outs])
    start = time.perf_counter()
    thread_stall = _stall_while(lambda: not thread.is_alive(), thread.start)
    thread_s = time.perf_counter() - start
    # one long `re` call, as a quadratic or backtracking pattern makes: it holds the GIL for its whole run
    import re
    slow = threading.Thread(target=lambda: re.match(r"(?:a|aa)+$", "a" * 32 + "b"))
    long_call_stall = _stall_while(lambda: not slow.is_alive(), slow.start)
    with PostWorkers(2, timeout_s=60) as workers:
        workers.submit("warm", finish_job, outs[0], "clean", (), "off")
        while not workers.poll(wait_s=0.5):
            pass
        got: list = []
        start = time.perf_counter()
        process_stall = _stall_while(lambda: got.extend(workers.poll()) or len(got) == len(outs),
                                     lambda: [workers.submit(o.key, finish_job, o, "clean", (), "off") for o in outs])
        process_s = time.perf_counter() - start
    return {"thread_worst_stall_s": thread_stall, "thread_total_s": thread_s,
            "thread_one_long_re_call_stall_s": long_call_stall,
            "process_worst_stall_s": process_stall, "process_total_s": process_s}


def cadence(texts: list[str], every_s: float, workers: int = 1) -> dict[str, float]:
    """Pages per second through `workers` post workers (the runaway verdict, then the clean-up, as the
    runner sends them) when the control loop looks only every `every_s` (one engine step)."""
    from ocr.postwork import PostWorkers, finish_job, judge_job
    from ocr.records import EngineOutput, PageKey

    outs = [EngineOutput(PageKey(0, i + 1), t, 0, "stop") for i, t in enumerate(texts)]
    with PostWorkers(workers, timeout_s=60) as pool:
        pool.submit("warm", judge_job, texts[0], "stop", 8192)
        while not pool.poll(wait_s=0.5):
            pass
        start, left = time.perf_counter(), len(outs)
        for o in outs:
            pool.submit(("judge", o.key), judge_job, o.text, "stop", 8192)
        busy = 0.0
        while left:
            time.sleep(every_s)
            for d in pool.poll():
                busy += d.seconds
                kind, key = d.key
                if kind == "judge":
                    pool.submit(("finish", key), finish_job, outs[key.page - 1], "clean", (), "safe")
                else:
                    left -= 1
        seconds = time.perf_counter() - start
    return {"pages": len(outs), "loop_every_s": every_s, "post_workers": workers, "seconds": round(seconds, 3),
            "pages_per_s": round(len(outs) / seconds, 1), "worker_busy_share": round(busy / seconds / workers, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every input (quick runs)")
    ap.add_argument("--only", action="append", default=[], help="run only inputs whose name contains this")
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs")
    ap.add_argument("--beside", action="store_true",
                    help="also measure the control loop's worst stall with the clean-up in a thread vs PostWorkers")
    ap.add_argument("--cadence", type=float, metavar="MS", default=0,
                    help="only this: pages/s through one post worker with a control loop that looks every MS "
                         "milliseconds (one engine step), on the real outputs in --fixtures")
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures"
                    / "raw_outputs", help="--cadence: a folder of raw DeepSeek-OCR outputs (*.txt)")
    args = ap.parse_args()
    if args.cadence:
        texts = [f.read_text(encoding="utf-8") for f in sorted(args.fixtures.glob("*.txt"))] * 8
        figures = cadence(texts, args.cadence / 1000)
        print(json.dumps(figures))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        return
    rows = []
    print(f"{'input':<28} {'KB':>6}   wall s: {'clean':>6} {'grounded':>8} {'verdict':>7}   "
          f"CPU s: {'clean':>6} {'grounded':>8} {'verdict':>7}")
    for name, make in inputs(args.scale).items():
        if args.only and not any(o in name for o in args.only):
            continue
        text = make()
        row = {"input": name, "kb": round(len(text.encode("utf-8", "surrogatepass")) / KB, 1)}
        for mode in postprocess.MODES:
            row[mode], row[mode + "_cpu"] = timed(lambda: postprocess.process_page(text, mode=mode), args.repeat)
        row["verdict"], row["verdict_cpu"] = timed(lambda: runaway.verdict(text, "stop", 8192), args.repeat)
        rows.append(row)
        print(f"{name:<28} {row['kb']:>6}           {row['clean']:>6.3f} {row['grounded']:>8.3f} {row['verdict']:>7.3f}"
              f"          {row['clean_cpu']:>6.3f} {row['grounded_cpu']:>8.3f} {row['verdict_cpu']:>7.3f}", flush=True)
    worst = max((max(r["clean"], r["grounded"], r["verdict"]) for r in rows), default=0.0)
    worst_cpu = max((max(r["clean_cpu"], r["grounded_cpu"], r["verdict_cpu"]) for r in rows), default=0.0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"worst {worst:.3f} s wall, {worst_cpu:.3f} s CPU; load average {load:.2f} on {os.cpu_count()} CPUs; Python {platform.python_version()}")
    stalls = {}
    if args.beside:
        made = inputs(args.scale)
        stalls = beside([made[n]() for n in ("loop_matrix_block_200KB", "ordinary_grounded_200KB",
                                             "loop_overline_lines_200KB", "blank_lines_200KB")])
        print("beside the control loop (4 pages of 200 KB): " + ", ".join(f"{k} {v:.3f}" for k, v in stalls.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "worst_s": worst, "worst_cpu_s": worst_cpu, "beside": stalls, "load_average": load,
                                         "cpus": os.cpu_count(), "python": platform.python_version()},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
