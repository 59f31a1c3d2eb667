"""ocr-review: flags from the counters, Markdown rendered safely (tables as tables, everything else escaped,
math as source), and a review page per PDF from a real grounded run."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from conftest import run_cli, raw_output
from doubles import ScriptedEngine
from ocr import review
from ocr.html_render import markdown_html, table_html
from ocr.run_outputs import Page
from pdfgen import ENGLISH, GREEK, make_pdf


class _Balance(HTMLParser):
    """Fails on an end tag that closes something not open: the rendered page stays well nested."""
    VOID = {"br", "hr", "img"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.attrs = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.update(name for name, _ in attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def balanced(fragment: str) -> list[str]:
    parser = _Balance()
    parser.feed(fragment)
    parser.close()
    assert parser.stack == []
    assert not {a for a in parser.attrs if a.startswith("on")}, parser.attrs      # no event handlers
    return parser.tags


@pytest.mark.parametrize("counters, greek, status, finish, expected", [
    ({}, {}, "ok", "stop", []),
    ({"runaway_pages": 1, "runaway_repeated_lines": 1, "runaway_retried": 1, "runaway_unresolved": 1}, {}, "ok",
     "stop", ["runaway (repeated lines; still a runaway)"]),
    ({"runaway_pages": 1, "runaway_hit_max_tokens": 1, "runaway_retried": 1, "runaway_improved": 1}, {}, "ok",
     "stop", ["runaway (cut at --max-tokens; retry kept)"]),
    ({"hit_max_tokens": 1}, {}, "ok", "length", ["cut at --max-tokens"]),
    ({}, {"mixed_script_words": 2}, "ok", "stop", ["Greek mixed script: 2 words"]),
    ({"roi_pages": 1, "roi_replaced": 1}, {}, "ok", "stop", ["ROI pass replaced 1 region"]),
    ({}, {}, "failed", None, ["failed: the model returned no text"]),
])
def test_flags(counters, greek, status, finish, expected):
    page = Page(1, status, "x", counters, greek, finish_reason=finish,
                error="the model returned no text" if status == "failed" else None)
    assert review.flags(page) == expected


def test_html_tables_render_as_tables_and_broken_nesting_is_closed():
    out = markdown_html(raw_output("03_table-malformed-nesting-de.txt"))
    tags = balanced(out)
    assert "table" in tags and "td" in tags
    spans = markdown_html(raw_output("16_webui-tables-colspan-rowspan-zh.txt"))
    assert re.search(r'<td (colspan|rowspan)="\d+"', spans)


def test_everything_but_tables_is_escaped():
    out = markdown_html("Steps <Tg> and <GetFolderItems(NowPlaying)>\n\n<script>alert(1)</script>\n\n"
                        "<table><tr><td onclick=\"x()\"><img src=x onerror=y>cell</td></tr></table>")
    assert "&lt;Tg&gt;" in out and "&lt;script&gt;" in out and "<script" not in out
    assert "onclick" not in out and "<img" not in out and "&lt;img src=x onerror=y&gt;cell" in out
    assert table_html("<table><tr><td>a") == "<table><tr><td>a</td></tr></table>"


def test_math_is_rendered_as_mathml_with_its_source_kept():
    out = markdown_html(r"Gain of \(1.4\%\) and $$\frac{a}{b}$$ then \[x_1 + x_2\] and \(\text{<b onclick=x>}\)")
    assert r'<span class="math" title="\(1.4\%\)"><math' in out and "<mn>1.4</mn>" in out
    assert r'<span class="math display" title="$$\frac{a}{b}$$"><math' in out and "<mfrac>" in out
    assert "<msub>" in out and "onclick" not in balanced(out)     # the tag inside \text stays text


def test_math_that_does_not_convert_is_shown_as_its_source():
    # fixture 01: a runaway page whose LaTeX the model never closed
    out = markdown_html(r"broken \(\frac{1}{\) and fine \(x\)")
    assert r'<span class="math source">\(\frac{1}{\)</span>' in out and "<mi>x</mi>" in out


def test_review_page_of_a_grounded_run(tmp_path, capsys, inline_render):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "doc.pdf", [ENGLISH, None, GREEK])
    answers = {1: raw_output("11_grounded-same-page-as-10-en.txt"),
               3: "<|ref|>text<|/ref|><|det|>[[60, 60, 940, 200]]<|/det|>\nΗ μέθοδος ΤNFα του νόμου."}
    engine = ScriptedEngine(script=lambda r: answers[r.key.page])
    assert run_cli(["--input-dir", str(src), "--output-dir", str(out), "--mode", "grounded",
                    "--required-labels", ""], engine=engine) == 0
    assert review.main([str(out), "doc.pdf"]) == 0
    assert "doc.html: 3 pages, 1 flagged" in capsys.readouterr().out
    page = (out / "review" / "doc.html").read_text(encoding="utf-8")
    assert page.count('<img class="scan"') == 3 and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert page.count("<rect ") == 5 + 1                 # five boxes on page 1, one on page 3
    assert '<a href="#page-3">Page 3</a>: Greek mixed script: 1 word' in page
    assert '<article class="page flagged" id="page-3"' in page and '<article class="page" id="page-1"' in page
    assert "<td>operation_id</td>" in page and "[[Blank page]]" in page


def test_review_of_a_clean_run_without_its_pdfs(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.md").write_text("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", encoding="utf-8")
    assert review.main([str(out)]) == 0
    assert "no page images: source PDF not found" in capsys.readouterr().out
    page = (out / "review" / "a.html").read_text(encoding="utf-8")
    assert "<h1>Title</h1>" in page and "<td>1</td>" in page and "<svg" not in page
    assert review.main([str(out), "missing.pdf"]) == 2
    assert "no output for missing.pdf" in capsys.readouterr().err


def test_review_of_an_output_whose_name_is_not_utf8(tmp_path, capsys):
    import os
    out = tmp_path / "out"
    out.mkdir()
    name = os.fsdecode(b"\xc1\xf1\xe8\xf1\xef.md")        # "Άρθρο" in CP1253: not valid UTF-8
    (out / name).write_text("Κείμενο.\n", encoding="utf-8")
    assert review.main([str(out)]) == 0
    [page] = (out / "review").iterdir()
    assert "Κείμενο." in page.read_text(encoding="utf-8")
