"""Runaway detection, the retry settings and the choice between two attempts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ocr.runaway import (Attempt, Runaway, better, counters, distinct_words, is_empty, loop_lines,
                         retry_sampling, retry_vision, verdict)
from conftest import shared

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "raw_outputs"
LOOPING = {"01_runaway-overline-garbage-de.txt", "22_det-mmd-page-runaway-pre-tags-hr.txt"}
EOS = "<｜end▁of▁sentence｜>"
PAGE = ("# Annual report\n\nThe committee met on 12 March and approved the budget.\n\n"
        "Revenue grew by four percent while costs stayed flat.\n\nSigned, the chair.")


def raw(name: str) -> str:
    return shared(RAW / name).read_text(encoding="utf-8")


def looping_page(repeats: int = 30) -> str:
    return PAGE + "\n\n" + "\n\n".join(["Die Funktion f ist stetig auf dem Intervall."] * repeats)


# --- verdict: one scripted input per failure shape ----------------------------------------------------

def test_sound_page_has_no_verdict():
    assert verdict(PAGE, "stop", 6144) is None


def test_truncated_output_is_hit_max_tokens():
    v = verdict(PAGE, "length", 6144)
    assert v == Runaway("hit_max_tokens", ("hit_max_tokens",), detail="cut at --max-tokens 6144")
    assert v.counter == "runaway_hit_max_tokens"


@pytest.mark.parametrize("finish", ["stop", None, "abort"])
def test_only_length_counts_as_truncation(finish):
    assert verdict(PAGE, finish, 6144) is None


def test_repeated_lines_are_a_loop():
    v = verdict(looping_page(), "stop", 6144)
    assert v.reason == "repeated_lines" and v.reasons == ("repeated_lines",)
    assert v.repeated_lines >= 28


def test_a_loop_that_ran_to_max_tokens_names_the_loop_first():
    v = verdict(looping_page(), "length", 6144)
    assert v.reason == "repeated_lines" and v.reasons == ("repeated_lines", "hit_max_tokens")


def test_nine_repeats_are_not_a_loop():
    """Below postprocess.MIN_LOOP_LINES: a form with a repeated field label is content."""
    assert verdict(looping_page(repeats=9), "stop", 6144) is None


def test_repeated_ngrams_inside_one_line():
    text = PAGE + "\n\n" + "overline[[overline][|| " * 40
    v = verdict(text, "stop", 6144)
    assert v.reason == "repeated_ngrams" and v.repeated_ngrams == 1 and v.repeated_lines == 0


def test_repetitive_display_math_is_repeated_ngrams():
    wall = "\\[\n" + " \\\\ ".join(["a_{1} + b"] * 60) + "\n\\]"
    assert verdict(PAGE + "\n\n" + wall, "stop", 6144).reason == "repeated_ngrams"


def test_numeric_table_rows_are_not_a_loop():
    rows = "\n".join(f"| {i} | 0.{i:02d} | 1.00 |" for i in range(40))
    assert verdict("| n | p | q |\n|---|---|---|\n" + rows, "stop", 6144) is None


@pytest.mark.parametrize("text", ["", "   \n\n ", EOS, f"<image>\n{EOS}", "<|ref|>text<|/ref|>\n\n<pre></pre>"])
def test_empty_answers(text):
    v = verdict(text, "stop", 6144)
    assert v.reason == "empty" and v.counter == "runaway_empty"


def test_an_image_only_page_is_not_empty():
    assert verdict("<|ref|>image<|/ref|><|det|>[[10, 10, 990, 990]]<|/det|>\n", "stop", 6144) is None


def test_text_inside_refs_is_content():
    """The `OCR this image.` style: the recognised text sits inside the ref."""
    text = "<|ref|>Invoice 2024<|/ref|><|det|>[[1, 2, 300, 40]]<|/det|>"
    assert not is_empty(text) and distinct_words(text) == 2


# --- verdict on real DeepSeek-OCR outputs -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOOPING))
def test_real_loops_are_flagged(name):
    v = verdict(raw(name), "stop", 8192)
    assert v is not None and v.reason == "repeated_lines" and v.repeated_lines > 100


def test_real_truncated_loop_names_both_reasons():
    """Sample 22 ends mid-tag at max tokens, inside a loop of <pre> blocks."""
    v = verdict(raw("22_det-mmd-page-runaway-pre-tags-hr.txt"), "length", 8192)
    assert v.reasons == ("repeated_lines", "hit_max_tokens")


def test_real_sound_outputs_are_not_flagged():
    shared(RAW)
    names = sorted(p.name for p in RAW.glob("*.txt") if p.name not in LOOPING)
    assert len(names) >= 10
    flagged = {n: verdict(raw(n), "stop", 8192) for n in names}
    assert {n: v for n, v in flagged.items() if v is not None} == {}


def test_real_cut_off_output_is_flagged_only_by_finish_reason():
    """Sample 26 ends mid-sentence: only the finish reason can tell."""
    text = raw("26_ollama-recipe-table-truncated-en.txt")
    assert verdict(text, "stop", 4096) is None
    assert verdict(text, "length", 4096).reason == "hit_max_tokens"


# --- better -------------------------------------------------------------------------------------------

def test_content_beats_empty():
    full, empty = Attempt(PAGE, "length", 6144), Attempt(EOS, "stop", 1)
    assert better(empty, full) is full and better(full, empty) is full


def test_finished_beats_cut_off():
    first = Attempt(looping_page(), "length", 6144)
    retry = Attempt(PAGE, "stop", 80)
    assert better(first, retry) is retry


def test_a_retry_that_stopped_early_loses():
    """Finished, but with less than half the distinct words of the cut-off answer."""
    first = Attempt(PAGE, "length", 6144)
    retry = Attempt("# Annual report", "stop", 4)
    assert better(first, retry) is first


def test_fewer_loop_lines_win_when_both_finish_alike():
    short_loop = Attempt(looping_page(12), "length", 6144)
    long_loop = Attempt(looping_page(40), "length", 6144)
    assert loop_lines(short_loop.text) < loop_lines(long_loop.text)
    assert better(long_loop, short_loop) is short_loop


def test_more_distinct_words_win_then_the_first():
    a = Attempt(PAGE, "stop", 50)
    b = Attempt(PAGE + "\n\nAppendix with seven more distinct words here.", "stop", 60)
    assert better(a, b) is b and better(b, a) is b
    twin = Attempt(PAGE, "stop", 50)
    assert better(a, twin) is a and better(twin, a) is twin


def test_real_loop_against_its_clean_retry():
    looped = raw("01_runaway-overline-garbage-de.txt")
    clean = looped.split("overline[[overline]")[0]
    first, retry = Attempt(looped, "length", 8192), Attempt(clean, "stop", 900)
    assert better(first, retry) is retry


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=400), st.text(max_size=400),
       st.sampled_from(["stop", "length", None]), st.sampled_from(["stop", "length", None]))
def test_better_is_one_of_its_inputs_and_verdict_never_raises(t1, t2, f1, f2):
    a, b = Attempt(t1, f1), Attempt(t2, f2)
    assert better(a, b) in (a, b)
    v = verdict(t1, f1, 100)
    assert v is None or v.reason in v.reasons


# --- retry settings and counters ----------------------------------------------------------------------

def test_loop_retry_samples_mildly_with_a_tighter_guard():
    s = retry_sampling(verdict(looping_page(), "length", 6144), ngram_size=30, ngram_window=90)
    assert (s.temperature, s.ngram_size, s.window) == (0.3, 20, 90) and s.seed is not None


def test_guard_floor_and_off():
    loop = Runaway("repeated_lines", ("repeated_lines",))
    assert retry_sampling(loop, ngram_size=12, ngram_window=8).ngram_size == 10
    assert retry_sampling(loop, ngram_size=12, ngram_window=8).window == 10
    assert retry_sampling(loop, ngram_size=0, ngram_window=90).ngram_size == 0


def test_empty_retry_stays_greedy_and_goes_large_when_it_can():
    empty = verdict("", "stop", 6144)
    s = retry_sampling(empty, ngram_size=30, ngram_window=90)
    assert (s.temperature, s.ngram_size, s.window) == (0.0, 30, 90)
    assert retry_vision(empty, large_available=True) == "large"
    assert retry_vision(empty, large_available=False) == "gundam"
    assert retry_vision(verdict(looping_page(), "stop", 1), large_available=True) == "gundam"


def test_counters():
    first = verdict(looping_page(), "length", 6144)
    assert counters(None, False, False, None) == {}
    assert counters(first, True, True, None) == {"runaway_pages": 1, "runaway_repeated_lines": 1,
                                                 "runaway_retried": 1, "runaway_improved": 1}
    assert counters(first, True, False, first) == {"runaway_pages": 1, "runaway_repeated_lines": 1,
                                                   "runaway_retried": 1, "runaway_unresolved": 1}
