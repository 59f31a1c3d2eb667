"""The one loop detector of a page of model output, shared by the clean-up (ocr.postprocess) and the
runaway verdict (ocr.runaway). Pure functions; linear in the text (see `find_loops`)."""

from __future__ import annotations

import functools
import re
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel

from .grounding import iter_blocks

# --- thresholds (the why of each in find_loops' docstring) -----------------------------------------
MAX_PERIOD = 40               # lines per repeated unit
WINDOW = 48                   # recent lines (same digits) a new line is compared with
MAX_EDITS, SIMILAR = 4, 90    # near-duplicate lines: at most 4 insertions/deletions, ratio >= 90 (a typo, not
                              # another word: "the annual plan" / "the annual report" are two lines)
MAX_FUZZY_CHARS = 2000        # longer lines are matched exactly only (keeps each comparison bounded)
MIN_REPEATED_LINES = 10       # lines repeating the unit (the first copy not counted)
MIN_COPIES = 4                # copies of a unit of 2+ lines
MIN_LOOP_CHARS = 120          # characters in the repeated lines
MAX_GAP = 2                   # drifted lines in a row inside a loop
MIN_MATCH_SHARE = 0.7         # share of a loop's lines that repeat the unit exactly or nearly
MIN_SENTENCE_RUNS = 8         # DeepSeek-OCR-2's repeated sentence: back this many times
MIN_SENTENCE_CHARS, MIN_SENTENCE_WORDS = 30, 5
MIN_DEGENERATE_LINE = 400     # characters: one line that is a short unit repeated
MAX_UNIT_TOKENS, MIN_UNIT_COPIES, MIN_RUN_TOKENS = 40, 8, 120   # a unit repeated inside one line
MIN_AROUND_WORDS = 2          # words or numbers around such a run for the line to keep them
MAX_DEBRIS_AFTER = 2          # lines of loop debris taken after a sound loop's last copy
SAMPLE_HEAD, SAMPLE_TAIL = 200, 50   # lines of a loop that decide junk and vocabulary

_TOKEN_RE = re.compile(r"\\[A-Za-z]+|[^\W\d_]+|\d+|([^\w\s])\1*")  # a run of one mark is one token
_WORD_RE = re.compile(r"[^\W\d_]+")
_ALNUM_RE = re.compile(r"[^\W_]+")
_DIGITS_RE = re.compile(r"\d+")
_ANY_DIGIT_RE = re.compile(r"\d")
_NORM_DROP = str.maketrans("", "", " *_~`")   # spaces and emphasis marks: "**due**", "d ue" = "due"
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][^<>\n]*>")
_STRAY_TAG_RE = re.compile(r"<\|/?(?:ref|det)\|>")
TABLE_LINE_RE = re.compile(r"^\s*\||<t[rdh]\b|<table\b", re.IGNORECASE)


@dataclass(frozen=True)
class Loop:
    """One loop: `kind` "block" (a unit of `period` lines repeated) or "sentence" (one line back
    MIN_SENTENCE_RUNS+ times between others); `first` the content line where its kept copy starts
    (-1: junk, no copy kept); `removed` the content lines it removes."""
    kind: str
    period: int
    first: int
    removed: int


@dataclass(frozen=True)
class Loops:
    """What `find_loops` found: `drop`, the indices of text.split("\\n") to remove; `degenerate`, the
    long lines that are a short unit repeated (gone, or `trimmed` to the text around the repeats);
    `looped`, the other non-blank lines removed."""
    drop: frozenset[int]
    degenerate: int
    looped: int
    loops: tuple[Loop, ...]
    trimmed: dict[int, str] = field(default_factory=dict)   # line index -> the line without its repeated tail


def is_degenerate(segment: str, *, min_tokens: int = 80, max_ratio: float = 0.06) -> bool:
    """True when a long segment is a short unit repeated: few distinct token trigrams. O(len)."""
    if len(segment) < min_tokens:          # a token is a character at least
        return False
    tokens = [m.group(0) for m in _TOKEN_RE.finditer(segment)]
    if len(tokens) < min_tokens:
        return False
    trigrams = set(zip(tokens, tokens[1:], tokens[2:]))
    return len(trigrams) / (len(tokens) - 2) < max_ratio


def untagged(line: str) -> str:
    """A line without its grounding blocks and tags, whitespace collapsed: what loop checks compare."""
    if "<|" in line:
        pieces, pos = [], 0
        for block in iter_blocks(line):
            pieces.append(line[pos:block.start])
            pos = block.end
        line = _STRAY_TAG_RE.sub("", "".join(pieces) + line[pos:])
    return " ".join(line.split())


