"""Turn one page of raw DeepSeek-OCR output into Markdown (`clean`) or tagged Markdown
(`grounded`), counting every cleaning action. Pure string functions; no engine imports."""

import bisect
import functools
import html
import re
from collections import Counter
from collections.abc import Callable, Sequence

from ocr import loops
from ocr.grounding import GROUNDING_TAGS, Block, is_layout_label, iter_blocks

Step = Callable[[str], tuple[str, int]]

EOS = "<｜end▁of▁sentence｜>"  # full-width bars U+FF5C and U+2581, unlike the ASCII <|ref|> tags
# Always stripped: the EOS and the two prompt markers. DeepSeek-OCR's tokenizer has the
# markers as added tokens, so `all_special_tokens` may not list them.
ALWAYS_STRIPPED = (EOS, "<image>", "<|grounding|>")
# Used only when the caller passes no tokenizer tokens.
DEFAULT_SPECIAL_TOKENS = (
    "<｜begin▁of▁sentence｜>", EOS, "<｜▁pad▁｜>", "<|User|>", "<|Assistant|>", "<image>",
    "<|grounding|>", *GROUNDING_TAGS,
)
COUNTER_NAMES: tuple[str, ...] = (
    "surrogates_replaced", "control_chars_removed", "boxes_dropped", "debug_lines_removed", "special_tokens_stripped", "prompt_echoes_removed",
    "latex_blocks_dropped", "runaway_lines_dropped", "grounding_blocks_removed",
    "box_prefixes_removed", "grounding_blocks_repaired", "dangling_tags_closed",
    "dangling_tags_dropped", "captions_removed", "placeholder_cells_pruned",
    "blank_cells_collapsed", "empty_rows_dropped", "tables_dropped", "hyphen_joins",
    "footnotes_linked", "blank_runs_collapsed",
)
MODES = ("clean", "grounded")


# --- small helpers -----------------------------------------------------------------------

def _replace_spans(text: str, edits: Sequence[tuple[int, int, str]]) -> str:
    """Apply sorted, non-overlapping (start, end, new) edits; a line that only held
    deleted spans is removed with its newline, so deletions leave no blank residue."""
    if not edits:
        return text
    pieces: list[str | None] = []           # None: a deleted span
    pos = 0
    for start, end, new in edits:
        pieces += [text[pos:start], new or None]
        pos = end
    pieces.append(text[pos:])
    out: list[str] = []
    line: list[str] = []                    # the output line being built
    deleted = False
    for piece in pieces:
        if piece is None:
            deleted = True
            continue
        *done, rest = piece.split("\n")
        for part in done:                   # a line ends inside this piece
            line.append(part)
            if not (deleted and not "".join(line).strip(" \t")):
                out.append("".join(line) + "\n")
            line, deleted = [], False
        line.append(rest)
    if not (deleted and not "".join(line).strip(" \t")):
        out.append("".join(line))
    return "".join(out)


def _sub(pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str | None],
         text: str) -> tuple[str, int]:
    """pattern.sub where repl returns None to leave a match as it is; counts real changes."""
    count = 0

    def wrapped(m: re.Match[str]) -> str:
        nonlocal count
        new = repl(m)
        if new is None:
            return m.group(0)
        count += 1
        return new
    return pattern.sub(wrapped, text), count


def _until_stable(step: Step, text: str) -> tuple[str, int]:
    """Repeat a step until it changes nothing (a change can enable another)."""
    total = 0
    while True:
        text, n = step(text)
        if not n:
            return text, total
        total += n


# --- characters no file can hold ---------------------------------------------------------

_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f]")     # C0 controls but tab and newline


def replace_surrogates(text: str) -> tuple[str, int]:
    """Lone surrogates (a UTF-16 half, which UTF-8 cannot encode) become U+FFFD."""
    return _SURROGATE_RE.subn("\ufffd", text)


def remove_controls(text: str) -> tuple[str, int]:
    """NUL and the other C0 controls except tab and newline go (a carriage return too)."""
    return _CONTROL_RE.subn("", text)


# --- stdout debug lines, special tokens, prompt echoes ------------------------------------

