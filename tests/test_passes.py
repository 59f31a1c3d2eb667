"""The recovery passes through the runner, with an engine double that produces each failure shape: a loop,
a cut-off answer, an empty answer, a grounded page without its table, and the ROI re-read of regions."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from conftest import load_report, pdf_entry, run_cli
from doubles import ScriptedEngine
from pdfgen import ENGLISH, GREEK, make_pdf, numbered_pages
from ocr.passes import (ATTEMPT_AGAIN, ATTEMPT_FIRST, ATTEMPT_LARGE, ATTEMPT_ROI, ATTEMPT_RUNAWAY, Final,
                        LargeCap, PageWork, PassSettings, settings_for)
from ocr.config import parse_config
from ocr.engines.base import EngineCaps, Failure
from ocr.records import PageKey, PageRequest
from ocr.roi import FREE_OCR, MARKDOWN

LOOP = "# Αποφασίζουμε\n\n" + "\n".join(["Το ίδιο κείμενο ξανά και ξανά."] * 40)
GOOD = "# Αποφασίζουμε\n\nΆρθρο 1. Η απόφαση ισχύει από τη δημοσίευσή της."
PARAGRAPH = "<|ref|>text<|/ref|><|det|>[[100, 100, 900, 300]]<|/det|>\nA paragraph of the page."
TABLE = "<|ref|>table<|/ref|><|det|>[[100, 400, 900, 700]]<|/det|>\n<table><tr><td>42</td></tr></table>"


def cli(tmp_path, engine, *args: str, pages=None) -> tuple[int, dict, str]:
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", pages or [ENGLISH])
    code = run_cli(["--input-dir", str(src), "--output-dir", str(out), *args], engine=engine)
    return code, load_report(out), (out / "a.md").read_text(encoding="utf-8")


# --- runaway answers ----------------------------------------------------------------------------------

def test_a_looping_page_is_retried_with_sampling_and_the_better_answer_kept(tmp_path):
    engine = ScriptedEngine(script=lambda r: LOOP if r.attempt == ATTEMPT_FIRST else GOOD)
    code, report, md = cli(tmp_path, engine)
    assert code == 0
    retry = [r for r in engine.requests if r.attempt == ATTEMPT_RUNAWAY]
    assert len(retry) == 1 and retry[0].vision == "gundam"
    assert retry[0].sampling.temperature > 0 and retry[0].sampling.ngram_size < 30   # a tighter guard
    assert "Άρθρο 1" in md and "ξανά και ξανά" not in md
    assert report["totals"]["passes"]["runaway"] == {"pages": 1, "repeated_lines": 1, "retried": 1,
                                                      "improved": 1}


def test_a_retry_that_loops_worse_loses_to_the_first_answer(tmp_path):
    short_loop = "# Τίτλος\n\nΠρώτη γραμμή.\n" + "\n".join(["Η ίδια πρόταση επαναλαμβάνεται."] * 12)
    engine = ScriptedEngine(script=lambda r: short_loop if r.attempt == ATTEMPT_FIRST else LOOP)
    code, report, md = cli(tmp_path, engine)
    assert code == 0 and "Πρώτη γραμμή" in md
    passes = report["totals"]["passes"]["runaway"]
    assert passes["retried"] == 1 and "improved" not in passes and passes["unresolved"] == 1


def test_a_cut_off_page_keeps_the_retry_that_finished(tmp_path):
    cut = "Άρθρο 1. Η απόφαση ισχύει από"
    engine = ScriptedEngine(script=lambda r: (cut, "length") if r.attempt == ATTEMPT_FIRST else (GOOD, "stop"))
    code, report, md = cli(tmp_path, engine, "--max-tokens", "64")
    assert code == 0 and "δημοσίευσή της" in md
    assert report["totals"]["passes"]["runaway"]["hit_max_tokens"] == 1
    assert report["totals"]["passes"]["runaway"]["improved"] == 1
    detail = pdf_entry(report, "a.pdf")["page_details"][0]
    assert detail["finish_reason"] == "stop"


def test_an_empty_answer_is_read_again_in_large_mode(tmp_path):
    engine = ScriptedEngine(script=lambda r: "" if r.vision == "gundam" else GOOD)
    code, report, md = cli(tmp_path, engine)
    assert code == 0 and "Άρθρο 1" in md
    retry = [r for r in engine.requests if r.attempt == ATTEMPT_RUNAWAY]
    assert [(r.vision, r.sampling) for r in retry] == [("large", None)]       # greedy, other resolution
    assert report["totals"]["passes"]["runaway"] == {"empty": 1, "improved": 1, "pages": 1, "retried": 1}


def test_runaway_retry_off_keeps_the_first_answer_and_counts_it(tmp_path):
    engine = ScriptedEngine(script=lambda r: LOOP)
    code, report, md = cli(tmp_path, engine, "--runaway-retry", "off")
    assert code == 0 and [r.attempt for r in engine.requests] == [ATTEMPT_FIRST]
    assert md.count("ξανά και ξανά") < 40                   # the post-processing still drops the loop
    assert report["totals"]["passes"]["runaway"] == {"pages": 1, "repeated_lines": 1, "unresolved": 1}


def test_an_engine_without_sampling_or_large_mode_does_not_repeat_a_reading(tmp_path):
    """The transformers engine: a second greedy reading of the same image would give the same answer."""
    script = {1: LOOP, 2: ""}
    engine = ScriptedEngine(script=lambda r: script.get(r.key.page, GOOD), vision_modes=("gundam",),
                            retry_sampling=False)
    code, report, _ = cli(tmp_path, engine, pages=[ENGLISH, GREEK])
    assert code == 1                                        # page 2 stays empty: a failed page
    assert sorted((r.key.page, r.attempt) for r in engine.requests) == [(1, 0), (2, 0)]
    assert pdf_entry(report, "a.pdf")["failed_pages"] == [2]
    assert report["totals"]["passes"]["runaway"] == {"empty": 1, "pages": 2, "repeated_lines": 1, "unresolved": 2}


@pytest.mark.parametrize("hollow", ["**", "---", "<table></table>", "<|ref|>text<|/ref|>"])
def test_a_page_answered_with_markup_alone_twice_is_a_failed_page(tmp_path, hollow):
    """Nothing readable in either answer: the page is failed (the PDF is redone next run), not an OK page
    holding a stray rule or empty table."""
    engine = ScriptedEngine(script=lambda r: hollow if r.key.page == 2 else GOOD)
    code, report, md = cli(tmp_path, engine, pages=[ENGLISH, GREEK])
    assert code == 1
    assert pdf_entry(report, "a.pdf")["failed_pages"] == [2]
    assert "[[Page 2 failed" in md
    assert [r.attempt for r in engine.requests if r.key.page == 2] == [ATTEMPT_FIRST, ATTEMPT_RUNAWAY]


def test_without_large_mode_an_empty_answer_is_retried_with_sampling(tmp_path):
    """DeepSeek-OCR-2 in vLLM: per-request sampling, no Large mode."""
    engine = ScriptedEngine(script=lambda r: GOOD if r.sampling else "", vision_modes=("gundam",))
    code, report, md = cli(tmp_path, engine)
    assert code == 0 and "Άρθρο 1" in md
    retry = [r for r in engine.requests if r.attempt == ATTEMPT_RUNAWAY]
    assert len(retry) == 1 and retry[0].vision == "gundam" and retry[0].sampling.temperature > 0


# --- Large-mode retry -----------------------------------------------------------------------------------

def test_a_grounded_page_without_a_table_is_read_again_in_large_mode(tmp_path):
    engine = ScriptedEngine(script=lambda r: PARAGRAPH if r.vision == "gundam" else PARAGRAPH + "\n\n" + TABLE)
    code, report, md = cli(tmp_path, engine, "--mode", "grounded")
    assert code == 0
    assert [(r.attempt, r.vision) for r in engine.requests] == [(ATTEMPT_FIRST, "gundam"), (ATTEMPT_LARGE, "large")]
    assert "<td>42</td>" in md and "A paragraph" in md
    assert report["totals"]["passes"]["large"] == {"improved": 1, "retried": 1, "wanted": 1}


def test_a_large_answer_that_finds_nothing_more_is_not_kept(tmp_path):
    engine = ScriptedEngine(script=lambda r: PARAGRAPH if r.vision == "gundam" else "Something else entirely.")
    code, report, md = cli(tmp_path, engine, "--mode", "grounded")
    assert code == 0 and "A paragraph" in md and "Something else" not in md
    assert report["totals"]["passes"]["large"] == {"retried": 1, "wanted": 1}


def test_a_page_already_read_in_large_mode_is_not_read_in_large_mode_again(tmp_path):
    engine = ScriptedEngine(script=lambda r: "" if r.vision == "gundam" else PARAGRAPH)
    code, report, md = cli(tmp_path, engine, "--mode", "grounded")
    assert code == 0 and "A paragraph" in md
    assert [(r.attempt, r.vision) for r in engine.requests] == [(ATTEMPT_FIRST, "gundam"), (ATTEMPT_RUNAWAY, "large")]
    assert "large" not in report["totals"]["passes"]


def test_pages_with_their_labels_are_not_retried(tmp_path):
    engine = ScriptedEngine(script=lambda r: PARAGRAPH + "\n\n" + TABLE)
    code, report, _ = cli(tmp_path, engine, "--mode", "grounded")
    assert code == 0 and [r.attempt for r in engine.requests] == [ATTEMPT_FIRST]
    assert "large" not in report["totals"]["passes"]


def test_the_large_retry_cap_is_per_run(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", numbered_pages(3))
    make_pdf(src / "b.pdf", numbered_pages(2))
    engine = ScriptedEngine(script=lambda r: PARAGRAPH)
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded",
                    "--retry-large-cap", "2"], engine=engine) == 0
    assert sum(r.attempt == ATTEMPT_LARGE for r in engine.requests) == 2
    assert load_report(out)["totals"]["passes"]["large"] == {"capped": 3, "retried": 2, "wanted": 5}


def test_required_labels_are_configurable_and_clean_mode_never_retries(tmp_path):
    engine = ScriptedEngine(script=lambda r: PARAGRAPH + "\n\n" + TABLE)
    code, report, _ = cli(tmp_path, engine, "--mode", "grounded", "--required-labels", "table, Image")
    assert code == 0 and [r.vision for r in engine.requests] == ["gundam", "large"]   # no image block

    engine = ScriptedEngine(script=lambda r: PARAGRAPH)
    code, _, _ = cli(tmp_path / "clean", engine)
    assert code == 0 and [r.attempt for r in engine.requests] == [ATTEMPT_FIRST]


def test_an_engine_without_large_mode_skips_the_pass_with_a_warning(tmp_path):
    engine = ScriptedEngine(script=lambda r: PARAGRAPH, vision_modes=("gundam",))
    code, report, _ = cli(tmp_path, engine, "--mode", "grounded")
    assert code == 0 and [r.attempt for r in engine.requests] == [ATTEMPT_FIRST]
    log = next((tmp_path / "out" / "logs").glob("run-*.log")).read_text(encoding="utf-8")
    assert "cannot read pages in Large mode" in log


# --- ROI pass -------------------------------------------------------------------------------------------

ROI_PAGE = "\n\n".join([
    "<|ref|>text<|/ref|><|det|>[[520, 300, 950, 500]]<|/det|>\nright column, read second",
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 120]]<|/det|>\n# Τίτλος με λθος",
    "<|ref|>text<|/ref|><|det|>[[50, 300, 480, 500]]<|/det|>\nleft column, read first",
    TABLE,
])


def _roi_script(request: PageRequest) -> str:
    if request.attempt != ATTEMPT_ROI:
        return ROI_PAGE
    if request.prompt == MARKDOWN:
        return "<table><tr><td>42</td><td>43</td></tr></table>"
    return f"crop {request.part} re-read"


def test_roi_pass_rereads_each_region_and_merges_in_the_models_order(tmp_path):
    engine = ScriptedEngine(script=_roi_script)
    code, report, md = cli(tmp_path, engine, "--mode", "grounded", "--roi-pass", "--save-crops")
    assert code == 0
    crops = [r for r in engine.requests if r.attempt == ATTEMPT_ROI]
    assert len(crops) == 4 and len({r.request_id for r in crops}) == 4
    assert sorted(r.prompt for r in crops) == sorted([FREE_OCR, FREE_OCR, FREE_OCR, MARKDOWN])
    page_w, page_h = engine.requests[0].image.size
    assert all(r.image.size[0] * r.image.size[1] < page_w * page_h / 3 for r in crops)   # crops, not the page
    right, title, left, table = (md.index(s) for s in ("crop 1 re-read", "# crop 2", "crop 3 re-read", "<td>43"))
    assert right < title < left < table                     # the order the model wrote, the title's # kept
    assert "right column, read second" not in md and "left column, read first" not in md
    assert report["totals"]["passes"]["roi"] == {"crops": 4, "pages": 1, "replaced": 4}
    saved = sorted(p.name for p in (tmp_path / "out" / "a_assets").glob("*roi*"))
    assert len(saved) == 4 and saved[0].startswith("page-0001-roi-")


def test_roi_answers_that_fail_keep_the_original_region_text(tmp_path):
    def script(request):
        if request.attempt == ATTEMPT_ROI:
            return "" if request.prompt == FREE_OCR else "no table here"
        return ROI_PAGE
    code, report, md = cli(tmp_path, ScriptedEngine(script=script), "--mode", "grounded", "--roi-pass")
    assert code == 0 and "left column, read first" in md and "<td>42</td>" in md
    assert report["totals"]["passes"]["roi"] == {"crops": 4, "kept_original": 4, "pages": 1}


def test_roi_answers_with_errors_or_cut_at_max_tokens_keep_the_original(tmp_path, inline_render):
    def script(request):
        if request.attempt != ATTEMPT_ROI:
            return ROI_PAGE
        return ("half a sentence", "length") if request.prompt == FREE_OCR else ("", None)
    engine = ScriptedEngine(script=script)
    real_poll = engine.poll

    def poll():          # the table crop comes back as an engine error (input processing failed)
        return [o if o.part == 0 or o.text or o.finish_reason else
                replace(o, failure=Failure.INPUT_REJECTED, error="input processing failed") for o in real_poll()]
    engine.poll = poll
    code, report, md = cli(tmp_path, engine, "--mode", "grounded", "--roi-pass")
    assert code == 0 and "half a sentence" not in md
    assert "left column, read first" in md and "<td>42</td>" in md
    assert report["totals"]["passes"]["roi"] == {"crops": 4, "kept_original": 4, "pages": 1}


def test_crops_that_kill_the_engine_end_with_the_page_isolated_once(tmp_path, inline_render):
    """Every crop of the page kills the engine: after two deaths alone the page's other requests are not
    sent, the page keeps its first answer, and the run goes on well within --max-engine-restarts."""
    engine_log: list = []
    built = []

    def factory():
        built.append(1)
        return ScriptedEngine(script=_roi_script, log=engine_log, kill_if=lambda r: r.attempt == ATTEMPT_ROI)
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", [ENGLISH, GREEK])
    code = run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded", "--roi-pass"],
                   engine_factory=factory)
    report = load_report(out)
    assert code == 0 and report["interrupted"] is None
    assert report["engine"]["pages_isolated"] == 2                # both pages, once each
    assert report["engine"]["restarts"] <= 2 * 5
    md = (out / "a.md").read_text(encoding="utf-8")
    assert "left column, read first" in md and "----- Page 2 -----" in md


def test_roi_pass_needs_grounded_mode(tmp_path):
    assert run_cli(["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--roi-pass"]) == 2


# --- the page state machine, one answer at a time ----------------------------------------------------------

def _settings(**over) -> PassSettings:
    """The passes of a default run with an engine that has Large mode off, sampling and the 30/90 guard."""
    cfg = parse_config(["--input-dir", ".", "--output-dir", "o"])
    caps = EngineCaps(special_tokens=(), vision_modes=("gundam",), ngram=(30, 90), retry_sampling=True)
    return replace(settings_for(cfg, caps), **over)


def _work(settings: PassSettings, cap: int = 4) -> PageWork:
    request = PageRequest(PageKey(0, 1), Image.new("RGB", (1000, 1000), "white"), "<image>\nx")
    return PageWork(request, settings, LargeCap(cap))


def _answer(request: PageRequest, text: str, finish: str | None = "stop", failure: Failure | None = None,
            detail: str | None = None):
    return request.answer(text, len(text.split()), finish, failure, detail)


def test_an_engine_error_is_retried_once_with_the_same_request():
    work = _work(_settings())
    again = work.on_output(_answer(work.request, "", None, Failure.INPUT_REJECTED))
    assert [r.attempt for r in again] == [ATTEMPT_AGAIN] and again[0].prompt == work.request.prompt
    final = work.on_output(_answer(again[0], "", None, Failure.INPUT_REJECTED))
    assert isinstance(final, Final) and final.error == "input processing failed"


def test_a_page_that_kills_the_engine_is_not_retried():
    work = _work(_settings())
    final = work.on_output(_answer(work.request, "", None, Failure.KILLS_ENGINE))
    assert isinstance(final, Final) and final.failure is Failure.KILLS_ENGINE
    assert final.error == "engine crashed on this page"


@pytest.mark.parametrize("first,finish,retry_vision,sampled", [
    (LOOP, "stop", "gundam", True),
    ("Κείμενο που κόπηκε", "length", "gundam", True),
    ("", "stop", "large", False),
])
def test_retry_settings_follow_the_failure_shape(first, finish, retry_vision, sampled):
    work = _work(_settings(large=True))
    retry = work.on_output(_answer(work.request, first, finish))
    assert [(r.attempt, r.vision, r.sampling is not None) for r in retry] == [(ATTEMPT_RUNAWAY, retry_vision, sampled)]


def test_tokens_of_every_attempt_are_counted():
    work = _work(_settings(mode="grounded", large=True))
    large = work.on_output(_answer(work.request, PARAGRAPH))
    final = work.on_output(_answer(large[0], PARAGRAPH + "\n" + TABLE))
    assert isinstance(final, Final) and final.tokens == 2 * len(PARAGRAPH.split()) + len(TABLE.split())
