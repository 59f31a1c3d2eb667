"""PostWorkers on their own: results come back by key, a raising and a hung finisher give their page the
fallback and never stop the others, workers are replaced, and the fallback text is writable."""

from __future__ import annotations

import time

import pytest

from ocr.postwork import (FAILED_COUNTER, TIMEOUT_COUNTER, Done, PostWorkers, fallback_page, fallback_text,
                          finish_job, judge_job)
from ocr.records import EngineOutput, PageKey, PageStatus

EOS = "<｜end▁of▁sentence｜>"


def hang(seconds: float) -> str:
    time.sleep(seconds)
    return "late"


def boom(text: str) -> str:
    raise ValueError(f"cannot read {text}")


def upper(text: str) -> str:
    return text.upper()


def collect(workers: PostWorkers, n: int, limit_s: float = 60.0) -> dict:
    got: dict = {}
    deadline = time.monotonic() + limit_s
    while len(got) < n and time.monotonic() < deadline:
        for done in workers.poll(wait_s=0.2):
            got[done.key] = done
    return got


@pytest.fixture(scope="module")
def workers():
    with PostWorkers(2, timeout_s=10.0) as pool:     # 10 s: this test module is imported by each new worker
        yield pool


def test_results_come_back_by_key(workers: PostWorkers) -> None:
    for i in range(6):
        workers.submit(("doc", i), upper, f"page {i}")
    got = collect(workers, 6)
    assert {k: d.value for k, d in got.items()} == {("doc", i): f"PAGE {i}" for i in range(6)}
    assert all(d.error is None for d in got.values()) and workers.pending() == 0


def test_a_raising_finisher_fails_only_its_page(workers: PostWorkers) -> None:
    workers.submit("bad", boom, "page 3")
    workers.submit("good", upper, "page 4")
    got = collect(workers, 2)
    assert got["bad"].value is None and got["bad"].error == "ValueError: cannot read page 3"
    assert not got["bad"].timed_out and got["good"].value == "PAGE 4"


def test_a_hung_finisher_is_killed_and_the_others_go_on(workers: PostWorkers) -> None:
    """The pages sent to the hung page's worker behind it come back from the other worker before the hung
    one's time limit, each once."""
    start = time.monotonic()
    workers.submit("hung", hang, 600.0)
    for i in range(4):
        workers.submit(i, upper, f"p{i}")
    seen: list[Done] = []
    deadline = time.monotonic() + 60
    while not any(d.key == "hung" for d in seen) and time.monotonic() < deadline:
        seen += workers.poll(wait_s=0.2)
    got, keys = {d.key: d for d in seen}, [d.key for d in seen]
    assert keys[-1] == "hung" and sorted(keys[:-1]) == [0, 1, 2, 3]
    assert got["hung"].timed_out and "ran past 10 s" in got["hung"].error
    assert [got[i].value for i in range(4)] == ["P0", "P1", "P2", "P3"]
    assert time.monotonic() - start < 60
    assert collect(workers, 1, limit_s=2.0) == {} and workers.pending() == 0   # no second result of any
    workers.submit("after", upper, "still here")          # the killed worker was replaced
    assert collect(workers, 1)["after"].value == "STILL HERE"


def test_the_page_jobs_run_in_a_worker(workers: PostWorkers) -> None:
    out = EngineOutput(PageKey(0, 2), "<image>\n# Τίτλος\n\nΚείμενο." + EOS, 12, "stop")
    loop = "Intro\n" + "\n".join(["Die Funktion f ist stetig auf dem Intervall."] * 30)
    workers.submit("finish", finish_job, out, "clean", (), "safe")
    workers.submit("verdict", judge_job, loop, "stop", 8192)
    got = collect(workers, 2)
    page = got["finish"].value
    assert (page.page, page.status, page.text) == (2, PageStatus.OK, "# Τίτλος\n\nΚείμενο.")
    assert got["verdict"].value.verdict.reason == "repeated_lines" and got["verdict"].value.runs >= 29


@pytest.mark.parametrize(("done", "counter"), [(Done("k", error="ValueError: x"), FAILED_COUNTER),
                                               (Done("k", error="ran past", timed_out=True), TIMEOUT_COUNTER)])
def test_fallback_page_keeps_the_raw_text_without_meta_tokens(done: Done, counter: str) -> None:
    raw = "<image>\n<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nΑθήνα\x00 \ud800" + EOS
    out = EngineOutput(PageKey(0, 5), raw, 40, "length")
    page = fallback_page(out, done, "clean")
    assert page.text == "Αθήνα \ufffd" and page.counters == {counter: 1}
    assert (page.page, page.status, page.tokens, page.finish_reason) == (5, PageStatus.OK, 40, "length")
    page.text.encode("utf-8")
    assert fallback_text(raw, "grounded").startswith("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nΑθήνα")


