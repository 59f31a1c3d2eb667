"""Tests for ocr.greek: table-driven Greek cases, a real gazette, and property tests."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr.greek import REPAIR_COUNTERS, STAT_KEYS, page_stats, repair
from conftest import shared

# Look-alikes are invisible in source code, so test inputs spell intruders with markers:
# ⟦Κ⟧ is a Greek letter written in the Latin look-alike (OCR error inside Greek text),
# ⟨T⟩ is a Latin letter written in the Greek look-alike (OCR error inside Latin text).
_GREEK_CAPS, _LATIN_CAPS = "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧο", "ABEZHIKMNOPTYXo"
_TO_LATIN = dict(zip(_GREEK_CAPS, _LATIN_CAPS))
_TO_GREEK = dict(zip(_LATIN_CAPS, _GREEK_CAPS))


def mark(text: str) -> str:
    """Expand ⟦G⟧ (Greek letter -> Latin look-alike) and ⟨L⟩ (Latin letter -> Greek look-alike)."""
    text = re.sub("⟦(.)⟧", lambda m: _TO_LATIN[m.group(1)], text)
    return re.sub("⟨(.)⟩", lambda m: _TO_GREEK[m.group(1)], text)


def scripts(text: str) -> set[str]:
    return {unicodedata.name(c).split()[0] for c in text if c.isalpha()}


REPAIRED = [
    # (marked input, expected output, expected counts)
    ("⟦Κ⟧⟦Α⟧Ι το σπίτι είναι μεγάλο", "ΚΑΙ το σπίτι είναι μεγάλο", {"lookalikes_to_greek": 1}),
    ("Φ⟦Ε⟧⟦Κ⟧ Α' 145/1999 και ν. 2292/1995", "ΦΕΚ Α' 145/1999 και ν. 2292/1995", {"lookalikes_to_greek": 1}),
    ("ΕΦΗΜΕΡΙΔΑ ⟦Τ⟧ΗΣ ΚΥΒΕΡΝΗΣΕΩΣ", "ΕΦΗΜΕΡΙΔΑ ΤΗΣ ΚΥΒΕΡΝΗΣΕΩΣ", {"lookalikes_to_greek": 1}),
    ("Σχεδιασμού ⟦Ε⟧ντύπων", "Σχεδιασμού Εντύπων", {"lookalikes_to_greek": 1}),
    ("Ενημέρωση τ⟦ο⟧υ Τμήματος", "Ενημέρωση του Τμήματος", {"lookalikes_to_greek": 1}),
    ("Συνδρομητών. ⟦Τ⟧ο κόστος ενός ΦΕΚ", "Συνδρομητών. Το κόστος ενός ΦΕΚ", {"lookalikes_to_greek": 1}),
    ("⟦Μ⟧ε την επιφύλαξη", "Με την επιφύλαξη", {"lookalikes_to_greek": 1}),
    ("⟦Κ⟧αι ο λόγος", "Και ο λόγος", {"lookalikes_to_greek": 1}),
    ("Κλάδος Π⟦Ε⟧ Πληροφορικής", "Κλάδος ΠΕ Πληροφορικής", {"lookalikes_to_greek": 1}),
    ("Κλάδος Τ⟦Ε⟧ Μηχανικών", "Κλάδος ΤΕ Μηχανικών", {"lookalikes_to_greek": 1}),
    ("⟨T⟩HE QUICK BROWN FOX", "THE QUICK BROWN FOX", {"lookalikes_to_latin": 1}),
    (
        "Η μέθοδος ⟨P⟩CR χρησιμοποιείται ευρέως",
        "Η μέθοδος PCR χρησιμοποιείται ευρέως",
        {"lookalikes_to_latin": 1},
    ),
    ("ο λόγοσ, η ύλη", "ο λόγος, η ύλη", {"final_sigma_fixed": 1}),
    ("της διαδικασίασ\nκαι", "της διαδικασίας\nκαι", {"final_sigma_fixed": 1}),
    ("σύμφωνα με τον νόμοσ", "σύμφωνα με τον νόμος", {"final_sigma_fixed": 1}),
    ("«Εφημερίσ» της Κυβερνήσεωσ;", "«Εφημερίς» της Κυβερνήσεως;", {"final_sigma_fixed": 2}),
    ("⟦Τ⟧ύποσ και ύλη", "Τύπος και ύλη", {"lookalikes_to_greek": 1, "final_sigma_fixed": 1}),
    (
        "ὁ θεὸσ τὸν οὐρανὸν ⟦Κ⟧αὶ τὴν γῆν",
        "ὁ θεὸς τὸν οὐρανὸν Καὶ τὴν γῆν",
        {"lookalikes_to_greek": 1, "final_sigma_fixed": 1},
    ),
    (
        "| Τμήμα | ⟦Κ⟧ολλητικών εργασιών |\n|---|---|",
        "| Τμήμα | Κολλητικών εργασιών |\n|---|---|",
        {"lookalikes_to_greek": 1},
    ),
    (
        '<table><tr><td class="x">⟦Κ⟧ολλητικών εργασιών</td></tr></table>',
        '<table><tr><td class="x">Κολλητικών εργασιών</td></tr></table>',
        {"lookalikes_to_greek": 1},
    ),
]

UNCHANGED = [
    "ΦΕΚ Α' 145/1999",
    "ν. 2292/1995 (ΦΕΚ 98/Α΄/2005), άρθρο 5 παρ. 2",
    "Κωδικός προϊόντος XR-200, χαρτί A4.",
    "Κωδικός προϊόντος ⟨X⟩R-200 και Τμήμα ⟦Α⟧3",  # code-like chunks are never touched, even broken
    "Σειρά ⟨X⟩RT-200, αριθμός Φ⟦Ε⟧⟦Κ⟧2018, μεταβλητές τύποσ2 και πόροσ_1",
    "Το νερό (H2O) και το CO2 στην ατμόσφαιρα.",
    "Η μέθοδος PCR χρησιμοποιείται στη μοριακή βιολογία.",
    "Η μεταβολή ΔT της θερμοκρασίας, η ενέργεια ΔE και η αντίσταση 5 MΩ.",
    "Ρεύμα 10 μA, συγκέντρωση 5 μM, η πρωτεΐνη IκB, ο παράγοντας TNFα και η γραμμή Kα του χαλκού.",
    "Η μεταβολή Δx και Δt.",
    "σ) το τρίτο σκέλος",
    "ο συντελεστής σ είναι θετικός",
    "ποιότητα και ευκρίνεια σ΄αυτό, σ’ αυτό και σ' αυτό",
    "ο προσ-\nδιορισμός των δεικτών",
    "εκτυπώσεις-εκδόσεις και εκτυπώσεισ-εκδόσεις",
    "βλ. Ησ. 53,5, Εκκλησ. 1,2 και Ιερεμ. 1",
    "Η ΑΠΟΦΑΣΗ ΤΟΥ ΛΟΓΟσ",
    "Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν.",
    "Τὰ πάντα δι᾽ αὐτοῦ ἐγένετο",
    "To τεύχος διατίθεται δωρεάν.",  # an all-Latin look-alike word is left (cannot tell it from English)
    "⟨N⟩ai",  # Latin evidence too weak: a and i look like α and ι, this may be a garbled «Ναι»
    "The quick brown fox jumps over the lazy dog.",
    "ΚΕΦΑΛΑΙΟ ⟦Α⟧’ και Διεύθυνση ⟦Β⟧’",  # single letters are never repaired
    "",
]


@pytest.mark.parametrize("marked, expected, counts", REPAIRED)
def test_repair_cases(marked: str, expected: str, counts: dict[str, int]) -> None:
    text = mark(marked)
    assert text != expected  # the input really carries the error
    assert repair(text) == (expected, counts)


@pytest.mark.parametrize("marked", UNCHANGED)
def test_repair_leaves_correct_or_ambiguous_text(marked: str) -> None:
    text = mark(marked)
    assert repair(text) == (text, {})


def test_markers_build_real_intruders() -> None:
    assert scripts(mark("⟦Κ⟧⟦Α⟧Ι")) == {"LATIN", "GREEK"}
    assert scripts(mark("⟨T⟩HE")) == {"LATIN", "GREEK"}


PROTECTED = [
    "`⟦Κ⟧⟦Α⟧Ι λόγοσ`",
    "``κώδικας `⟦Κ⟧⟦Α⟧Ι` λόγοσ``",
    "```\nΦ⟦Ε⟧⟦Κ⟧ λόγοσ\n```",
    "~~~python\nλόγοσ = 'Φ⟦Ε⟧⟦Κ⟧'\n~~~",
    "$λόγοσ + Φ⟦Ε⟧⟦Κ⟧$",
    "$$\n\\sum σ_i Φ⟦Ε⟧⟦Κ⟧\n$$",
    "\\(λόγοσ\\)",
    "\\[Φ⟦Ε⟧⟦Κ⟧ σ\\]",
    "https://el.wikipedia.org/wiki/Φ⟦Ε⟧⟦Κ⟧_λόγοσ",
    "www.et.gr/λόγοσ",
    "[σύνδεσμος](http://example.gr/Φ⟦Ε⟧⟦Κ⟧)",
    "Φ⟦Ε⟧⟦Κ⟧.λόγοσ@et.gr",
    '<td title="Φ⟦Ε⟧⟦Κ⟧ λόγοσ">',
    "<!-- Φ⟦Ε⟧⟦Κ⟧ λόγοσ -->",
    "\\Φ⟦Ε⟧⟦Κ⟧ και \\⟨T⟩ABLE",
]


@pytest.mark.parametrize("marked", PROTECTED)
def test_protected_spans_are_byte_identical(marked: str) -> None:
    span = mark(marked)
    text = f"Το Φ{mark('⟦Ε⟧⟦Κ⟧')} του λόγοσ\n{span}\nκαι ο νόμοσ, τέλος."
    out, counts = repair(text)
    assert span in out
    assert out.replace(span, "") == "Το ΦΕΚ του λόγος\n\nκαι ο νόμος, τέλος."
    assert counts == {"lookalikes_to_greek": 1, "final_sigma_fixed": 2}


def test_nfc_applied_to_decomposed_polytonic() -> None:
    composed = "Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν."
    decomposed = unicodedata.normalize("NFD", composed)
    precomposed = sum(1 for ch in composed if unicodedata.decomposition(ch))
    assert decomposed != composed
    assert repair(decomposed) == (composed, {"nfc_normalized": precomposed})
    assert page_stats(decomposed)["non_nfc"] == precomposed
    assert page_stats(composed)["non_nfc"] == 0


def test_nfc_only_on_pages_with_greek() -> None:
    latin = unicodedata.normalize("NFD", "café résumé naïve")
    assert repair(latin) == (latin, {})
    mixed = latin + " και"
    assert repair(mixed)[0] == unicodedata.normalize("NFC", latin) + " και"


def test_nfc_keeps_greek_varia_out_of_markdown() -> None:
    text = "τὸν \u1fef λόγον ὁ\u0301"  # NFC would turn U+1FEF into a backtick
    out, counts = repair(text)
    assert out == "τὸν \u1fef λόγον \u1f45"
    assert "`" not in out
    assert counts == {"nfc_normalized": 1}


def test_latex_greek_is_flagged_not_rewritten() -> None:
    text = "Η λέξη \\alpha\\pi\\acute{o} στο κείμενο"
    assert repair(text) == (text, {})
    assert page_stats(text)["latex_greek"] == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\alpha\\pi\\acute{o}", 1),
        ("$\\alpha$$\\pi$$\\acute{o}$", 1),
        ("$\\alpha$$\\pi$", 1),
        ("η λέξη \\alpha εδώ", 1),
        ("\\(\\alpha\\beta\\gamma\\)", 1),
        ("$\\acute{\\epsilon}$", 1),
        ("\\alpha\\pi\\acute{o} και \\kappa\\alpha\\grave{\\iota}", 2),
        ("$\\alpha$", 0),
        ("$\\alpha + \\beta = \\gamma$", 0),
        ("$\\alpha\\beta$", 0),
        ("$\\hat{x} + \\bar{y}$", 0),
        ("$\\sigma^2$ και $\\mu$", 0),
        ("`\\alpha\\pi\\acute{o}`", 0),
        ("\\alphabet \\pie", 0),
    ],
)
def test_latex_greek_count(text: str, expected: int) -> None:
    assert page_stats(text)["latex_greek"] == expected


def test_page_stats_counts() -> None:
    stats = page_stats(mark("Φ⟦Ε⟧⟦Κ⟧ 12 και ο λόγοσ, Привет"))
    assert tuple(stats) == STAT_KEYS
    assert stats["mixed_script_words"] == 1
    assert stats["final_sigma_medial"] == 1
    assert stats["non_nfc"] == 0
    assert (stats["greek_letters"], stats["latin_letters"], stats["other_letters"]) == (10, 2, 6)
    assert (stats["greek_share"], stats["latin_share"], stats["other_share"]) == (0.556, 0.111, 0.333)


def test_page_stats_final_sigma_counts_abbreviations_repair_does_not() -> None:
    text = "της διαδικασίασ. Εκκλησ. 1,2"
    assert page_stats(text)["final_sigma_medial"] == 2
    assert repair(text) == (text, {})


def test_page_stats_ignores_protected_spans() -> None:
    text = mark("`⟦Κ⟧⟦Α⟧Ι λόγοσ` https://x.gr/Φ⟦Ε⟧⟦Κ⟧ <td class=\"abc\">ύλη</td>")
    stats = page_stats(text)
    assert (stats["mixed_script_words"], stats["final_sigma_medial"]) == (0, 0)
    assert (stats["greek_letters"], stats["latin_letters"]) == (3, 0)


def test_page_stats_empty_page() -> None:
    stats = page_stats("")
    assert set(stats) == set(STAT_KEYS)
    assert all(value == 0 for value in stats.values())


def test_repair_counters_are_declared() -> None:
    text = unicodedata.normalize("NFD", mark("Φ⟦Ε⟧⟦Κ⟧ λόγοσ ύλη ⟨T⟩he"))
    _, counts = repair(text)
    assert set(counts) == set(REPAIR_COUNTERS)


# --- real gazette text (born-digital ΦΕΚ Α' 58/2018) ---------------------------------------------

_PDF_DIRS = [
    Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "pdfs",
    Path(__file__).resolve().parent / "fixtures",
]
_GAZETTE = "el_digital_fek_2018_A58_trailing_blank_pages.pdf"


@pytest.fixture(scope="module")
def gazette_pages() -> list[str]:
    pymupdf = pytest.importorskip("pymupdf")
    path = next((d / _GAZETTE for d in _PDF_DIRS if (d / _GAZETTE).is_file()), None)
    if path is None:
        shared(_PDF_DIRS[0] / _GAZETTE)
    with pymupdf.open(path) as doc:
        return [page.get_text() for page in doc if page.get_text().strip()]


def _fold(text: str) -> str:
    """Text with look-alike and sigma differences erased: what repair may change, and nothing else."""
    text = unicodedata.normalize("NFC", text).replace("ς", "σ")
    return "".join(_TO_GREEK.get(ch, ch) for ch in text)


def test_gazette_only_lookalikes_and_sigma_change(gazette_pages: list[str]) -> None:
    for page in gazette_pages:
        out, counts = repair(page)
        assert _fold(out) == _fold(page)
        assert set(counts) <= {"lookalikes_to_greek", "lookalikes_to_latin", "final_sigma_fixed"}
        changed = [(a, b) for a, b in zip(page.split(), out.split()) if a != b]
        assert len(changed) == sum(counts.values())
        for before, after in changed:  # each fix turned a mixed-script word into a one-script word
            assert scripts(before) == {"GREEK", "LATIN"} and len(scripts(after)) == 1


def test_gazette_known_errors_fixed_and_legit_text_kept(gazette_pages: list[str]) -> None:
    text = "\n".join(gazette_pages)
    out = "\n".join(repair(page)[0] for page in gazette_pages)
    header_broken = mark("ΕΦΗΜΕΡΙ\u2206Α ⟦Τ⟧ΗΣ ΚΥΒΕΡΝΗΣΕΩΣ")  # U+2206 INCREMENT, as in the PDF
    assert text.count(header_broken) >= 10
    assert header_broken not in out
    assert out.count("ΕΦΗΜΕΡΙ\u2206Α ΤΗΣ ΚΥΒΕΡΝΗΣΕΩΣ") == text.count(header_broken)
    fixes = [
        ("Σχεδιασμού ⟦Ε⟧ντύπων", "Σχεδιασμού Εντύπων"),
        ("Συνδρομητών. ⟦Τ⟧ο κόστος", "Συνδρομητών. Το κόστος"),
        ("Ενημέρωση τ⟦ο⟧υ Τμήματος", "Ενημέρωση του Τμήματος"),
        ("Κλάδος Τ⟦Ε⟧ Μηχανικών", "Κλάδος ΤΕ Μηχανικών"),
        ("Κλάδος Π⟦Ε⟧ Πληροφορικής", "Κλάδος ΠΕ Πληροφορικής"),
    ]
    for broken, fixed in fixes:
        assert mark(broken) in text and fixed in out
    legit = ["Digitally signed by", "(Optical Character Recognition, OCR)", "www.et.gr", "webmaster.et@et.gr"]
    for kept in [*legit, "Τμήμα ⟦Α⟧3"]:
        assert mark(kept) in text and mark(kept) in out


def _inject(text: str) -> tuple[str, int, int]:
    """Break clean Greek words the way OCR does: Latin look-alikes for Greek capitals/ο, σ for final ς."""
    words = sigmas = 0

    def spoil(m: re.Match[str]) -> str:
        nonlocal words, sigmas
        word = m.group()
        if not all(unicodedata.name(c).startswith("GREEK") for c in word):
            return word
        if any(c in _TO_LATIN for c in word) and any(c not in _TO_LATIN for c in word):
            word, words = "".join(_TO_LATIN.get(c, c) for c in word), words + 1
        if word.endswith("ς") and word[-2].islower():
            word, sigmas = word[:-1] + "σ", sigmas + 1
        return word

    pattern = r"(?<!\S)[^\W\d_]{3,}(?=[,;:·»)]?(?:[ \n]|$))"
    return re.sub(pattern, spoil, text), words, sigmas


def test_gazette_injected_errors_are_repaired_exactly(gazette_pages: list[str]) -> None:
    total_words = total_sigmas = 0
    for page in gazette_pages:
        clean = repair(page)[0]
        assert repair(clean) == (clean, {})
        broken, words, sigmas = _inject(clean)
        out, counts = repair(broken)
        assert out == clean
        assert counts.get("lookalikes_to_greek", 0) == words
        assert counts.get("final_sigma_fixed", 0) == sigmas
        total_words, total_sigmas = total_words + words, total_sigmas + sigmas
    assert total_words > 500 and total_sigmas > 500


# --- properties -------------------------------------------------------------------------------------

_VOCAB = [
    "και", "του", "λόγος", "λόγοσ", "ΦΕΚ", mark("Φ⟦Ε⟧⟦Κ⟧"), mark("⟦Κ⟧⟦Α⟧Ι"), mark("⟨T⟩HE"), mark("τ⟦ο⟧υ"),
    "ὁ", "θεὸσ", "Ἐν", "ἀρχῇ", "σ", "σ)", "PCR", "XR-200", "H2O", "A4", "ΔT", "μA", "The", "fox", "To",
    "ν. 2292/1995", "παρ. 2", " ", " ", "\n", ", ", ". ", "-", "΄", "’",
    "`", "$", "\\", "<", ">", "@", "(", ")",
    "https://", "www.", "\u0301", "\u0313", "\u0342", "\u1fef", "\u212a", "\u2126", "\u1100\u1161",
]
_ALPHABET = st.sampled_from(
    list("ΑΒΕΚΜΟΤΧΦΣαβεκμοςστάέὸῇABEKMOTXaeo0123456789 \n.,;:-'΄’`$\\<>/@_(){}[]|#*")
    + ["\u0301", "\u0308", "\u0313", "\u0345", "\u1fef", "\u037e", "\u212a", "\u2126"]
    + ["\u1100", "\u1161", "Я"]  # Hangul jamo (NFC merges them), Cyrillic
)
texts = st.lists(st.one_of(st.sampled_from(_VOCAB), st.text(_ALPHABET, max_size=6)), max_size=25).map("".join)


def _drop_greek_letters(text: str) -> str:
    return "".join(c for c in text if not (c.isalpha() and "GREEK" in unicodedata.name(c)))


non_greek_texts = texts.map(_drop_greek_letters)


def _letters(text: str) -> int:
    return sum(c.isalpha() for c in text)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_repair_is_idempotent(text: str) -> None:
    once, _ = repair(text)
    assert repair(once) == (once, {})


@settings(max_examples=200, deadline=None)
@given(non_greek_texts)
def test_repair_never_changes_text_without_greek(text: str) -> None:
    assert repair(text) == (text, {})


@settings(max_examples=200, deadline=None)
@given(texts)
def test_repair_keeps_letter_count(text: str) -> None:
    out, _ = repair(text)
    # NFC may merge letters (Hangul jamo): compare canonical decompositions, and exact counts for NFC input.
    assert _letters(unicodedata.normalize("NFD", out)) == _letters(unicodedata.normalize("NFD", text))
    nfc = unicodedata.normalize("NFC", text)
    assert _letters(repair(nfc)[0]) == _letters(nfc)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_repair_counts_and_stats_are_consistent(text: str) -> None:
    out, counts = repair(text)
    assert set(counts) <= set(REPAIR_COUNTERS) and all(n > 0 for n in counts.values())
    stats = page_stats(text)
    assert tuple(stats) == STAT_KEYS
    total = stats["greek_letters"] + stats["latin_letters"] + stats["other_letters"]
    shares = stats["greek_share"] + stats["latin_share"] + stats["other_share"]
    assert shares == pytest.approx(1.0 if total else 0.0, abs=0.002)
    if unicodedata.is_normalized("NFC", text):  # NFC may create mixed words (KELVIN SIGN -> K)
        assert page_stats(out)["mixed_script_words"] <= stats["mixed_script_words"]


_inner = st.text(st.sampled_from(list("ΑΕΚαλόγοσςKAE \u0301xyz12.-")), min_size=1, max_size=12)
_word = st.text(st.sampled_from(list("ΑΕΚαλόγοσςKAExyz")), min_size=1, max_size=8)
protected_spans = st.one_of(
    _inner.filter(lambda s: s.strip() == s).map(lambda s: f"${s}$"),
    _inner.map(lambda s: f"`{s}`"),
    _inner.map(lambda s: f"```\n{s}\n```"),
    _inner.map(lambda s: f"\\({s}\\)"),
    _inner.map(lambda s: f"$${s}$$"),
    _inner.map(lambda s: "https://ex.gr/" + s.replace(" ", "_")),
    st.tuples(_word, _word).map(lambda p: f"{p[0]}@{p[1]}.gr"),
    _inner.map(lambda s: f'<td title="{s}">'),
)
_prose_words = ["λόγοσ", "ΦΕΚ", mark("Φ⟦Ε⟧⟦Κ⟧"), mark("⟦Κ⟧⟦Α⟧Ι"), "ύλη", "ν. 12"]
prose = st.lists(st.sampled_from(_prose_words), max_size=4).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(prose, protected_spans), min_size=1, max_size=4))
def test_protected_spans_survive(pairs: list[tuple[str, str]]) -> None:
    text = "\n".join(f"{p} {s} " for p, s in pairs)
    out, _ = repair(text)
    for _, span in pairs:
        assert out.count(span) >= text.count(span)
