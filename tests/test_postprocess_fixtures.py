"""process_page on the 25 real DeepSeek-OCR outputs in shared/fixtures/raw_outputs: invariants for
every file, the specific repair each file exists for, and golden outputs (UPDATE_GOLDEN=1 rewrites)."""

import json
import os
import re
from pathlib import Path

import pytest

from ocr.grounding import iter_blocks, parse_regions
from ocr.postprocess import COUNTER_NAMES, EOS, process_page, strip_debug_lines
from conftest import shared

RAW_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "raw_outputs"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "postprocess"
FILES = sorted(p.name for p in RAW_DIR.glob("*.txt")) if RAW_DIR.is_dir() else []
MODES = ("clean", "grounded")
BOX_PREFIX_RE = re.compile(r"^\s*[a-z_]*\[\[\d+, \d+, \d+, \d+\]", re.MULTILINE)


def raw(name: str) -> str:
    shared(RAW_DIR)
    matches = sorted(RAW_DIR.glob(f"{name}_*.txt")) if len(name) == 2 else [RAW_DIR / name]
    return shared(matches[0] if matches else RAW_DIR / f"{name}_*.txt").read_text(encoding="utf-8")


def run(name: str, mode: str) -> tuple[str, dict[str, int]]:
    return process_page(raw(name), mode=mode)


def words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text))


def pipe_rows(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.lstrip().startswith("|")]


def blank_pipe_row(line: str) -> bool:
    return not line.replace("|", "").strip()


def test_the_raw_outputs_are_there():
    assert len(FILES) == 25, shared(RAW_DIR)          # the 25 real outputs in ../shared/fixtures/raw_outputs


# --- invariants for every file -------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FILES or ["missing"])
def test_invariants(name: str, mode: str) -> None:
    out, counters = run(name, mode)
    assert set(counters) <= set(COUNTER_NAMES) and all(v > 0 for v in counters.values())
    for junk in (EOS, "<image>", "<|grounding|>", "torch.Size", "save results"):
        assert junk not in out
    assert "\n\n\n" not in out and not out.startswith("\n")
    assert process_page(out, mode=mode) == (out, {})  # idempotent on real pages
    if mode == "clean":
        assert not re.search(r"<\|/?(?:ref|det)\|>", out)
        assert not BOX_PREFIX_RE.search(out)
    else:
        blocks = list(iter_blocks(out))
        assert all(b.well_formed and not b.gap for b in blocks)
        closers = len(re.findall(r"<\|/(?:ref|det)\|>", out))
        assert closers == sum(b.label is not None for b in blocks) + len(blocks)


