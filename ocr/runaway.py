"""Runaway output: decide whether a page's raw output needs a second try, how to try again, and which of
two tries to keep. Pure functions over the raw engine text; no engine imports.

A page is a runaway when (`verdict`):

- `repeated_lines`: a generation loop: a unit of 1 to 40 lines repeated (drift tolerated) or a sentence back
  8+ times between other lines (`ocr.loops.find_loops`, the detector that later removes it from the
  Markdown: a page whose loop is removed is a runaway page);
- `repeated_ngrams`: a short unit repeated inside one long line, or a repetitive display-math wall
  (`postprocess._is_degenerate` / `drop_runaway_latex`);
- `empty`: nothing readable came back (only special tokens, tags or whitespace; no layout box either) -
  the runner never sends blank pages to the engine, so an empty answer is a failure;
- `hit_max_tokens`: vLLM's finish_reason is "length" (the output was cut at --max-tokens, or at the
  model's context); read from `CompletionOutput.finish_reason`, never `stop_reason` (which names the
  stop string or token).

The record names one `reason` (first of: repeated_lines, repeated_ngrams, empty, hit_max_tokens - a loop
explains a cut-off output, not the reverse) and every reason that applied.

Retry (`retry_sampling`, `retry_vision`): once. A loop or a cut-off output is a decoding failure, and
greedy decoding of the same image repeats it, so the retry samples mildly (temperature 0.3, fixed seed)
with a tighter n-gram guard (size 2/3 of the configured one, at least 10; same window). An empty answer
is a reading failure: the retry keeps greedy decoding and looks at the page in the 1280 Large vision mode
when the engine offers it (see `ocr.large_mode`).

Keeping one (`better`), in order:
1. an attempt with content beats an empty one;
2. an attempt that finished ("stop") beats one that did not ("length", None, ...) - unless the
   finished one holds less than half the distinct words of the other (a retry that stopped early);
3. fewer runaway lines (the lines the post-processing would drop as loop output);
4. more distinct words;
5. otherwise the first attempt (greedy, reproducible).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import loops, postprocess
from .grounding import iter_blocks

REASONS = ("repeated_lines", "repeated_ngrams", "empty", "hit_max_tokens")
RETRY_TEMPERATURE = 0.3
RETRY_SEED = 1234
MIN_RETRY_NGRAM = 10
MIN_CONTENT_RATIO = 0.5       # rule 2: a finished attempt with less than this share of words loses
# Counter names (PageResult.counters; the run report sums them).
COUNTERS = (
    "runaway_pages",               # pages with a verdict (first attempt)
    "runaway_hit_max_tokens", "runaway_repeated_lines", "runaway_repeated_ngrams", "runaway_empty",
    "runaway_retried",             # a retry was sent
    "runaway_improved",            # the retry was kept
    "runaway_unresolved",          # the kept attempt still has a verdict
)

_HTML_TAG_RE = re.compile(r"</?[A-Za-z][^<>\n]*>")
_WORD_RE = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Runaway:
    """Why a page's output is not to be trusted as it is."""
    reason: str                    # one of REASONS: the main one
    reasons: tuple[str, ...]       # every reason that applied, in REASONS order
    repeated_lines: int = 0        # lines in loops (what drop_runaway_lines removes)
    repeated_ngrams: int = 0       # degenerate long lines and repetitive math blocks
    detail: str = ""

    @property
    def counter(self) -> str:
        return f"runaway_{self.reason}"


@dataclass(frozen=True)
class Judged:
    """What `verdict` and `better` need to know of one answer, measured once (`judge`: in a post worker,
    beside the control loop)."""
    verdict: Runaway | None
    words: int                     # distinct_words
    empty: bool                    # is_empty
    runs: int                      # loop_lines + ngram_runs


@dataclass(frozen=True)
class Attempt:
    """One engine answer for a page, and what was measured of it when that was done already."""
    text: str
    finish_reason: str | None
    tokens: int = 0
    judged: Judged | None = None


@dataclass(frozen=True)
class RetrySampling:
    """Settings for the retry; the engine builds its SamplingParams from them."""
    temperature: float
    ngram_size: int                # 0: no n-gram guard
    window: int
    seed: int | None = RETRY_SEED
    top_p: float = 1.0


# --- measures -------------------------------------------------------------------------------------

def loop_lines(text: str) -> int:
    """Lines the post-processing drops as loop output (`ocr.loops.find_loops`, long degenerate lines aside)."""
    return loops.find_loops(text).looped


def _degenerate_lines(text: str) -> int:
    """Long lines that are a short unit repeated (one shape of `ocr.loops.find_loops`)."""
    return loops.find_loops(text).degenerate


def ngram_runs(text: str) -> int:
    """Degenerate long lines plus repetitive display-math / TikZ blocks."""
    return _degenerate_lines(text) + postprocess.drop_runaway_latex(text)[1]