_DEBUG_LINE_RE = re.compile(
    r"(?:BASE|PATCHES):\s+torch\.Size\(\[[\d, ]*\]\)|image size:\s+\(\d+, \d+\)"
    r"|valid image tokens:\s+\d+|output texts tokens \(valid\):\s+\d+"
    r"|compression ratio:\s+[\d.]+|=+ ?save results: ?=+"
    r"|Setting `pad_token_id` to `eos_token_id`:\d+ for open-end generation\."
)
_RULER_RE = re.compile(r"={5,}")
_DEBUG_HINTS = ("torch.Size", "image size", "valid image tokens", "output texts tokens", "compression ratio",
                "save results", "Setting `pad_token_id`")   # substring search first: the regex is slow


def strip_debug_lines(text: str) -> tuple[str, int]:
    """Drop the lines HF `model.infer()` prints around the text in stdout captures.

    A bare `=====` ruler is dropped only next to such a line, so a Markdown setext
    heading underline survives: a run of rulers goes when the line before or after it is one.
    """
    if not any(hint in text for hint in _DEBUG_HINTS):
        return text, 0
    lines = text.split("\n")
    debug = [bool(_DEBUG_LINE_RE.fullmatch(line.strip())) for line in lines]
    ruler = [bool(_RULER_RE.fullmatch(line.strip())) for line in lines]
    drop = list(debug)
    i = 0
    while i < len(lines):
        if not ruler[i]:
            i += 1
            continue
        k = i
        while k < len(lines) and ruler[k]:
            k += 1
        if (i > 0 and debug[i - 1]) or (k < len(lines) and debug[k]):
            drop[i:k] = [True] * (k - i)
        i = k
    kept = [line for line, d in zip(lines, drop) if not d]
    return "\n".join(kept), sum(drop)


_HTML_TAG_TOKEN_RE = re.compile(
    r"</?(?:table|thead|tbody|tfoot|tr|td|th|br|sup|sub|center|pre|code|b|i|u|em|strong"
    r"|p|div|span|img|hr|ul|ol|li|h[1-6])\b[^<>]*/?>",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=16)
def special_token_regex(tokens: tuple[str, ...]) -> re.Pattern[str]:
    """One alternation over the tokens worth stripping, longest first.

    Skipped: blank tokens, the grounding tags (the grounding steps own them) and HTML
    tags such as `<td>` that DeepSeek-OCR's tokenizer declares as added tokens.
    """
    keep = {
        t for t in (*tokens, *ALWAYS_STRIPPED)
        if t.strip() and t not in GROUNDING_TAGS and not _HTML_TAG_TOKEN_RE.fullmatch(t)
    }
    if not keep:
        return re.compile(r"(?!)")
    return re.compile("|".join(re.escape(t) for t in sorted(keep, key=lambda t: (-len(t), t))))


def strip_special_tokens(text: str, special_tokens: Sequence[str] = ()) -> tuple[str, int]:
    """Remove every special/meta token: the tokenizer's (or the defaults) and ALWAYS_STRIPPED."""
    return special_token_regex(tuple(special_tokens) or DEFAULT_SPECIAL_TOKENS).subn("", text)


PROMPT_ECHOES = (
    "Convert the document to markdown.", "Free OCR.", "OCR this image.", "Parse the figure.",
    "Describe this image in detail.", "Extract the text in the image.",
)
_ECHO_RE = re.compile(
    r"\A\s*(?:" + "|".join(re.escape(p) for p in PROMPT_ECHOES) + r")[ \t]*(?:\n|\Z)",
    re.IGNORECASE,
)


def strip_prompt_echo(text: str) -> tuple[str, int]:
    """Remove prompts the model repeats at the very start of the page, each on its own line."""
    count = 0
    while m := _ECHO_RE.match(text):
        text, count = text[m.end():], count + 1
    return text, count


# --- runaway output -------------------------------------------------------------------------

_LATEX_BLOCK_RE = re.compile(
    r"\\begin\{(?P<env>tikzpicture|picture)\}.*?(?P<end>\\end\{(?P=env)\})?(?(end)|\Z)"
    r"|\\\[(?:(?!\\\]).)*(?:\\\]|\Z)|\$\$(?:(?!\$\$).)*(?:\$\$|\Z)",
    re.DOTALL,
)
MAX_TIKZ_CHARS = 2000