# Loops (01, 22) and stdout debug prints (06, 07) are meant to lose words.
LOSSLESS = [f for f in FILES if f[:2] not in ("01", "06", "07", "22")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", LOSSLESS or ["missing"])
def test_no_page_word_is_lost(name: str, mode: str) -> None:
    text = strip_debug_lines(raw(name))[0]
    page_words = set().union(*(
        words(r.text) | (words(r.label) if " " in r.label else set()) for r in parse_regions(text)
    ))
    out_words = words(process_page(text, mode=mode)[0])
    # a hyphen join turns two fragments into one longer word
    lost = {w for w in page_words if w not in out_words and not any(w in o for o in out_words)}
    assert not lost


# --- what each file is here for ------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_01_runaway_overline_loop_is_dropped(mode: str) -> None:
    out, counters = run("01", mode)
    assert "overline" not in out and "underline[" not in out
    assert counters["runaway_lines_dropped"] > 300
    for answer in ("c)", "d)", "e)", "f)", "\\ln^2(2)", "\\underline{\\nabla}^2 V"):
        assert answer in out
    assert out.rstrip().endswith("Gradient und Hesse-Matrix ergeben sich zu")


@pytest.mark.parametrize("mode", MODES)
def test_03_malformed_table_kept_intact(mode: str) -> None:
    source = raw("03")
    table = re.search(r"<table>.*?</table>", source).group(0)
    assert table in run("03", mode)[0]


@pytest.mark.parametrize("mode", MODES)
def test_04_exponents_are_not_footnotes(mode: str) -> None:
    out, counters = run("04", mode)
    assert "2<sup>t-3a</sup>" in out and "f<sup>-1</sup>" in out
    assert "[^" not in out and "footnotes_linked" not in counters
    assert out.count("<td></td>") == raw("04").count("<td></td>")


@pytest.mark.parametrize(("name", "first"), [("06", "# Masrren"), ("07", "## Preparation")])
def test_06_07_stdout_debug_lines_removed(name: str, first: str) -> None:
    out, counters = run(name, "clean")
    assert out.startswith(first) and counters["debug_lines_removed"] == 11
    assert "=====" not in out and "compression ratio" not in out


def test_06_empty_spacer_row_kept() -> None:
    assert '<tr><td colspan="10"></td></tr>' in run("06", "clean")[0]


@pytest.mark.parametrize("mode", MODES)
def test_07_real_captions_kept(mode: str) -> None:
    out, counters = run("07", mode)
    assert out.count("<center>") == 6 and "captions_removed" not in counters
    assert out.count("<|ref|>image<|/ref|>") == (7 if mode == "grounded" else 0)


@pytest.mark.parametrize("mode", MODES)
def test_08_leading_paragraph_and_rowspan_table_kept(mode: str) -> None:
    source, out = raw("08"), run("08", mode)[0]
    assert out.startswith("order to compute the TED score.")
    assert re.search(r"<table>.*?</table>", source).group(0) in out
    assert "PubTables- 1M" in out


@pytest.mark.parametrize("mode", MODES)
def test_10_pipe_table_keeps_real_rows_drops_empty_ones(mode: str) -> None:
    out, counters = run("10", mode)
    real = [row for row in pipe_rows(raw("10")) if not blank_pipe_row(row)]
    assert pipe_rows(out) == real
    assert counters == {"empty_rows_dropped": 5}
    assert "Table 6.3: Operation_id List – Category 3" in out


def test_11_grounded_tables_kept_tiny_image_block_gone_in_clean() -> None:
    clean = run("11", "clean")[0]
    assert clean.count("<table>") == 2 and clean.rstrip().endswith("</table>")
    assert run("11", "grounded")[0].rstrip().endswith("<|ref|>image<|/ref|><|det|>[[115, 945, 148, 976]]<|/det|>")


@pytest.mark.parametrize("mode", MODES)
def test_12_pseudo_tags_and_repeated_lines_are_content(mode: str) -> None:
    out, counters = run("12", mode)
    assert counters == {}
    assert out == raw("12") + "\n"
    assert out.count("<Tg>") == 7 and out.count("<GetFolderItems(NowPlaying)>") == 3


def test_13_table_footnote_label_text_kept() -> None:
    out = run("13", "clean")[0]
    assert "Table 2.1:Definitions for AVRCP" in out and out.count("[13] SDP Test Suite, SDP.TS") == 2


def test_15_truncated_det() -> None:
    clean, counters = run("15", "clean")
    assert clean == "0\n\n0 0\n\n**0** **0**\n\n0 **0**\n" and "<|det|>" not in clean
    grounded, counters = run("15", "grounded")
    assert grounded.endswith("<|ref|>text<|/ref|><|det|>[[0, 0, 997, 0]]<|/det|>\n")
    assert counters["dangling_tags_closed"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_16_span_tables_with_empty_cells_kept(mode: str) -> None:
    out = run("16", mode)[0]
    assert out.count("<table>") == 4 and '<td rowspan="5"></td>' in out
    assert '<td colspan="2"></td>' in out


def test_18_prose_cut_mid_sentence_kept() -> None:
    out = run("18", "clean")[0]
    assert out.endswith("为中\n") and "人- 自然- 社会心理" in out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("19", "## You're browsing as a Guest\n\nPages you view in this window won't appear in the "
               "browser history and they won't leave other traces, like cookies, on the computer "
               "after you close all open Guest windows. Any files you download will be preserved, "
               "however.\n\nLearn more\n"),
        ("20", "DeepSeek OCR 2\n\nInvoice 12345\n\nTotal: $42.00\n\nThank you!\n"),
    ],
)
def test_19_20_short_pages_clean(name: str, expected: str) -> None:
    assert run(name, "clean") == (expected, {"grounding_blocks_removed": 4 if name == "20" else 3})


