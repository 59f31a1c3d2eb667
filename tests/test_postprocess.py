"""Page post-processing: each cleaning step on realistic snippets, process_page end to end,
and properties (idempotent, never raises, never drops real words)."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr import postprocess as pp
from ocr.postprocess import COUNTER_NAMES, EOS, process_page

TAG = "<|ref|>{}<|/ref|><|det|>[[{}, 100, 900, 140]]<|/det|>"


def tag(label: str = "text", x: int = 10) -> str:
    return TAG.format(label, x)


def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text)


# --- one step at a time --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("step", "raw", "expected", "count"),
    [
        pytest.param(
            pp.strip_debug_lines,
            "=====================\nBASE:  torch.Size([1, 256, 1280])\n"
            "PATCHES:  torch.Size([6, 100, 1280])\n=====================\n# Title\ntext",
            "# Title\ntext", 4, id="debug-header",
        ),
        pytest.param(
            pp.strip_debug_lines,
            "last line\n" + "=" * 50 + "\nimage size:  (1654, 2339)\nvalid image tokens:  781\n"
            "output texts tokens (valid):  729\ncompression ratio:  0.93\n" + "=" * 50
            + "\n===============save results:===============",
            "last line", 7, id="debug-footer",
        ),
        pytest.param(
            pp.strip_debug_lines, "Τίτλος\n=====\n\nΚείμενο", "Τίτλος\n=====\n\nΚείμενο", 0,
            id="setext-heading-survives",
        ),
        pytest.param(
            pp.strip_prompt_echo, "\nConvert the document to markdown. \n# Report", "# Report", 1,
            id="echo-grounding-prompt",
        ),
        pytest.param(
            pp.strip_prompt_echo, "Free OCR.\nFree OCR.\nInvoice", "Invoice", 2, id="echo-twice",
        ),
        pytest.param(
            pp.strip_prompt_echo, "Free OCR. is what we offer", "Free OCR. is what we offer", 0,
            id="echo-must-be-its-own-line",
        ),
        pytest.param(
            pp.strip_prompt_echo, "Text\nOCR this image.", "Text\nOCR this image.", 0,
            id="echo-only-at-start",
        ),
        pytest.param(
            pp.drop_invented_captions,
            "Intro\n![The image shows a bar chart](images/0_0.jpg)\n<center>Figure 1. Sales</center>",
            "Intro\n<center>Figure 1. Sales</center>", 1, id="invented-image-link",
        ),
        pytest.param(
            pp.collapse_blank_lines, "a\n\n\n\nb\n \n\t\n\nc\n\nd", "a\n\nb\n\nc\n\nd", 2,
            id="blank-runs",
        ),
    ],
)
def test_text_steps(step, raw: str, expected: str, count: int) -> None:
    assert step(raw) == (expected, count)


@pytest.mark.parametrize(
    ("tokens", "raw", "expected", "count"),
    [
        pytest.param((), f"<image>\n<|grounding|>Τέλος.{EOS}", "\nΤέλος.", 3, id="defaults"),
        pytest.param(
            ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"),
            f"<｜begin▁of▁sentence｜>text<｜▁pad▁｜><｜▁pad▁｜><image>{EOS}", "text", 5,
            id="tokenizer-list-plus-prompt-markers",
        ),
        pytest.param(
            ("<td>", "</td>", "<|ref|>", "<|/det|>", "", " ", "[MASK]"),
            "<table><tr><td>1</td></tr></table>[MASK]<|ref|>x",
            "<table><tr><td>1</td></tr></table><|ref|>x", 1,
            id="html-and-grounding-tokens-are-not-stripped",
        ),
    ],
)
def test_strip_special_tokens(tokens, raw: str, expected: str, count: int) -> None:
    assert pp.strip_special_tokens(raw, tokens) == (expected, count)


def test_special_token_regex_is_cached() -> None:
    tokens = ("<|x|>", "<|y|>")
    assert pp.special_token_regex(tokens) is pp.special_token_regex(tokens)


@pytest.mark.parametrize(
    ("raw", "expected", "count"),
    [
        pytest.param(
            tag("sub_title") + "\n## 4. Fehlzeiten \n\n" + tag() + "\nIn der Tabelle ...",
            "## 4. Fehlzeiten \n\nIn der Tabelle ...", 2, id="official-layout",
        ),
        pytest.param(
            tag("image") + "  \n\n" + tag("text") + "\nSource: Wind",
            "\nSource: Wind", 2, id="empty-image-block-line-removed",
        ),
        pytest.param(
            "<|/ref|><|det|>[[37, 48, 279, 140]]<|/det|>\n"
            "<|ref|>Deploy open-source models<|/ref|><|det|>[[42, 48, 857, 133]]<|/det|>\n"
            "<|ref|>latest chat, code<|/ref|><|det|>[[41, 291, 9",
            "Deploy open-source models\nlatest chat, code", 4, id="sample-34-text-inside-ref",
        ),
        pytest.param(
            "0 **0**\n\n<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]", "0 **0**\n\n", 1,
            id="sample-15-dangling-det",
        ),
    ],
)
def test_strip_grounding(raw: str, expected: str, count: int) -> None:
    assert pp.strip_grounding(raw) == (expected, count)


@pytest.mark.parametrize(
    ("raw", "expected", "count"),
    [
        ("text[[115, 85, 144, 101]]\nc) Gradient", "c) Gradient", 1),
        ("sub_title [[79, 155, 234, 175]]## Übersicht", "## Übersicht", 1),
        ("[[0, 0, 997, 0]]", "", 1),
        ("hello[[1, 2, 3, 4], [5, 6, 7, 8]]\nworld", "hello\nworld", 1),
        ("See [[1, 2, 3, 4]] in the list", "See [[1, 2, 3, 4]] in the list", 0),
    ],
)
def test_strip_box_prefixes(raw: str, expected: str, count: int) -> None:
    assert pp.strip_box_prefixes(raw) == (expected, count)


@pytest.mark.parametrize(
    ("step", "raw", "expected", "count"),
    [
        pytest.param(
            pp.close_dangling_blocks, "0 0\n\n<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]",
            "0 0\n\n<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]<|/det|>", 1, id="close-sample-15",
        ),
        pytest.param(
            pp.close_dangling_blocks, "<|ref|>text<|det|>[[1, 2, 3, 4], [5, 6",
            "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>", 1, id="close-keeps-complete-boxes",
        ),
        pytest.param(
            pp.drop_dangling_tags, tag() + "\n2. način:\n\n<|ref|>text<|/ref|><|det|>[[520",
            tag() + "\n2. način:\n\n", 1, id="drop-sample-22-tail",
        ),
        pytest.param(
            pp.drop_dangling_tags,
            "<|ref|>equation<|/ref|><|det|>\\[ V = \\pi r^2 h \\]\n\n" + tag(),
            "\\[ V = \\pi r^2 h \\]\n\n" + tag(), 1, id="drop-det-without-coordinates",
        ),
        pytest.param(
            pp.drop_dangling_tags, "<|/ref|>" + tag() + "\nText<|/det|>",
            tag() + "\nText", 2, id="drop-stray-closers",
        ),
        pytest.param(
            pp.drop_dangling_tags, "<|ref|>Hello world<|/ref|>", "Hello world", 1,
            id="ref-without-det-keeps-its-text",
        ),
        pytest.param(
            pp.normalize_blocks,
            "<|ref|>equation<|/ref|>\n<|det|>[[1, 2, 3, 4]]<|/det|>\n\\[x\\]",
            "<|ref|>equation<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n\\[x\\]", 1,
            id="normalize-gap",
        ),
        pytest.param(pp.normalize_blocks, tag(), tag(), 0, id="normalize-leaves-canonical"),
    ],
)
def test_grounded_repairs(step, raw: str, expected: str, count: int) -> None:
    assert step(raw) == (expected, count)


# --- tables --------------------------------------------------------------------------------

PLACEHOLDER_TABLE = (
    "<table><tr><td>Merkmal</td><td>Streuung</td><td>Anteil</td></tr>"
    "<tr><td>Geschlecht</td><td>-</td><td>None</td></tr>"
    "<tr><td>Alter</td><td>Varianz</td><td>N/A</td></tr>"
    "<tr><td>Δ-Wert</td><td>—</td><td> n/a </td></tr></table>"
)


@pytest.mark.parametrize(
    ("step", "raw", "expected", "count"),
    [
        pytest.param(
            pp.prune_placeholder_cells, PLACEHOLDER_TABLE,
            "<table><tr><td>Merkmal</td><td>Streuung</td><td>Anteil</td></tr>"
            "<tr><td>Geschlecht</td><td></td><td></td></tr>"
            "<tr><td>Alter</td><td>Varianz</td><td></td></tr>"
            "<tr><td>Δ-Wert</td><td></td><td></td></tr></table>", 5, id="html-placeholders",
        ),
        pytest.param(
            pp.prune_placeholder_cells,
            "<table><tr><th>Δ</th><td>-5</td><td>3-4</td><td>Α-Β</td><td>0</td><td>–</td></tr></table>",
            "<table><tr><th>Δ</th><td>-5</td><td>3-4</td><td>Α-Β</td><td>0</td><td></td></tr></table>",
            1, id="numbers-and-ranges-are-content",
        ),
        pytest.param(
            pp.prune_placeholder_cells,
            "| Merkmal | Streuung |\n|---|---|\n| Stufe | - |\n| Alter | −3 |",
            "| Merkmal | Streuung |\n|---|---|\n| Stufe |  |\n| Alter | −3 |", 1,
            id="pipe-placeholders-keep-separator",
        ),
        pytest.param(
            pp.collapse_blank_cells,
            '<table><tr><td>a</td><td>  </td><td colspan="2"> <br> </td><td>&nbsp;</td></tr></table>',
            '<table><tr><td>a</td><td></td><td colspan="2"></td><td></td></tr></table>', 3,
            id="blank-cells",
        ),
        pytest.param(
            pp.drop_empty_rows,
            "| operation_id | TG |\n|---|---|\n| dot | help |\n|              | |\n|\n| | |",
            "| operation_id | TG |\n|---|---|\n| dot | help |", 3, id="pipe-empty-rows",
        ),
        pytest.param(
            pp.drop_empty_rows, "|  |  |\n|--|--|\n| a | b |", "|  |  |\n|--|--|\n| a | b |", 0,
            id="empty-header-row-stays",
        ),
        pytest.param(
            pp.drop_empty_tables,
            "Before\n<table><tr><td></td><td><br></td></tr></table>\nAfter",
            "Before\nAfter", 1, id="empty-html-table",
        ),
        pytest.param(
            pp.drop_empty_tables, "Before\n| | |\n|---|---|\n| | |\nAfter", "Before\nAfter", 1,
            id="empty-pipe-table",
        ),
        pytest.param(
            pp.drop_empty_tables, "<table><tr><td></td><td><img src='x.png'></td></tr></table>",
            "<table><tr><td></td><td><img src='x.png'></td></tr></table>", 0,
            id="image-cell-is-content",
        ),
    ],
)
def test_table_steps(step, raw: str, expected: str, count: int) -> None:
    assert step(raw) == (expected, count)


@pytest.mark.parametrize(
    ("cell", "placeholder"),
    [("None", True), ("none", True), ("N/A", True), ("-", True), ("—", True), ("–", True),
     ("---", True), ("<b>N/A</b>", True), ("-5", False), ("3-4", False), ("Α-Β", False),
     ("0", False), ("Nonetheless", False), ("NA", False), ("", False)],
)
def test_is_placeholder(cell: str, placeholder: bool) -> None:
    assert pp.is_placeholder(cell) is placeholder


# --- canonical Markdown --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected", "count"),
    [
        ("infor-\nmation flows", "information\nflows", 1),
        ("Η παρα-\nγραφος τελειώνει εδώ.", "Η παραγραφος\nτελειώνει εδώ.", 1),
        ("un des cara-\n\ncteristiques de votre", "un des caracteristiques\nde votre", 1),
        ("tropi-\n\nque, où votre AMOK", "tropique,\noù votre AMOK", 1),
        ("the well-\nknown case", "the wellknown\ncase", 1),  # the documented limitation
        ("North-\nAmerica", "North-\nAmerica", 0),
        ("Α-\nΒ", "Α-\nΒ", 0),
        ("x-\n3", "x-\n3", 0),
        ("word -\nnext", "word -\nnext", 0),
        ("a-\nb-\nc", "abc", 2),
        ("end-\n", "end-\n", 0),
        ("\\[ a-\nb \\] and infor-\nmation", "\\[ a-\nb \\] and information", 1),
        ("λόγος-\n\n\nκαι", "λόγος-\n\n\nκαι", 0),
    ],
)
def test_join_hyphenation(raw: str, expected: str, count: int) -> None:
    assert pp.join_hyphenation(raw) == (expected, count)


@pytest.mark.parametrize(
    ("raw", "expected", "count"),
    [
        ("as shown by Smith<sup>71</sup>.", "as shown by Smith[^71].", 1),
        ("the results.<sup>3</sup> Next", "the results.[^3] Next", 1),
        ("claims<sup>1</sup><sup>2</sup>", "claims[^1][^2]", 2),
        ("<sup>71</sup> Smith, J. (2001).", "[^71]: Smith, J. (2001).", 1),
        ("σύμφωνα με τον Παπαδόπουλο<sup>4</sup>", "σύμφωνα με τον Παπαδόπουλο[^4]", 1),
        ("x<sup>2</sup> + y<sup>2</sup>", "x<sup>2</sup> + y<sup>2</sup>", 0),
        ("area 5 cm<sup>2</sup>", "area 5 cm<sup>2</sup>", 0),
        ("(a+b)<sup>2</sup> and 10<sup>3</sup>", "(a+b)<sup>2</sup> and 10<sup>3</sup>", 0),
        ("f<sup>-1</sup>(y) and 2<sup>t-3a</sup>", "f<sup>-1</sup>(y) and 2<sup>t-3a</sup>", 0),
        ("words<sup>1,2</sup>", "words<sup>1,2</sup>", 0),
        ("\\( text<sup>5</sup> \\)", "\\( text<sup>5</sup> \\)", 0),
    ],
)
def test_link_footnotes(raw: str, expected: str, count: int) -> None:
    assert pp.link_footnotes(raw) == (expected, count)


# --- runaway output ------------------------------------------------------------------------

def test_drop_runaway_latex_drops_a_backslash_wall_and_keeps_real_math() -> None:
    real = "\\[ \\frac{\\binom{7}{5}}{\\binom{5}{5}} = \\frac{7!}{5! \\cdot 2!} = 21. \\]"
    wall = "\\[ x = 1 " + "\\\\ " * 200 + "\\]"
    text, count = pp.drop_runaway_latex(f"Intro\n\n{real}\n\n{wall}\n\nOutro")
    assert (text, count) == (f"Intro\n\n{real}\n\n\nOutro", 1)


SMALL_TIKZ = "\\begin{tikzpicture}\\draw (0,0) -- (1,1);\\end{tikzpicture}"
LONG_TIKZ = (
    "\\begin{tikzpicture}\n" + "".join(f"\\draw ({i},0) -- ({i},1);\n" for i in range(60))
    + "\\end{tikzpicture}"
)


@pytest.mark.parametrize(
    ("raw", "expected", "count"),
    [
        (f"Figure:\n{SMALL_TIKZ}\nEnd", f"Figure:\n{SMALL_TIKZ}\nEnd", 0),
        (f"Figure:\n{LONG_TIKZ}\nEnd", "Figure:\nEnd", 1),
        # never closed: the model looped to max tokens, so the rest of the page goes with it
        ("Figure:\n\\begin{tikzpicture}\n\\node at (0,0) {A};\n\\draw (0,0) -- (1,1)", "Figure:\n", 1),
    ],
)
def test_drop_runaway_latex_tikz(raw: str, expected: str, count: int) -> None:
    assert pp.drop_runaway_latex(raw) == (expected, count)


def test_drop_runaway_lines_drops_a_loop_and_keeps_repeated_real_lines() -> None:
    real = "\n\n".join(["<Tg>"] * 7 + ["NowPlayingContentChangedNotification"] * 4)
    loop = "\n\n".join(
        f"{tag(x=520 + i)}\n<pre> <pre> <pre> <pre></pre></pre>" for i in range(30)
    )
    raw = f"Intro text here.\n\n{real}\n\n{loop}\n\n<|ref|>text<|/ref|><|det|>[[520"
    text, count = pp.drop_runaway_lines(raw)
    assert "<pre>" not in text and "[[520" not in text
    assert text.startswith(f"Intro text here.\n\n{real}")
    assert count == 61


def test_drop_runaway_lines_never_merges_a_normal_grounded_page() -> None:
    page = "\n\n".join(f"{tag(x=i)}\n{label} {i})" for i, label in enumerate("abcdefghijklmnop" * 2))
    assert pp.drop_runaway_lines(page) == (page, 0)


def test_short_similar_blocks_are_not_a_loop() -> None:
    """A list of figures, one grounded block each: tags are not counted as loop text."""
    page = "\n\n".join(f"{tag(x=i)}\nFigure {i}" for i in range(1, 15))
    assert pp.drop_runaway_lines(page) == (page, 0)


def test_numeric_table_rows_are_not_a_loop() -> None:
    rows = "\n".join(f"| {2000 + i} | 1.{i % 10}0 | 3.{i % 7}5 | 10.{i % 3}0 |" for i in range(24))
    table = "| Year | A | B | C |\n|---|---|---|---|\n" + rows
    assert pp.drop_runaway_lines(table) == (table, 0)


def test_a_number_next_to_a_loop_is_kept() -> None:
    loop = "\n".join(["overline[[overline][||"] * 20)
    text, count = pp.drop_runaway_lines(f"Seite\n12\n{loop}\n¯|||")
    assert (text, count) == ("Seite\n12", 21)


def test_drop_runaway_lines_degenerate_long_line() -> None:
    garbage = "<|ref|>equation<|/ref|><|det|>[" + "underline[" * 300
    text, count = pp.drop_runaway_lines(f"Gradient und Hesse-Matrix\n\n{garbage}\n\nf)")
    assert (text, count) == ("Gradient und Hesse-Matrix\n\n\nf)", 1)


def test_leader_dots_are_not_a_loop() -> None:
    toc = "\n".join(f"{n}.{k} Section {chr(65 + k)}{'.' * 400} {n * 10 + k}" for n in (1, 2) for k in range(8))
    assert pp.drop_runaway_lines(toc) == (toc, 0)


# --- process_page --------------------------------------------------------------------------

GREEK = "Η αρχαία ελληνική γλώσσα είναι πλούσια σε μορφές, όπως ο λόγος και οι λόγοι της."

PAGE_CASES = [
    pytest.param(
        "clean",
        "<image>\n<|grounding|>Convert the document to markdown.\n"
        + tag("title") + "\n# Αρχαία γλώσσα \n\n" + tag() + f"\n{GREEK}  \n\n"
        + tag("text", 20) + "\nFXTrades  \n" + EOS,
        f"# Αρχαία γλώσσα\n\n{GREEK}\n\nFXTrades\n",
        {"special_tokens_stripped": 3, "prompt_echoes_removed": 1, "grounding_blocks_removed": 3},
        id="clean-greek-header",
    ),
    pytest.param(
        "grounded",
        tag("title") + "\n# Αρχαία γλώσσα \n\n" + tag() + f"\n{GREEK}\n\n"
        + "<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]" + EOS,
        tag("title") + "\n# Αρχαία γλώσσα\n\n" + tag() + f"\n{GREEK}\n\n"
        + "<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]<|/det|>\n",
        {"special_tokens_stripped": 1, "dangling_tags_closed": 1},
        id="grounded-truncated-block-closed",
    ),
    pytest.param(
        "grounded",
        tag("table") + "\n" + PLACEHOLDER_TABLE + "\n\n\n\n" + tag() + "\ninfor-\nmation"
        + "\n\n<|ref|>text<|/ref|><|det|>[[12",
        tag("table") + "\n" + PLACEHOLDER_TABLE.replace(">-<", "><").replace(">None<", "><")
        .replace(">N/A<", "><").replace(">—<", "><").replace("> n/a <", "><")
        + "\n\n" + tag() + "\ninformation\n",
        {"dangling_tags_dropped": 1, "placeholder_cells_pruned": 5, "hyphen_joins": 1,
         "blank_runs_collapsed": 1},
        id="grounded-table-and-text-between-blocks",
    ),
    pytest.param(
        "clean",
        "| - | N/A |\n|---|---|\n| None | — |\n\nText<sup>12</sup> here.\n\n<sup>12</sup> Source."
        "\n\n| Name | Wert |\n|---|---|\n| None | — |",
        "Text[^12] here.\n\n[^12]: Source.\n\n| Name | Wert |\n|---|---|\n",
        {"placeholder_cells_pruned": 6, "empty_rows_dropped": 2, "tables_dropped": 1,
         "footnotes_linked": 2},
        id="clean-empty-pipe-table-and-footnotes",
    ),
]


@pytest.mark.parametrize(("mode", "raw", "expected", "counters"), PAGE_CASES)
def test_process_page(mode: str, raw: str, expected: str, counters: dict) -> None:
    assert process_page(raw, mode=mode) == (expected, counters)


@pytest.mark.parametrize("mode", pp.MODES)
def test_process_page_drops_latex_walls(mode: str) -> None:
    equation = tag("equation") + "\n$$\n\\begin{array}{c} x " + "\\\\ " * 400 + "\n$$"
    bare = tag() + "\n" + "\\\\ " * 300
    raw = f"{tag()}\nSatz 1.\n\n{equation}\n\n{bare}\n\n{tag()}\nSatz 2."
    out, counters = process_page(raw, mode=mode)
    assert "\\\\" not in out and "Satz 1." in out and "Satz 2." in out
    assert counters["latex_blocks_dropped"] == 1 and counters["runaway_lines_dropped"] == 1


def test_process_page_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        process_page("x", mode="markdown")


def test_counter_names_cover_every_step() -> None:
    assert len(set(COUNTER_NAMES)) == len(COUNTER_NAMES)
    for mode in pp.MODES:
        assert {name for name, _ in pp._steps(mode, ())} <= set(COUNTER_NAMES)


def test_process_page_uses_the_tokenizer_tokens() -> None:
    raw = "<|User|>Πίνακας<｜▁pad▁｜>"
    assert process_page(raw, mode="clean", special_tokens=("<｜▁pad▁｜>",)) == (
        "<|User|>Πίνακας\n", {"special_tokens_stripped": 1})
    assert process_page(raw, mode="clean") == ("Πίνακας\n", {"special_tokens_stripped": 2})


# --- properties ----------------------------------------------------------------------------

FRAGMENTS = [
    tag(), tag("image"), tag("table"), "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[5, 6",
    "[[1, 2, 3, 4]]", "text[[1, 2, 3, 4]]", "\n", "\n\n\n", "  ", "-", "-\n", "—", "<table>",
    "</table>", "<tr>", "<td>", "</td>", "<th>", "None", "N/A", "|", "| - |", "|---|", "| |\n",
    "<sup>12</sup>", "<sup>", "x", "λόγος", "παρα-\nγραφος", "infor-\nmation", "=====",
    "BASE:  torch.Size([1, 256, 1280])", EOS, "<image>", "Free OCR.", "![alt](x.png)",
    "\\[", "\\]", "\\\\", "$$", "\\begin{tikzpicture}", "\\end{tikzpicture}", "<pre>", "Σ",
    "overline[[", "\t", "&nbsp;", "<br>", "ς", "Ά",
]
page_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=30).map("".join),
)
STEPS = [
    pp.strip_debug_lines, pp.strip_special_tokens, pp.strip_prompt_echo, pp.drop_runaway_latex,
    pp.drop_runaway_lines, pp.strip_grounding, pp.strip_box_prefixes, pp.close_dangling_blocks,
    pp.drop_dangling_tags, pp.normalize_blocks, pp.drop_invented_captions,
    pp.prune_placeholder_cells, pp.collapse_blank_cells, pp.drop_empty_rows,
    pp.drop_empty_tables, pp.collapse_blank_lines, pp.join_hyphenation, pp.link_footnotes,
]


@pytest.mark.parametrize("step", STEPS, ids=lambda f: f.__name__)
@settings(max_examples=200, deadline=None)
@given(text=page_text)
def test_each_step_is_idempotent(step, text: str) -> None:
    once, _ = step(text)
    assert step(once) == (once, 0)


@pytest.mark.parametrize("mode", pp.MODES)
@settings(max_examples=200, deadline=None)
@given(text=page_text)
def test_process_page_is_idempotent_and_never_raises(mode: str, text: str) -> None:
    once, counters = process_page(text, mode=mode)
    assert set(counters) <= set(COUNTER_NAMES) and all(v > 0 for v in counters.values())
    assert process_page(once, mode=mode) == (once, {})


LETTERS = (
    "abcdefghijklmnopqrstuvwxyzàéèçüöäßABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώϊϋΐΰςΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩΆΈΉΊΌΎΏ"
)
prose = st.lists(st.text(LETTERS, min_size=1, max_size=12), min_size=1, max_size=40, unique=True).flatmap(
    lambda ws: st.lists(st.sampled_from([" ", "\n"]), min_size=len(ws) - 1, max_size=len(ws) - 1).map(
        lambda seps: "".join(w + s for w, s in zip(ws, seps + [""]))
    )
)


@pytest.mark.parametrize("mode", pp.MODES)
@settings(max_examples=200, deadline=None)
@given(text=prose)
def test_prose_passes_through_untouched(mode: str, text: str) -> None:
    out, counters = process_page(text, mode=mode, special_tokens=("<｜▁pad▁｜>", EOS))
    assert words(out) == words(text)
    assert (out, counters) == (text + "\n", {})


@settings(max_examples=200, deadline=None)
@given(text=prose, junk=st.lists(st.sampled_from(["<image>", EOS, tag(), "\n\n\n", "<|grounding|>"]), max_size=6))
def test_meta_tokens_around_prose_never_cost_a_word(text: str, junk: list[str]) -> None:
    ws = text.split("\n")
    mixed = "".join(j + line + "\n" for j, line in zip(junk + [""] * len(ws), ws))
    out, _ = process_page(mixed, mode="clean")
    assert set(words(text)) <= set(words(out))