def drop_runaway_latex(text: str) -> tuple[str, int]:
    """Drop repetitive display-math blocks (`\\\\` walls) and runaway TikZ pictures.

    A TikZ/picture environment goes when it is unterminated, longer than
    MAX_TIKZ_CHARS or repetitive once digits are ignored; `\\[...\\]` and `$$...$$`
    blocks go only when repetitive.
    """
    spans = []
    for m in _LATEX_BLOCK_RE.finditer(text):
        block = m.group(0)
        if m.group("env"):
            drop = (not m.group("end") or len(block) > MAX_TIKZ_CHARS
                    or loops.is_degenerate(re.sub(r"\d+", "0", block)))
        else:
            drop = loops.is_degenerate(block)
        if drop:
            spans.append(m.span())
    return _replace_spans(text, [(a, b, "") for a, b in spans]), len(spans)


def drop_runaway_lines(text: str) -> tuple[str, int]:
    """Drop the output of generation loops (`ocr.loops.find_loops`: repeated units of any length,
    drifting copies, OCR-2's repeated sentences, long lines that are a short unit repeated), keeping
    the first genuine copy. Repeated until nothing is left to drop, so one call is idempotent: a loop
    removed can bring two stretches of repeats together."""
    total = 0
    while True:
        text, n = loops.remove_loops(text)
        if not n:
            return text, total
        total += n


# --- grounding tags -------------------------------------------------------------------------

_STRAY_TAG_RE = re.compile(r"<\|/?(?:ref|det)\|>")


def _label_text(block: Block) -> str:
    """What survives of a removed block: recognised text inside the ref, never a layout label."""
    label = block.label or ""
    return "" if is_layout_label(label) else label.strip()


def _rewrite_blocks(text: str, rewrite: Callable[[Block], str | None]) -> tuple[str, int]:
    """Replace each block for which rewrite returns a string ("" deletes); count them."""
    edits = []
    for block in iter_blocks(text):
        new = rewrite(block)
        if new is not None:
            edits.append((block.start, block.end, new))
    return _replace_spans(text, edits), len(edits)


def strip_grounding(text: str) -> tuple[str, int]:
    """Clean mode: remove every grounding block and stray tag, keeping the text after it.

    A ref holding recognised text rather than a layout label (the `OCR this image.`
    style) keeps that text, where the official runner deletes it.
    """
    text, count = _rewrite_blocks(text, _label_text)
    edits = [(m.start(), m.end(), "") for m in _STRAY_TAG_RE.finditer(text)]
    return _replace_spans(text, edits), count + len(edits)


_BOX = r"\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]"
_BOX_PREFIX_RE = re.compile(
    rf"^[ \t]*(?:(?P<label>[a-z]+(?:_[a-z]+)*)[ \t]*)?\[{_BOX}(?:\s*,\s*{_BOX})*\][ \t]*(?P<nl>\n?)",
    re.MULTILINE,
)


def strip_box_prefixes(text: str) -> tuple[str, int]:
    """Clean mode: drop a leftover `label[[x1, y1, x2, y2]]` line prefix (tags already gone).

    A word that is not a layout label stays: it is recognised text.
    """
    def drop(m: re.Match[str]) -> str:
        label = m.group("label") or ""
        return "" if is_layout_label(label) or not label else label + m.group("nl")
    return _until_stable(lambda t: _BOX_PREFIX_RE.subn(drop, t), text)


def close_dangling_blocks(text: str) -> tuple[str, int]:
    """Grounded mode: close a `<|det|>` cut off after complete boxes (a run hitting max tokens)."""
    return _rewrite_blocks(
        text, lambda b: b.canonical() if b.has_det and not b.det_closed and b.boxes else None
    )


def drop_dangling_tags(text: str) -> tuple[str, int]:
    """Grounded mode: drop blocks that cannot be closed and closing tags with no opener.

    A block cannot be closed when it has no `<|det|>` or its cut-off det holds no
    complete box. It keeps recognised text from inside its ref (never a layout label).
    """
    text, count = _rewrite_blocks(
        text, lambda b: None if b.has_det and (b.det_closed or b.boxes) else _label_text(b)
    )
    blocks = list(iter_blocks(text))
    starts = [b.start for b in blocks]

    def inside(pos: int) -> bool:
        k = bisect.bisect_right(starts, pos) - 1
        return k >= 0 and pos < blocks[k].end
    edits = [(m.start(), m.end(), "") for m in _STRAY_TAG_RE.finditer(text) if not inside(m.start())]
    return _replace_spans(text, edits), count + len(edits)