@pytest.mark.parametrize("mode", MODES)
def test_22_pre_loop_and_cut_tag_dropped(mode: str) -> None:
    out, counters = run("22", mode)
    assert "<pre>" not in out and "[[520\n" not in out and not out.rstrip().endswith("[[520")
    assert counters["runaway_lines_dropped"] > 200
    for kept in ("Rješenje: A) 63", "Oznáčimo s a, b i c", "(a) Ground truth image", "četvrtoj"):
        assert kept in out
    assert out.count("<--- Page Split --->") == 2


def test_23_typescript_hyphenation_joined() -> None:
    out, counters = run("23", "clean")
    for word in ("caracteristiques", "resplendissants", "tropique", "contempler", "suggestives"):
        assert word in out
    assert counters["hyphen_joins"] == 8
    assert "gratte-ciel" in out and "Etats-Unis" in out
    assert not re.search(r"[a-zà-ÿ]-\n", out)


def test_24_official_det_file() -> None:
    source = raw("24")
    grounded, counters = run("24", "grounded")
    assert counters == {} and grounded.count("<--- Page Split --->") == 6
    clean, counters = run("24", "clean")
    assert counters == {"grounding_blocks_removed": source.count("<|ref|>")}
    assert "stop- loss" in clean and "FXTrades" in clean and "BRCF2242" in clean


def test_26_truncated_text_kept() -> None:
    out = run("26", "clean")[0]
    assert out.endswith("Add to creamed mixture\n") and "½ cup shortening" in out


def test_27_broken_pipe_rows() -> None:
    out, counters = run("27", "clean")
    assert counters == {"empty_rows_dropped": 1}
    assert "\n|\n" not in out and "$733.1 | $758.6 |" in out
    assert [r for r in pipe_rows(raw("27")) if r.strip() != "|"] == pipe_rows(out)


def test_29_fused_items_and_latex_untouched() -> None:
    out = run("29", "clean")[0]
    assert "Test PurposeVerify" in out and "\\(= 0x2\\)" in out and "GetFolderltems" in out


@pytest.mark.parametrize("name", ["31", "32"])
@pytest.mark.parametrize("mode", MODES)
def test_31_32_free_ocr_pages_untouched(name: str, mode: str) -> None:
    assert run(name, mode) == (raw(name) + "\n", {})


def test_34_text_inside_ref() -> None:
    lines = ["Deploy open-source and specialized models", "smarterandfasterwithsimpleApls.Accessthe",
             "latest chat, code, image, audio, video models and"]
    assert run("34", "clean")[0] == "\n".join(lines) + "\n"
    grounded, counters = run("34", "grounded")
    assert counters == {"dangling_tags_dropped": 2}
    assert grounded.startswith("<|det|>[[37, 48, 279, 140]]<|/det|>\n")
    assert grounded.endswith("\n" + lines[2] + "\n")


@pytest.mark.parametrize("mode", MODES)
def test_35_dash_placeholders_emptied(mode: str) -> None:
    out, counters = run("35", mode)
    assert counters["placeholder_cells_pruned"] == 7
    assert not re.search(r"<td>\s*(?:-|—|–|None|N/A)\s*</td>", out)
    assert "<tr><td>Geschlecht</td><td>Modus</td><td></td><td>Kreis</td></tr>" in out
    for kept in ("Histogramm, Box-Plot", "kardinal/ordinal", "<td>Anzahl der AN</td><td>5</td>"):
        assert kept in out


# --- golden outputs ------------------------------------------------------------------------

def golden_path(name: str, mode: str) -> Path:
    return GOLDEN_DIR / f"{Path(name).stem}.{mode}.md"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FILES or ["missing"])
def test_golden(name: str, mode: str) -> None:
    out, counters = run(name, mode)
    path, counts_path = golden_path(name, mode), GOLDEN_DIR / "counters.json"
    key = f"{Path(name).stem}.{mode}"
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(out, encoding="utf-8")
        saved = json.loads(counts_path.read_text()) if counts_path.exists() else {}
        saved[key] = counters
        counts_path.write_text(json.dumps(dict(sorted(saved.items())), indent=1, ensure_ascii=False) + "\n")
    if not path.exists():
        pytest.fail(f"no golden output {path} for {key}: run with UPDATE_GOLDEN=1 and review the diff",
                    pytrace=False)
    assert out == path.read_text(encoding="utf-8")
    assert counters == json.loads(counts_path.read_text())[key]
