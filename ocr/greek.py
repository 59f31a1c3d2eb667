"""Greek quality signals (mixed scripts, LaTeX-ified Greek, σ/ς, NFC, script shares) and safe repairs.

The exact rules are in the docstrings of `page_stats` and `repair`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache
from itertools import groupby

STAT_KEYS = (
    "mixed_script_words",
    "latex_greek",
    "final_sigma_medial",
    "non_nfc",
    "greek_letters",
    "latin_letters",
    "other_letters",
    "greek_share",
    "latin_share",
    "other_share",
)
REPAIR_COUNTERS = ("lookalikes_to_greek", "lookalikes_to_latin", "final_sigma_fixed", "nfc_normalized")

# Exact look-alikes only: the 14 capitals that are drawn identically, plus lower-case o/ο.
# Near look-alikes (v/ν, u/υ, i/ι, k/κ, x/χ, p/ρ, a/α, ...) differ in print and are never swapped.
LATIN_TO_GREEK = dict(zip("ABEZHIKMNOPTYXo", "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧο"))
GREEK_TO_LATIN = {greek: latin for latin, greek in LATIN_TO_GREEK.items()}
_SWAP = {"greek": LATIN_TO_GREEK, "latin": GREEK_TO_LATIN}
# Latin letters that resemble some Greek letter; a Latin word needs a letter outside this set
# before Greek look-alikes in it are turned Latin ("Νai" may be a garbled Greek "Ναι").
_WEAK_LATIN = frozenset("ABEZHIKMNOPTYX" + "aiknoptuvwxy")
# Two letters cannot tell a Greek word from notation (ΔT, MΩ, Kα, Hα), so a two-letter word
# with one letter of each script is repaired only into one of these Greek words (ΠΕ is the civil
# service grade; ΔΕ is left out because ΔE, the energy difference, is common).
_SHORT_GREEK = frozenset("αν απ αφ εκ εν θα κι μα με μη να οι πε σε τα τη τι το υπ".split())
_CONTEXT_MIN = 3  # distinctive letters a line needs before it can decide on its own
_CONTEXT_RATIO = 3  # the winning script needs this many times the other's distinctive letters

_HYPHENS = "-\u00ad\u2010\u2011\u2012\u2013"
_APOSTROPHES = "'`\u00b4\u02b9\u02bc\u0374\u0384\u1fbd\u1fbf\u2018\u2019\u2032"
_NFC_KEEP = frozenset("\u1fef")  # GREEK VARIA: its NFC form is "`", a Markdown code delimiter

# Spans repair never touches. The leftmost match wins; at one position, the earlier alternative.
_PROTECTED = re.compile(
    r"(?P<fence>^[ \t]*(?P<fchar>`{3,}|~{3,}).*?(?:\n[ \t]*(?P=fchar)[ \t]*(?=\n|\Z)|\Z))"
    r"|(?P<code>(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`))"
    r"|(?P<math>\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<!\\)\$(?!\s)[^$\n]+?(?<![\s\\])\$(?!\d))"
    r"|(?P<tag><!--.*?-->|</?[A-Za-z][^<>]*>|<\|[^<>|]*\|>)"
    r"|(?P<url>\b(?:https?|ftp)://\S+|\bwww\.\S+|\]\([^)\s]*\))"
    r"|(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<cmd>\\[A-Za-z]+)",
    re.DOTALL | re.MULTILINE,
)
_CHUNK = re.compile(r"\S+")

_GREEK_NAMES = (
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa varkappa lambda mu nu xi "
    "omicron pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega digamma "
    "Alpha Beta Gamma Delta Epsilon Zeta Eta Theta Iota Kappa Lambda Mu Nu Xi Omicron Pi Rho Sigma Tau "
    "Upsilon Phi Chi Psi Omega"
).split()
_GREEK_CMD = r"\\(?:" + "|".join(_GREEK_NAMES) + r")(?![A-Za-z])"
_TONOS_ACCENT = (
    r"\\(?:acute|grave)\s*\{\s*(?:" + _GREEK_CMD + r"|[A-Za-z])\s*\}|\\['`](?:\{[A-Za-z]\}|[A-Za-z])"
)
_OTHER_ACCENT = r"\\(?:tilde|breve|bar|ddot|dot|hat|check|mathring|vec)\s*\{\s*" + _GREEK_CMD + r"\s*\}"
_LATEX_TOKEN = re.compile(f"(?P<tonos>{_TONOS_ACCENT})|{_OTHER_ACCENT}|{_GREEK_CMD}")
_ANY_TOKEN = f"(?:{_TONOS_ACCENT}|{_OTHER_ACCENT}|{_GREEK_CMD})"
# Tokens glued together, or split only by "{}" or by "$"/"$$" (one math span per letter).
_LATEX_RUN = re.compile(_ANY_TOKEN + r"(?:(?:\{\}|\$\$?)?" + _ANY_TOKEN + ")*")


@lru_cache(maxsize=8192)
def _script(ch: str) -> str | None:
    """'greek', 'latin' or 'other' for a letter (modifier letters excluded), None otherwise."""
    if unicodedata.category(ch) not in ("Lu", "Ll", "Lt", "Lo"):
        return None
    name = unicodedata.name(ch, "")
    if name.startswith("GREEK"):
        return "greek"
    return "latin" if name.startswith("LATIN") else "other"


@lru_cache(maxsize=8192)
def _distinctive(ch: str) -> str | None:
    """Script of a letter whose base letter has no exact look-alike in the other script."""
    script = _script(ch)
    if script not in ("greek", "latin"):
        return None
    base = unicodedata.normalize("NFD", ch)[0]
    return None if base in LATIN_TO_GREEK or base in GREEK_TO_LATIN else script


@lru_cache(maxsize=8192)
def _is_word_char(ch: str) -> bool:
    return _script(ch) is not None or unicodedata.category(ch).startswith("M")


def _attaches(ch: str) -> bool:
    """True for characters NFC may merge into the preceding one (marks, Hangul vowel/final jamo)."""
    return unicodedata.category(ch).startswith("M") or "\u1160" <= ch <= "\u11ff"


def _protected_spans(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.lastgroup or "") for m in _PROTECTED.finditer(text)]


def _unprotected(text: str, spans: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    segments, pos = [], 0
    for start, end, _ in spans:
        if start > pos:
            segments.append((pos, start))
        pos = end
    if pos < len(text):
        segments.append((pos, len(text)))
    return segments


def _clusters(text: str, segments: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Spans that NFC never merges across: a character plus the marks/jamo attached to it."""
    for seg_start, seg_end in segments:
        start = seg_start
        for pos in range(seg_start + 1, seg_end):
            if not _attaches(text[pos]):
                yield start, pos
                start = pos
        yield start, seg_end