def drop_invalid_boxes(text: str) -> tuple[str, int]:
    """Grounded mode: remove the boxes that cannot be on the page (`grounding.valid_boxes`: past 0-999,
    inverted); a block left with none goes, keeping recognised text from its ref. Counts boxes."""
    edits, count = [], 0
    for block in iter_blocks(text):
        if block.dropped_boxes:
            count += block.dropped_boxes
            edits.append((block.start, block.end, block.canonical() if block.boxes else _label_text(block)))
    return _replace_spans(text, edits), count


def normalize_blocks(text: str) -> tuple[str, int]:
    """Grounded mode: rewrite closed blocks with whitespace before `<|det|>` or no `<|/ref|>`."""
    return _rewrite_blocks(
        text, lambda b: b.canonical() if b.has_det and b.det_closed
        and (b.gap or (b.label is not None and not b.ref_closed)) else None,
    )


# --- invented captions ----------------------------------------------------------------------

_INVENTED_IMAGE_RE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)|<img\b[^<>]*>", re.IGNORECASE)


def drop_invented_captions(text: str) -> tuple[str, int]:
    """Drop image links and `<img>` tags the model writes itself.

    The model has no image files to link to, so any `![alt](target)` in its output,
    alt text included, is invented. Captions printed on the page (`image_caption`
    blocks, `<center>Figure 1...</center>`) are page text and stay.
    """
    edits = [(m.start(), m.end(), "") for m in _INVENTED_IMAGE_RE.finditer(text)]
    return _replace_spans(text, edits), len(edits)


# --- tables ---------------------------------------------------------------------------------

_TABLE_TAG_RE = re.compile(r"<table\b[^>]*>|</table\s*>", re.IGNORECASE)
_CELL_TAG_RE = re.compile(r"<(t[dh])\b[^>]*>|</(t[dh])\s*>", re.IGNORECASE)


def _html_tables(text: str) -> list[tuple[int, int]]:
    """(start, end) of each `<table ...>` up to the first `</table>` after it; an opening tag inside
    one belongs to it, one never closed starts nothing (the non-greedy regex's matches, in one scan:
    the regex took quadratic time on runaway `<table><tr><td>` output)."""
    spans, start = [], None
    for m in _TABLE_TAG_RE.finditer(text):
        if not m.group(0).startswith("</"):
            start = m.start() if start is None else start
        elif start is not None:
            spans.append((start, m.end()))
            start = None
    return spans


def _html_cells(table: str) -> list[tuple[int, int, int, int]]:
    r"""(open start, content start, content end, close end) of each cell: an opening `<td>`/`<th>` up to
    the first closing tag of its name after it, as `(<(t[dh])\b[^>]*>)(.*?)(</\2\s*>)` would match,
    in linear time (closing tags are looked up from a right-to-left pass)."""
    tags = list(_CELL_TAG_RE.finditer(table))
    next_close: list[dict[str, re.Match[str]]] = [{}] * (len(tags) + 1)
    for k in range(len(tags) - 1, -1, -1):
        close = tags[k].group(2)
        next_close[k] = {**next_close[k + 1], close.lower(): tags[k]} if close else next_close[k + 1]
    cells, pos = [], 0
    for k, m in enumerate(tags):
        if m.group(1) and m.start() >= pos:
            close = next_close[k + 1].get(m.group(1).lower())
            if close is not None:
                cells.append((m.start(), m.end(), close.start(), close.end()))
                pos = close.end()
    return cells


_FORMATTING_TAG_RE = re.compile(
    r"</?(?:br|b|i|u|em|strong|span|p|center)\b[^<>]*>", re.IGNORECASE
)
_DASH_PLACEHOLDER_RE = re.compile(r"[-‐‑‒–—―−]{1,3}")


def _cell_text(content: str) -> str:
    """A cell's visible text: formatting tags and entities resolved, whitespace stripped."""
    return html.unescape(_FORMATTING_TAG_RE.sub("", content)).strip()


def is_placeholder(cell: str) -> bool:
    """`None`, `N/A` (any case) or a lone run of 1-3 dashes; "-5", "3-4", "Α-Β" are content."""
    text = _cell_text(cell)
    return text.casefold() in ("none", "n/a") or bool(_DASH_PLACEHOLDER_RE.fullmatch(text))