def test_the_runner_goes_on_past_a_page_whose_clean_up_raises_or_hangs(tmp_path, inline_render):
    """In a run: page 2's clean-up raises, page 3's hangs past --post-timeout. Both keep their raw text
    without meta tokens and say so in the report; the other PDF is finished while page 3 hangs (the engine
    loop never waits for post-processing; the second worker takes it); the PDF with the bad pages is complete."""
    import dataclasses

    from conftest import load_report
    from doubles import ScriptedEngine, failing_finisher
    from ocr.cli import write_report
    from ocr.config import parse_config
    from ocr.discover import plan_jobs
    from ocr.pipeline import Pipeline
    from ocr.report import PdfStatus, RunReport
    from pdfgen import make_pdf, numbered_pages

    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(4, "Alpha"))
    make_pdf(src / "b.pdf", numbered_pages(1, "Beta"))
    cfg = dataclasses.replace(parse_config(["--input-dir", str(src), "--output-dir", str(out)]),
                              batch_pages=8, render_workers=1, no_progress=True, post_timeout=3.0, post_workers=2)
    done: list = []
    report = RunReport(cfg.report_path, {})
    Pipeline(cfg, lambda: ScriptedEngine(script=lambda r: f"<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n"
                                                        f"Page {r.key.page}\x00 of {r.key.pdf}" + EOS),
             report, jobs=plan_jobs(src, out), on_pdf_done=lambda job, status: done.append((job.name, status)),
             finisher=failing_finisher).run()
    write_report(report)
    assert done == [("b.pdf", PdfStatus.COMPLETE), ("a.pdf", PdfStatus.COMPLETE)]
    md = (out / "a.md").read_text(encoding="utf-8")
    assert [part for part in md.strip().split("\n\n") if not part.startswith("----- Page")] == [
        "Page 1 of 0", "Page 2 of 0", "Page 3 of 0", "Page 4 of 0"]
    pages = {p["page"]: p for p in next(e for e in load_report(out)["pdfs"] if e["pdf"] == "a.pdf")["page_details"]}
    assert pages[2]["counters"].get(FAILED_COUNTER) == 1 and pages[3]["counters"].get(TIMEOUT_COUNTER) == 1
    assert not any(FAILED_COUNTER in pages[n]["counters"] or TIMEOUT_COUNTER in pages[n]["counters"] for n in (1, 4))


def test_a_worker_goes_on_while_the_control_loop_is_busy(workers: PostWorkers) -> None:
    """Jobs are sent ahead: a worker starts its next job when it is done with one, not when the control loop
    next looks (once per engine step), so one look after a busy while finds them all done."""
    workers.submit("warm", upper, "x")
    assert collect(workers, 1)["warm"].value == "X"
    for i in range(8):
        workers.submit(("ahead", i), upper, f"q{i}")
    time.sleep(3.0)                                     # the control loop away in an engine step
    got = {d.key: d.value for d in workers.poll()}
    assert got == {("ahead", i): f"Q{i}" for i in range(8)}


def test_pages_behind_a_slow_one_come_back_once(workers: PostWorkers) -> None:
    """A slow page (not hung) holds up the pages sent behind it only until the other worker takes them too;
    when the slow worker gets to them as well, their second results are dropped: each page comes back once."""
    workers.submit("warm", upper, "x")
    assert collect(workers, 1)["warm"].value == "X"
    workers.submit("slow", hang, 2.5)
    for i in range(5):
        workers.submit(("behind", i), upper, f"b{i}")
    seen: list[Done] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (len(seen) < 6 or workers.pending()):
        seen += workers.poll(wait_s=0.2)
    seen += [d for _ in range(10) for d in workers.poll(wait_s=0.1)]     # the slow worker's copies, if any
    keys = [d.key for d in seen]
    assert sorted(map(str, keys)) == sorted(map(str, ["slow", *[("behind", i) for i in range(5)]]))
    assert keys[-1] == "slow" and all(d.error is None for d in seen)


def test_one_worker_with_a_slow_and_a_hung_page_loses_no_page() -> None:
    """With the one default worker: a slow page, a hung one and an ordinary one sent behind them all come
    back, the hung one failed by its time limit, the others with their results."""
    with PostWorkers(1, timeout_s=5.0) as pool:
        pool.submit("warm", upper, "x")
        assert collect(pool, 1)["warm"].value == "X"
        pool.submit("slow", hang, 2.5)
        pool.submit("hung", hang, 600.0)
        pool.submit("plain", upper, "e")
        got = collect(pool, 3, limit_s=40)
        assert got["slow"].value == "late" and got["plain"].value == "E"
        assert got["hung"].timed_out and pool.pending() == 0