def _words(text: str, segments: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Maximal runs of letters and combining marks in the unprotected text."""
    for seg_start, seg_end in segments:
        pos = seg_start
        for is_word, group in groupby(text[seg_start:seg_end], key=_is_word_char):
            length = sum(1 for _ in group)
            if is_word:
                yield pos, pos + length
            pos += length


def _letters(word: str) -> list[str]:
    return [ch for ch in word if _script(ch)]


def _ordinary_case(letters: list[str]) -> bool:
    """UPPER, lower or Title case; anything else (μA, IκB, pH) is notation, not a word."""
    if all(c.isupper() for c in letters):
        return True
    first, rest = letters[0], letters[1:]
    return (first.isupper() or first.islower()) and all(c.islower() for c in rest)


def _plain_word(text: str, start: int, chunks: dict[int, bool]) -> bool:
    """Not part of a code-like chunk (digits, underscore) nor a command or tag name (after \\ or <)."""
    if text[start - 1 : start] in ("\\", "<") or text[max(start - 2, 0) : start] == "</":
        return False
    return not chunks[start]


def _chunk_flags(text: str) -> dict[int, bool]:
    """Map each position inside a whitespace-delimited chunk to whether that chunk looks like a code."""
    flags: dict[int, bool] = {}
    for m in _CHUNK.finditer(text):
        code_like = any(ch.isnumeric() or ch == "_" for ch in m.group())
        flags.update(dict.fromkeys(range(m.start(), m.end()), code_like))
    return flags


def _final_sigma(word: str, nxt: str, allow_period: bool) -> bool:
    """σ ending an all-Greek word of ≥2 letters, after a lower-case letter, not before a hyphen/apostrophe."""
    letters = _letters(word)
    if word[-1:] != "σ" or len(letters) < 2 or any(_script(c) != "greek" for c in letters):
        return False
    if not letters[-2].islower() or (nxt and nxt in _HYPHENS + _APOSTROPHES):
        return False
    return allow_period or nxt != "."


def _dominant(greek: int, latin: int) -> str | None:
    if greek >= _CONTEXT_MIN and greek >= _CONTEXT_RATIO * latin:
        return "greek"
    if latin >= _CONTEXT_MIN and latin >= _CONTEXT_RATIO * greek:
        return "latin"
    return None


def _context_resolver(text: str, segments: list[tuple[int, int]]) -> Callable[[int], str | None]:
    """Script suggested by a word's line, or by the page when the line has too few distinctive letters."""
    lines: dict[int, Counter[str]] = {}
    page: Counter[str] = Counter()
    for seg_start, seg_end in segments:
        line = text.count("\n", 0, seg_start)
        for ch in text[seg_start:seg_end]:
            if ch == "\n":
                line += 1
            elif script := _distinctive(ch):
                lines.setdefault(line, Counter())[script] += 1
                page[script] += 1

    def resolve(pos: int) -> str | None:
        counts = lines.get(text.count("\n", 0, pos), Counter())
        if counts["greek"] + counts["latin"] >= _CONTEXT_MIN:
            return _dominant(counts["greek"], counts["latin"])
        return _dominant(page["greek"], page["latin"])

    return resolve


def _target_script(word: str, context: Callable[[], str | None]) -> str | None:
    """Script a mixed Greek/Latin word should be written in, or None when that is not unambiguous."""
    letters = _letters(word)
    scripts = {_script(c) for c in letters}
    if scripts != {"greek", "latin"} or not _ordinary_case(letters):
        return None
    latin_swappable = all(c in LATIN_TO_GREEK for c in letters if _script(c) == "latin")
    greek_swappable = all(c in GREEK_TO_LATIN for c in letters if _script(c) == "greek")
    if latin_swappable and greek_swappable:
        return context()
    if latin_swappable:
        as_greek = unicodedata.normalize("NFC", _swap(word, "greek")).lower()
        return "greek" if len(letters) >= 3 or as_greek in _SHORT_GREEK else None
    strong_latin = any(_script(c) == "latin" and c not in _WEAK_LATIN for c in letters)
    if greek_swappable and len(letters) >= 3 and strong_latin:
        return "latin"
    return None


def _swap(word: str, target: str) -> str:
    table = _SWAP[target]
    return "".join(table.get(ch, ch) if _script(ch) != target else ch for ch in word)


def _nfc(text: str, segments: list[tuple[int, int]]) -> tuple[str, int]:
    """NFC on every unprotected cluster, except clusters holding a character in _NFC_KEEP."""
    parts, pos, changed = [], 0, 0
    for start, end in _clusters(text, segments):
        cluster = text[start:end]
        normal = cluster if _NFC_KEEP.intersection(cluster) else unicodedata.normalize("NFC", cluster)
        if normal != cluster:
            parts += [text[pos:start], normal]
            pos, changed = end, changed + 1
    parts.append(text[pos:])
    return "".join(parts), changed


def _count_latex_greek(text: str, spans: list[tuple[int, int, str]]) -> int:
    """Runs of LaTeX Greek letters/accents that read as words, not as formulas."""
    count = 0
    for m in _LATEX_RUN.finditer(text):
        kind = next((k for s, e, k in spans if s <= m.start() < e), "")
        if kind not in ("", "math", "cmd"):
            continue  # inside code, a URL, a tag...
        tokens = list(_LATEX_TOKEN.finditer(m.group()))
        has_tonos = any(t.group("tonos") for t in tokens)
        if kind != "math" or has_tonos or len(tokens) >= 3 or "$" in m.group():
            count += 1
    return count


def page_stats(text: str) -> dict[str, float | int]:
    """Quality signals for one page of Markdown.

    All counts ignore protected spans (code, URLs, e-mails, math, HTML tags, LaTeX command names),
    except `latex_greek`, which looks for LaTeX inside and outside math.
    - mixed_script_words: runs of letters holding both Greek and Latin letters (counted even when
      `repair` would leave them, e.g. "ΔT", "μA", "TNFα").
    - latex_greek: runs of Greek LaTeX commands read as text: any run outside math, or inside math
      a run with an acute/grave accent (`\\acute{o}`), of ≥3 tokens, or split over adjacent `$..$$..$`.
      A lone `$\\alpha$` or `$\\alpha\\beta$` is a formula and is not counted.
    - final_sigma_medial: σ ending a Greek word (rule of `repair`, but σ before "." is counted too).
    - non_nfc: number of characters (with their combining marks) that NFC would change.
    - greek/latin/other_letters and shares (3 decimals; 0.0 on a page without letters).
    """
    spans = _protected_spans(text)
    segments = _unprotected(text, spans)
    chunks = _chunk_flags(text)
    letters = Counter(_script(ch) for start, end in segments for ch in text[start:end])
    mixed = sigma = 0
    for start, end in _words(text, segments):
        word = text[start:end]
        mixed += {"greek", "latin"} <= {_script(c) for c in word}
        if _plain_word(text, start, chunks):
            sigma += _final_sigma(word, text[end : end + 1], allow_period=True)
    clusters = (text[s:e] for s, e in _clusters(text, segments))
    non_nfc = sum(1 for cluster in clusters if unicodedata.normalize("NFC", cluster) != cluster)
    total = letters["greek"] + letters["latin"] + letters["other"]
    stats: dict[str, float | int] = {
        "mixed_script_words": mixed,
        "latex_greek": _count_latex_greek(text, spans),
        "final_sigma_medial": sigma,
        "non_nfc": non_nfc,
    }
    for script in ("greek", "latin", "other"):
        stats[f"{script}_letters"] = letters[script]
    for script in ("greek", "latin", "other"):
        stats[f"{script}_share"] = round(letters[script] / total, 3) if total else 0.0
    return stats


def repair(text: str) -> tuple[str, dict[str, int]]:
    """Safe repairs for Greek pages; returns the new text and non-zero counts of what was repaired.

    Nothing happens unless the unprotected text holds at least one Greek letter, so a page with no
    Greek comes back byte-identical. Protected spans (fenced/inline code, URLs, e-mail addresses,
    `$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`, HTML tags with their attributes, LaTeX command names) are
    never touched; table cell text is.
    - nfc_normalized: unprotected text is put in NFC (count: characters changed). U+1FEF GREEK VARIA
      is kept, since NFC turns it into a backtick.
    - lookalikes_to_greek / lookalikes_to_latin (count: words). Candidates are runs of ≥2 letters
      holding Greek and Latin letters only, in UPPER, lower or Title case, not in a whitespace-delimited
      chunk with a digit or "_" (XR-200, H2O, A4 stay) and not right after "\\" or "<". If the letters of
      one script are all exact look-alikes (A B E Z H I K M N O P T Y X and o), they take the other script:
        * to Greek when the word has a distinctive Greek letter (ΦEK -> ΦΕΚ); a two-letter word only if the
          result is a common Greek word in _SHORT_GREEK (Tα -> Τα, but ΔT, MΩ, Kα stay);
        * to Latin when the word has ≥3 letters and a Latin letter with no Greek look-alike (ΡCR -> PCR);
        * when every letter is a look-alike (KAI with Latin K, A), its line decides if it has ≥3 distinctive
          letters and one script has 3x the other's, else the page decides the same way, else no change.
    - final_sigma_fixed (count: letters): σ -> ς at the end of an all-Greek run of ≥2 letters whose
      previous letter is lower case, when the next character is not a letter, mark, digit, hyphen
      (line-break hyphenation: προσ-\\nδιορισμός), apostrophe (elision: σ' αυτό) or "." (abbreviations
      such as Εκκλησ. for Ecclesiastes). A lone σ (a variable, "σ)") is never changed.
    LaTeX-ified Greek is only counted (see page_stats): `\\acute{o}` and friends do not map exactly to
    polytonic letters, so rewriting it would guess.
    """
    spans = _protected_spans(text)
    segments = _unprotected(text, spans)
    if not any(_script(ch) == "greek" for start, end in segments for ch in text[start:end]):
        return text, {}
    text, nfc_changed = _nfc(text, segments)
    spans = _protected_spans(text)
    segments = _unprotected(text, spans)
    chunks = _chunk_flags(text)
    context = _context_resolver(text, segments)
    counts: Counter[str] = Counter(nfc_normalized=nfc_changed)
    parts, pos = [], 0
    for start, end in _words(text, segments):
        if not _plain_word(text, start, chunks):
            continue
        word = new = text[start:end]
        target = _target_script(word, lambda: context(start))
        if target:
            new = unicodedata.normalize("NFC", _swap(word, target))
            counts[f"lookalikes_to_{target}"] += 1
        if _final_sigma(new, text[end : end + 1], allow_period=False):
            new = new[:-1] + "ς"
            counts["final_sigma_fixed"] += 1
        if new != word:
            parts += [text[pos:start], new]
            pos = end
    parts.append(text[pos:])
    return "".join(parts), {key: n for key, n in counts.items() if n}