def _map_html_cells(text: str, fn: Callable[[str], str | None]) -> tuple[str, int]:
    """Rewrite HTML table cells: fn(content) gives the new content or None to keep it."""
    edits = []
    for t_start, t_end in _html_tables(text):
        for _, c_start, c_end, _ in _html_cells(text[t_start:t_end]):
            new = fn(text[t_start + c_start:t_start + c_end])
            if new is not None:
                edits.append((t_start + c_start, t_start + c_end, new))
    out, pos = [], 0
    for start, end, new in edits:
        out += [text[pos:start], new]
        pos = end
    return "".join(out) + text[pos:], len(edits)


_PIPE_SPLIT_RE = re.compile(r"(?<!\\)\|")
_SEPARATOR_CELL_RE = re.compile(r"\s*:?-+:?\s*")


def _pipe_cells(line: str) -> tuple[list[str], list[int]]:
    """Cells of a pipe-table row and their indices in the split line."""
    parts = _PIPE_SPLIT_RE.split(line)
    last = len(parts) - 1 if not parts[-1].strip() else len(parts)
    idx = list(range(1, last))
    return [parts[i] for i in idx], idx


def _is_separator(line: str, position: int) -> bool:
    """GFM delimiter row: all cells dashes; with 1-2 dashes only as a table's second line."""
    cells, _ = _pipe_cells(line)
    if not cells or not all(_SEPARATOR_CELL_RE.fullmatch(c) for c in cells):
        return False
    return position == 1 or all(c.count("-") >= 3 for c in cells)