def words(key: str) -> set[str]:
    return {w.casefold() for w in _WORD_RE.findall(key)}


def _is_junk(key: str) -> bool:
    """A line no page holds: no letter or digit outside HTML tags (`<pre> <pre></pre>`, `=====`), or
    one word written twice or more and nothing else (`overline[[overline][||`)."""
    visible = _HTML_TAG_RE.sub("", key)
    if not any(ch.isalnum() for ch in visible):
        return True
    found = [w.casefold() for w in _WORD_RE.findall(visible)]
    return len(found) >= 2 and len(set(found)) == 1 and not any(ch.isdigit() for ch in visible)


def _repeats(line: str) -> tuple[list[re.Match[str]], int, int, int] | None:
    """The longest run of one unit of 1..MAX_UNIT_TOKENS tokens repeated MIN_UNIT_COPIES+ times over
    MIN_RUN_TOKENS+ tokens of the line: (tokens, first repeating token, last, unit length). Cost:
    MAX_UNIT_TOKENS numpy passes over the line's tokens."""
    tokens = list(_TOKEN_RE.finditer(line))
    if len(tokens) < MIN_RUN_TOKENS:
        return None
    names: dict[str, int] = {}
    ids = np.fromiter((names.setdefault(t.group(0), len(names)) for t in tokens), dtype=np.int64, count=len(tokens))
    best = None
    for q in range(1, min(MAX_UNIT_TOKENS, len(ids) // MIN_UNIT_COPIES) + 1):
        edges = np.diff(np.concatenate(([0], (ids[q:] == ids[:-q]).astype(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if not len(starts):
            continue
        k = int(np.argmax(ends - starts))
        length = int(ends[k] - starts[k])                  # tokens repeating the one q before
        if length + q >= MIN_RUN_TOKENS and length >= (MIN_UNIT_COPIES - 1) * q and (
                best is None or length > best[0]):
            best = (length, int(starts[k]), int(ends[k]) - 1 + q, q)
    return None if best is None else (tokens, *best[1:])


def _trim(line: str, tokens: list[re.Match[str]], first: int, last: int, q: int) -> str | None:
    """A long line with text around a unit repeated (`_repeats`) keeps that text and the unit's first copy,
    cut at whole copies (a table's closing tags after the last copy stay); None when fewer than
    MIN_AROUND_WORDS words or numbers outside tags surround the run (the line is the loop: it goes whole)."""
    end = first + q * ((last - first + 1) // q) - 1          # the last token of the last whole copy
    head, tail = line[:tokens[first].start()], line[tokens[end].end():]
    if len(_ALNUM_RE.findall(_HTML_TAG_RE.sub(" ", untagged(head + " " + tail)))) < MIN_AROUND_WORDS:
        return None
    return head + line[tokens[first].start():tokens[first + q - 1].end()] + tail


class _Lines:
    """The page's lines with what the detector needs of each content line (non-blank after tags)."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        keys = [untagged(line) for line in self.lines]
        self.trimmed: dict[int, str] = {}          # lines that keep their text around a repeated tail
        self.degenerate = []                       # lines that go whole
        for i, k in enumerate(keys):
            if len(k) >= MIN_DEGENERATE_LINE:
                found = _repeats(self.lines[i])
                trimmed = None if found is None else _trim(self.lines[i], *found)
                if trimmed is not None:
                    self.trimmed[i] = trimmed
                    keys[i] = untagged(trimmed)
                elif found is not None or is_degenerate(k):
                    self.degenerate.append(i)
        skip = set(self.degenerate)
        self.index = [i for i, k in enumerate(keys) if k and i not in skip]   # content line -> line
        self.content = set(self.index)
        self.keys = [keys[i] for i in self.index]
        self.table = [bool(TABLE_LINE_RE.search(k)) for k in self.keys]
        self.norms = [k.translate(_NORM_DROP).casefold() for k in self.keys]  # keys: one space between words
        self.ids = self._cluster()
        self.lens = np.array([len(k) for k in self.keys], dtype=np.int64)

    def _cluster(self) -> np.ndarray:
        """One id per content line; near-duplicates share it (`_near` rules, in that order): the same
        normalised text; the same words and numbers; or, among the WINDOW latest lines with the same
        numbers, one a few edits away. Table rows match exactly only (rows of numbers look alike)."""
        exact: dict[str, int] = {}
        bags: dict[tuple[str, frozenset[str]], int] = {}
        recent: dict[str, tuple[deque[str], deque[int]]] = {}
        ids = np.empty(len(self.keys), dtype=np.int64)
        for j, norm in enumerate(self.norms):
            found = exact.get(norm)
            if found is None and not self.table[j]:
                digits = " ".join(_DIGITS_RE.findall(norm)) if _ANY_DIGIT_RE.search(norm) else ""
                bag = (digits, frozenset(words(self.keys[j])))
                found = bags.get(bag) if bag[1] else None
                norms, owners = recent.setdefault(digits, (deque(maxlen=WINDOW), deque(maxlen=WINDOW)))
                if found is None and norms and len(norm) <= MAX_FUZZY_CHARS:
                    best = process.extractOne(norm, norms, scorer=Indel.distance, score_cutoff=MAX_EDITS)
                    if best is not None and fuzz.ratio(norm, best[0]) >= SIMILAR:
                        found = owners[best[2]]
                found = len(exact) + len(bags) if found is None else found
                if bag[1]:
                    bags.setdefault(bag, found)
                norms.append(norm)
                owners.append(found)
            elif found is None:
                found = len(exact) + len(bags)
            exact.setdefault(norm, found)
            ids[j] = found
        return ids


def _block_loops(page: _Lines, claimed: np.ndarray) -> list[tuple[int, int, int]]:
    """(period, first repeated content line, last) of each unit of 1..MAX_PERIOD lines repeated.

    For each period p, line j "repeats" when it has the id of line j - p; a loop is a stretch of
    such lines with at most MAX_GAP drifted lines in a row. Periods are tried shortest first and a
    stretch mostly inside an earlier loop is skipped, so a loop is reported once, at its own period.
    Cost: MAX_PERIOD vectorised passes over the ids."""
    ids, n, found = page.ids, len(page.ids), []
    for p in range(1, min(MAX_PERIOD, n - 1) + 1):
        need = max(MIN_REPEATED_LINES, (MIN_COPIES - 1) * p)
        pos = np.flatnonzero(ids[p:] == ids[:-p]) + p          # content lines repeating line j - p
        if len(pos) < need:
            continue
        step = np.diff(pos)
        # across a gap of drifted lines the stretch goes on only with the unit it had before the gap
        after = pos[1:]
        before = after - -(-step // p) * p                     # same place in the unit, before the gap
        same = ids[after] == ids[np.maximum(before, 0)]
        starts = np.concatenate(([0], np.flatnonzero((step > MAX_GAP + 1) | ((step > 1) & ~same)) + 1))
        ends = np.concatenate((starts[1:], [len(pos)]))
        for s, e in zip(starts[ends - starts >= need], ends[ends - starts >= need]):
            seg = pos[s:e]
            first, last = int(seg[0]), int(seg[-1])
            if (len(seg) < MIN_MATCH_SHARE * (last - first + 1) or int(page.lens[seg].sum()) < MIN_LOOP_CHARS
                    or claimed[first:last + 1].mean() > 0.5
                    or (p > 1 and len(set(ids[first - p:first].tolist())) < 2)):
                continue
            claimed[first - p:last + 1] = True
            found.append((p, first, last))
    return found


def _sentence_loops(page: _Lines, claimed: np.ndarray) -> list[list[int]]:
    """The later copies (same id) of each sentence back MIN_SENTENCE_RUNS+ times; copies right after a
    copy count once (back-to-back repeats are the block rule's: 9 in a row are content)."""
    where: dict[int, list[int]] = {}
    for j, norm in enumerate(page.norms):
        if not claimed[j] and not page.table[j] and len(norm) >= MIN_SENTENCE_CHARS:
            where.setdefault(int(page.ids[j]), []).append(j)
    out = []
    for at in where.values():
        if len(at) < MIN_SENTENCE_RUNS or len(_WORD_RE.findall(page.keys[at[0]])) < MIN_SENTENCE_WORDS:
            continue
        runs = 1 + sum(1 for a, b in zip(at, at[1:]) if b != a + 1)
        if runs >= MIN_SENTENCE_RUNS:
            out.append(at[1:])
    return out


def _debris(page: _Lines, j: int, vocab: set[str]) -> bool:
    """Loop debris: a line using no word the loop does not use; with no word, no digit either.
    Table rows are never debris."""
    key = page.keys[j]
    if page.table[j]:
        return False
    found = words(key)
    return found <= vocab if found else not any(ch.isdigit() for ch in key)


def _sample(lo: int, hi: int) -> list[int]:
    """The lines of a loop that stand for it: its first SAMPLE_HEAD and last SAMPLE_TAIL (bounded work)."""
    return list(range(lo, min(hi, lo + SAMPLE_HEAD) + 1)) + list(range(max(lo + SAMPLE_HEAD + 1, hi - SAMPLE_TAIL),
                                                                     hi + 1))


def _widen(page: _Lines, lo: int, hi: int, junk: bool, claimed: np.ndarray) -> tuple[int, int]:
    """A junk loop takes the debris on both sides; a sound one at most MAX_DEBRIS_AFTER lines after."""
    vocab = set().union(*(words(page.keys[j]) for j in _sample(lo, hi)))
    n = len(page.keys)
    if junk:
        while lo > 0 and not claimed[lo - 1] and _debris(page, lo - 1, vocab):
            lo -= 1
    limit = n if junk else min(n, hi + 1 + MAX_DEBRIS_AFTER)
    while hi + 1 < limit and not claimed[hi + 1] and _debris(page, hi + 1, vocab):
        hi += 1
    return lo, hi


def _junk_share(page: _Lines, lo: int, hi: int) -> float:
    sample = _sample(lo, hi)
    return sum(_is_junk(page.keys[j]) for j in sample) / len(sample)


@functools.lru_cache(maxsize=16)
def find_loops(text: str) -> Loops:
    """Every generation loop of a page, and the lines that go with it.

    Shapes: a unit of 1 to MAX_UNIT_TOKENS tokens repeated inside a long line (the line keeps the text
    around the run and the unit's first copy; with no text around, it goes whole); a unit of 1 to
    MAX_PERIOD lines repeated (a 5-line matrix 100 times, a receipt's 4-line
    totals block 4 times, one sentence 11+ times), its copies drifting a little (`_Lines._cluster`:
    "**due**", "d ue", "due due due", a typo; never another number or another word); a sentence of
    MIN_SENTENCE_WORDS+ words back MIN_SENTENCE_RUNS+ times between other lines (DeepSeek-OCR-2); a long
    line that is a short unit repeated. The first copy of a unit is kept with its grounding block,
    the later ones go with theirs - unless the unit is junk (`_is_junk`: markup, one word over and
    over), when every copy goes, with the debris around it. A unit needs MIN_REPEATED_LINES repeated
    lines (a form's field label 10 times is content) and MIN_COPIES copies, and MIN_LOOP_CHARS
    characters of repeats.

    Linear: each line is normalised once, looked up in two dicts and compared with at most WINDOW earlier
    lines by rapidfuzz (C, bit-parallel, each comparison bounded by MAX_FUZZY_CHARS); the period search is MAX_PERIOD
    numpy passes over the line ids; the sentence count is one dict pass.
    """
    page = _Lines(text)
    n = len(page.keys)
    claimed = np.zeros(n, dtype=bool)
    removed = np.zeros(n, dtype=bool)
    loops = []
    for period, first, last in _block_loops(page, claimed):
        junk = _junk_share(page, first - period, last) >= 0.5
        lo, hi = _widen(page, first - period if junk else first, last, junk, claimed)
        claimed[lo:hi + 1] = True
        removed[lo:hi + 1] = True
        loops.append(Loop("block", period, -1 if junk else first - period, hi - lo + 1))
    for copies in _sentence_loops(page, claimed):
        removed[copies] = True
        loops.append(Loop("sentence", 1, copies[0], len(copies)))
    drop = set(page.degenerate)
    looped = _lines_of(page, np.flatnonzero(removed).tolist(), drop)
    trimmed = {i: t for i, t in page.trimmed.items() if i not in drop}
    return Loops(frozenset(drop), len(page.degenerate) + len(trimmed), looped, tuple(loops), trimmed)


def _lines_of(page: _Lines, content: list[int], drop: set[int]) -> int:
    """Add to `drop` the lines of the removed content lines: each with the non-blank lines right
    above it (its grounding block), and, after the page's last content line, the rest of the page
    (a block cut off at --max-tokens). Returns how many non-blank lines that adds."""
    before = len(drop)
    lines = page.lines
    for j in content:
        i = page.index[j]
        drop.add(i)
        k = i - 1
        while k >= 0 and lines[k].strip() and k not in drop and k not in page.content:
            drop.add(k)
            k -= 1
    if content and content[-1] == len(page.index) - 1:
        drop.update(i for i in range(page.index[-1] + 1, len(lines)) if lines[i].strip())
    return len(drop) - before


def remove_loops(text: str) -> tuple[str, int]:
    """The text without its loops (`find_loops`), and the non-blank lines removed."""
    return without(text, find_loops(text))


def without(text: str, found: Loops) -> tuple[str, int]:
    """The text without the loops `find_loops(text)` found, and the non-blank lines removed."""
    if not found.drop and not found.trimmed:
        return text, 0
    lines = text.split("\n")   # every line in drop is non-blank
    kept = (found.trimmed.get(i, line) for i, line in enumerate(lines) if i not in found.drop)
    return "\n".join(kept), len(found.drop) + len(found.trimmed)
