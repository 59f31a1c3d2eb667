"""PostWorkers on their own: results come back by key, a raising and a hung finisher give their page the
fallback and never stop the others, workers are replaced, and the fallback text is writable."""

from __future__ import annotations

import time

import pytest

from ocr.postwork import (FAILED_COUNTER, TIMEOUT_COUNTER, Done, PostWorkers, fallback_page, fallback_text,
                          finish_job, verdict_job)
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
    start = time.monotonic()
    workers.submit("hung", hang, 600.0)
    for i in range(4):
        workers.submit(i, upper, f"p{i}")
    got = collect(workers, 5)
    assert got["hung"].timed_out and "ran past 10 s" in got["hung"].error
    assert [got[i].value for i in range(4)] == ["P0", "P1", "P2", "P3"]
    assert time.monotonic() - start < 60
    workers.submit("after", upper, "still here")          # the killed worker was replaced
    assert collect(workers, 1)["after"].value == "STILL HERE"


def test_the_page_jobs_run_in_a_worker(workers: PostWorkers) -> None:
    out = EngineOutput(PageKey(0, 2), "<image>\n# Τίτλος\n\nΚείμενο." + EOS, 12, "stop")
    loop = "Intro\n" + "\n".join(["Die Funktion f ist stetig auf dem Intervall."] * 30)
    workers.submit("finish", finish_job, out, "clean", (), "safe")
    workers.submit("verdict", verdict_job, loop, "stop", 8192)
    got = collect(workers, 2)
    page = got["finish"].value
    assert (page.page, page.status, page.text) == (2, PageStatus.OK, "# Τίτλος\n\nΚείμενο.")
    assert got["verdict"].value.reason == "repeated_lines"


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