def _pipe_tables(lines: list[str]) -> list[range]:
    """Line ranges of pipe tables: runs of consecutive lines that start with `|`."""
    tables, i = [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            tables.append(range(i, j))
            i = j
        else:
            i += 1
    return tables


def _data_rows(lines: list[str], table: range) -> list[int]:
    return [i for i in table if not _is_separator(lines[i], i - table.start)]


def _map_pipe_cells(text: str, fn: Callable[[str], str | None]) -> tuple[str, int]:
    if "|" not in text:
        return text, 0
    lines, count = text.split("\n"), 0
    for table in _pipe_tables(lines):
        for i in _data_rows(lines, table):
            parts = _PIPE_SPLIT_RE.split(lines[i])
            for k in _pipe_cells(lines[i])[1]:
                new = fn(parts[k])
                if new is not None:
                    parts[k], count = new, count + 1
            lines[i] = "|".join(parts)
    return "\n".join(lines), count


def _prune(content: str) -> str | None:
    return "" if _cell_text(content) and is_placeholder(content) else None


def _pipe_prune(cell: str) -> str | None:
    text = cell.strip()
    if not text or not is_placeholder(text):
        return None
    return cell.replace(text, "", 1)


def prune_placeholder_cells(text: str) -> tuple[str, int]:
    """Empty placeholder cells in HTML and pipe tables."""
    text, html_count = _map_html_cells(text, _prune)
    text, pipe_count = _map_pipe_cells(text, _pipe_prune)
    return text, html_count + pipe_count


def collapse_blank_cells(text: str) -> tuple[str, int]:
    """`<td> </td>`, `<td><br></td>`, `<td>&nbsp;</td>` become `<td></td>` (attributes kept)."""
    return _map_html_cells(text, lambda c: "" if c and not _cell_text(c) else None)


def drop_empty_rows(text: str) -> tuple[str, int]:
    """Drop pipe-table rows with no content (never a header row, which a separator follows).

    HTML rows stay: with rowspan/colspan an empty row can carry the table's shape.
    """
    if "|" not in text:
        return text, 0
    lines = text.split("\n")
    drop = set()
    for table in _pipe_tables(lines):
        for i in _data_rows(lines, table):
            header = i + 1 in table and _is_separator(lines[i + 1], i + 1 - table.start)
            if not header and not any(c.strip() for c in _pipe_cells(lines[i])[0]):
                drop.add(i)
    return "\n".join(line for i, line in enumerate(lines) if i not in drop), len(drop)


def drop_empty_tables(text: str) -> tuple[str, int]:
    """Drop HTML and pipe tables in which no cell has content."""
    edits = [
        (start, end, "") for start, end in _html_tables(text)
        if not any(_cell_text(text[start + a:start + b]) for _, a, b, _ in _html_cells(text[start:end]))
    ]
    text, count = _replace_spans(text, edits), len(edits)
    if "|" not in text:
        return text, count
    lines = text.split("\n")
    drop = set()
    for table in _pipe_tables(lines):
        cells = [c for i in _data_rows(lines, table) for c in _pipe_cells(lines[i])[0]]
        if not any(c.strip() for c in cells):
            drop.update(table)
            count += 1
    return "\n".join(line for i, line in enumerate(lines) if i not in drop), count


# --- canonical Markdown ---------------------------------------------------------------------

# Math and code are left alone by the hyphen and footnote passes.
_PROTECTED = r"(?P<protected>```.*?(?:```|\Z)|\\\[.*?(?:\\\]|\Z)|\\\(.*?(?:\\\)|\Z)|\$\$.*?(?:\$\$|\Z))"
_HYPHEN_RE = re.compile(
    _PROTECTED + r"|(?P<left>[^\W\d_])[-\u00ad\u2010][ \t]*\n(?:[ \t]*\n)?[ \t]*"
    r"(?P<right>[^\W\d_]\S*)(?P<space>[ \t]+)?",
    re.DOTALL,
)


_HYPHEN_HINT_RE = re.compile(r"[-\u00ad\u2010][ \t]*\n")


def join_hyphenation(text: str) -> tuple[str, int]:
    """Join a word split by a hyphen at a line end: "infor-\\nmation" -> "information".

    Rule: join when the letter before the hyphen and the first letter after the break
    (one newline, or one blank line as in typescript transcriptions) are both lowercase;
    "Α-\\nΒ" and "x-\\n3" stay. The line break moves after the joined word. A real compound
    split at its hyphen ("peut-\\nêtre", "well-\\nknown") is joined too: without a
    dictionary the two look the same, and split words are far more common at line ends.
    """
    def join(m: re.Match[str]) -> str | None:
        if m.group("protected") or not (m.group("left").islower() and m.group("right")[0].islower()):
            return None
        rest = m.string[m.end():m.end() + 1]
        end = "\n" if m.group("space") is not None and rest not in ("", "\n") else ""
        return m.group("left") + m.group("right") + end
    if not _HYPHEN_HINT_RE.search(text):
        return text, 0
    # "a-\nb-\nc" takes two passes: the first join consumes the "b"
    return _until_stable(lambda t: _sub(_HYPHEN_RE, join, t), text)


_FOOTNOTE_DEF_RE = re.compile(r"^([ \t]*)<sup>\s*(\d{1,3})\s*</sup>[ \t]*(?=\S)", re.MULTILINE)
_FOOTNOTE_REF_RE = re.compile(
    _PROTECTED + r"|(?P<before>[^\W\d_]{3}|[.,;:!?\"'’”»\s]|\[\^\d{1,3}\])"
    r"<sup>\s*(?P<n>\d{1,3})\s*</sup>",
    re.DOTALL,
)


def link_footnotes(text: str) -> tuple[str, int]:
    """Superscript citations become footnotes: `word<sup>71</sup>` -> `word[^71]`.

    Rule: only 1-3 digit numbers. A `<sup>N</sup>` opening a line (before text) becomes
    the definition `[^N]: `; elsewhere it becomes a reference only after a word of 3+
    letters, punctuation, a space or another footnote reference. After a digit, a
    bracket or a 1-2 letter word it is an exponent and stays (`x<sup>2</sup>`,
    `cm<sup>3</sup>`, `(a+b)<sup>2</sup>`); math and code are never touched.
    """
    if "<sup>" not in text:
        return text, 0
    text, defs = _FOOTNOTE_DEF_RE.subn(r"\1[^\2]: ", text)

    def ref(m: re.Match[str]) -> str | None:
        return None if m.group("protected") else f"{m.group('before')}[^{m.group('n')}]"
    text, refs = _until_stable(lambda t: _sub(_FOOTNOTE_REF_RE, ref, t), text)
    return text, defs + refs


_BLANK_RUN_RE = re.compile(r"\n(?:[ \t]*\n){2,}")


def collapse_blank_lines(text: str) -> tuple[str, int]:
    """Two or more blank lines in a row (3+ newlines) become one blank line."""
    return _BLANK_RUN_RE.subn("\n\n", text)


# --- composition ----------------------------------------------------------------------------

_TEXT_STEPS: tuple[tuple[str, Step], ...] = (
    ("captions_removed", drop_invented_captions),
    ("placeholder_cells_pruned", prune_placeholder_cells),
    ("blank_cells_collapsed", collapse_blank_cells),
    ("empty_rows_dropped", drop_empty_rows),
    ("tables_dropped", drop_empty_tables),
    ("blank_runs_collapsed", collapse_blank_lines),
    ("hyphen_joins", join_hyphenation),
    ("footnotes_linked", link_footnotes),
)
_CLEAN_GROUNDING: tuple[tuple[str, Step], ...] = (
    ("grounding_blocks_removed", strip_grounding),
    ("box_prefixes_removed", strip_box_prefixes),
)
_GROUNDED_REPAIR: tuple[tuple[str, Step], ...] = (
    ("boxes_dropped", drop_invalid_boxes),
    ("dangling_tags_closed", close_dangling_blocks),
    ("dangling_tags_dropped", drop_dangling_tags),
    ("grounding_blocks_repaired", normalize_blocks),
)
MAX_ROUNDS = 4


def _between_blocks(step: Step) -> Step:
    """Apply a text step to the text between grounding blocks, never to the blocks."""
    def run(text: str) -> tuple[str, int]:
        out, pos, total = [], 0, 0
        for block in iter_blocks(text):
            piece, n = step(text[pos:block.start])
            out += [piece, text[block.start:block.end]]
            pos, total = block.end, total + n
        piece, n = step(text[pos:])
        return "".join(out) + piece, total + n
    return run


def _steps(mode: str, special_tokens: Sequence[str]) -> list[tuple[str, Step]]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    tokens = tuple(special_tokens)
    head: list[tuple[str, Step]] = [
        ("surrogates_replaced", replace_surrogates),
        ("control_chars_removed", remove_controls),
        ("debug_lines_removed", strip_debug_lines),
        ("special_tokens_stripped", lambda t: strip_special_tokens(t, tokens)),
        ("prompt_echoes_removed", strip_prompt_echo),
        ("latex_blocks_dropped", drop_runaway_latex),
        ("runaway_lines_dropped", drop_runaway_lines),
    ]
    if mode == "clean":
        return head + list(_CLEAN_GROUNDING) + list(_TEXT_STEPS)
    return head + list(_GROUNDED_REPAIR) + [(n, _between_blocks(s)) for n, s in _TEXT_STEPS]


def _finish(text: str) -> str:
    """Whitespace only, so not counted: no leading blank lines, no trailing whitespace on
    a line before a blank line or the end (a hard break there means nothing), one final
    newline. Line by line: the regex for this took quadratic time on a long run of spaces."""
    lines = text.rstrip().split("\n")
    blank = [not line.strip(" \t") for line in lines]
    start = next((i for i, b in enumerate(blank) if not b), len(lines))
    out = [
        "" if blank[i] else lines[i].rstrip(" \t") if i + 1 == len(lines) or blank[i + 1] else lines[i]
        for i in range(start, len(lines))
    ]
    text = "\n".join(out)
    return text + "\n" if text else ""


def process_page(
    raw: str, *, mode: str, special_tokens: Sequence[str] = ()
) -> tuple[str, dict[str, int]]:
    """mode is "clean" or "grounded"; returns the page Markdown and the counters (only non-zero keys)."""
    steps = _steps(mode, special_tokens)
    counts: Counter[str] = Counter()
    text = raw
    for _ in range(MAX_ROUNDS):  # a later step can expose work for an earlier one
        before, changed = text, 0
        for name, step in steps:
            text, n = step(text)
            counts[name] += n
            changed += n
        text = _finish(text)
        if text == before or not changed:   # only whitespace moved: no step has new work
            break
    return text, {name: counts[name] for name in COUNTER_NAMES if counts[name]}


def clean_output(raw: str, special_tokens: Sequence[str] = ()) -> tuple[str, dict[str, int]]:
    """`--mode clean`: Markdown with every tag, box and meta token removed."""
    return process_page(raw, mode="clean", special_tokens=special_tokens)


def grounded_output(raw: str, special_tokens: Sequence[str] = ()) -> tuple[str, dict[str, int]]:
    """`--mode grounded`: the `<|ref|>/<|det|>` blocks kept (well-formed), the rest cleaned."""
    return process_page(raw, mode="grounded", special_tokens=special_tokens)