def _visible(text: str) -> str:
    """The raw text without special tokens, grounding blocks (layout labels, boxes) and HTML tags."""
    text, _ = postprocess.strip_special_tokens(text)
    text, _ = postprocess.strip_grounding(text)     # keeps recognised text inside a ref, never a label
    return _HTML_TAG_RE.sub("", text)


def is_empty(text: str) -> bool:
    """No letter or digit outside tags and special tokens, and no layout box (an image-only page has one)."""
    if any(block.boxes for block in iter_blocks(text)):
        return False
    return not any(ch.isalnum() for ch in _visible(text))


def distinct_words(text: str) -> int:
    """Distinct words (letters or digits, case-folded) outside tags, loop output removed."""
    return _distinct_words(loops.remove_loops(text)[0])


def _distinct_words(kept: str) -> int:
    return len(set(_WORD_RE.findall(_visible(kept).casefold())))


# --- decisions ------------------------------------------------------------------------------------

def judge(text: str, finish_reason: str | None, max_tokens: int) -> Judged:
    """The verdict and the measures `better` compares."""
    found = loops.find_loops(text)
    lines, ngrams, empty = _measure(text, found)
    return Judged(_verdict(lines, ngrams, empty, finish_reason, max_tokens),
                  _distinct_words(loops.without(text, found)[0]), empty, lines + ngrams)


def verdict(text: str, finish_reason: str | None, max_tokens: int) -> Runaway | None:
    """Why this output should be retried, or None when it looks sound."""
    return _verdict(*_measure(text, loops.find_loops(text)), finish_reason, max_tokens)


def _measure(text: str, found: loops.Loops) -> tuple[int, int, bool]:
    """loop_lines, ngram_runs and is_empty, from one pass of the loop detector (`found`)."""
    return found.looped, found.degenerate + postprocess.drop_runaway_latex(text)[1], is_empty(text)


def _verdict(lines: int, ngrams: int, empty: bool, finish_reason: str | None, max_tokens: int) -> Runaway | None:
    found, details = [], []
    if lines:
        found.append("repeated_lines")
        details.append(f"{lines} lines in a loop")
    if ngrams:
        found.append("repeated_ngrams")
        details.append(f"{ngrams} repetitive runs")
    if empty:
        found.append("empty")
        details.append("no text")
    if finish_reason == "length":
        found.append("hit_max_tokens")
        details.append(f"cut at --max-tokens {max_tokens}")
    if not found:
        return None
    return Runaway(reason=found[0], reasons=tuple(found), repeated_lines=lines, repeated_ngrams=ngrams,
                   detail="; ".join(details))


def better(a: Attempt, b: Attempt) -> Attempt:
    """The attempt to keep (rules in the module docstring); ties keep `a`."""
    ja, jb = _judged(a), _judged(b)
    words_a, words_b, empty_a, empty_b = ja.words, jb.words, ja.empty, jb.empty
    if empty_a != empty_b:
        return b if empty_a else a
    stop_a, stop_b = a.finish_reason == "stop", b.finish_reason == "stop"
    if stop_a != stop_b:
        done, cut = (a, b) if stop_a else (b, a)
        done_words, cut_words = (words_a, words_b) if stop_a else (words_b, words_a)
        return done if done_words >= MIN_CONTENT_RATIO * cut_words else cut
    runs_a, runs_b = ja.runs, jb.runs
    if runs_a != runs_b:
        return a if runs_a < runs_b else b
    if words_a != words_b:
        return a if words_a > words_b else b
    return a


def _judged(a: Attempt) -> Judged:
    return a.judged or judge(a.text, a.finish_reason, 0)


def retry_sampling(runaway: Runaway, *, ngram_size: int, ngram_window: int,
                   temperature: float = RETRY_TEMPERATURE, large_available: bool = True) -> RetrySampling:
    """Sampling for the one retry: mild temperature and a tighter guard for loops and cut-off output;
    greedy with the configured guard for an empty answer when Large mode can read it instead (without
    Large mode an empty answer is sampled like a loop: greedy would repeat it).
    A guard turned off (ngram_size 0) stays off."""
    if runaway.reason == "empty" and large_available:
        return RetrySampling(temperature=0.0, ngram_size=ngram_size, window=ngram_window, seed=None)
    size = max(MIN_RETRY_NGRAM, ngram_size * 2 // 3) if ngram_size > 0 else 0
    return RetrySampling(temperature=temperature, ngram_size=size, window=max(ngram_window, size))


def retry_vision(runaway: Runaway, *, large_available: bool) -> str:
    """The vision mode of the retry: "large" for an empty answer when the engine offers it, else "gundam"."""
    return "large" if runaway.reason == "empty" and large_available else "gundam"


def counters(first: Runaway | None, retried: bool, kept_retry: bool, final: Runaway | None) -> dict[str, int]:
    """The page's runaway counters (names in COUNTERS), non-zero only."""
    out: dict[str, int] = {}
    if first is not None:
        out["runaway_pages"] = 1
        out[first.counter] = 1
        if retried:
            out["runaway_retried"] = 1
        if kept_retry:
            out["runaway_improved"] = 1
        if final is not None:
            out["runaway_unresolved"] = 1
    return out
