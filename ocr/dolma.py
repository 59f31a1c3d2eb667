"""ocr-dolma OUT [OUT ...] -o corpus.jsonl.gz: one Dolma-style document per PDF (`id`, `text`, `source`,
`metadata` with the page spans) from finished per-PDF outputs, for language-model corpora.

A command over the outputs rather than a step at the end of a run: shard workers share one output folder
and finish at different times, so only a step after all of them sees the whole corpus; it can be re-made
at any time without OCR, and it reads runs made with or without --format jsonl."""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from .grounding import parse_regions
from .run_outputs import PdfOutput, read_run
from .store import json_text

PAGE_SEPARATOR = "\n\n"


def page_text(text: str, grounded: bool) -> str:
    """A page's text for a corpus: grounded pages without their layout blocks (region texts in order)."""
    if not grounded:
        return text.strip()
    return PAGE_SEPARATOR.join(r.text for r in parse_regions(text) if r.text).strip()


def document(pdf: PdfOutput, source: str, added: str) -> dict[str, Any] | None:
    """The PDF's Dolma document, or None when no page holds text. Blank and failed pages are left out;
    `pdf_page_numbers` holds [start, end, page] character spans (Python string offsets) into `text`."""
    texts, spans, pos = [], [], 0
    for number in sorted(pdf.pages):
        page = pdf.pages[number]
        text = page_text(page.text, pdf.mode == "grounded") if page.status == "ok" else ""
        if not text:
            continue
        if texts:
            pos += len(PAGE_SEPARATOR)
        spans.append([pos, pos + len(text), number])
        texts.append(text)
        pos += len(text)
    if not texts:
        return None
    doc_id = pdf.sha256 or hashlib.sha256(pdf.key.encode("utf-8", "surrogateescape")).hexdigest()
    metadata = {"Source-File": pdf.pdf_name or pdf.key, "sha256": pdf.sha256, "markdown": pdf.key,
                "model": pdf.model, "mode": pdf.mode, "pdf-total-pages": pdf.page_count,
                "pages-ocred": len(pdf.pages), "pages-with-text": len(spans),
                "tokens": sum(p.tokens or 0 for p in pdf.pages.values()), "pdf_page_numbers": spans}
    return {"id": doc_id, "text": PAGE_SEPARATOR.join(texts), "source": source, "added": added,
            "created": added, "metadata": metadata, "attributes": {"pdf_page_numbers": spans}}


def write_corpus(outputs: Iterable[PdfOutput], dest: Path, source: str = "deepseek-ocr") -> dict[str, int]:
    """Stream documents into dest (gzip when it ends in .gz), written to a temporary file and renamed.
    A PDF seen twice (same content in two places or two output folders) is written once."""
    added = datetime.date.today().isoformat()
    counts = {"documents": 0, "empty": 0, "duplicates": 0}
    seen: set[str] = set()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    opener = gzip.open if dest.name.endswith(".gz") else open
    try:
        with opener(tmp, "wt", encoding="utf-8") as f:
            for pdf in outputs:
                doc = document(pdf, source, added)
                if doc is None:
                    counts["empty"] += 1
                elif doc["id"] in seen:
                    counts["duplicates"] += 1
                else:
                    seen.add(doc["id"])
                    f.write(json_text(doc) + "\n")
                    counts["documents"] += 1
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ocr-dolma", description=__doc__.split("\n\n")[0])
    p.add_argument("outs", nargs="+", type=Path, help="output folders of finished runs")
    p.add_argument("-o", "--output", type=Path, required=True, help="the corpus file (.jsonl or .jsonl.gz)")
    p.add_argument("--source", default="deepseek-ocr", help="the documents' `source` field")
    args = p.parse_args(argv)
    for out in args.outs:
        if not out.is_dir():
            print(f"error: {out} is not a folder", file=sys.stderr)
            return 2
    counts = write_corpus((pdf for out in args.outs for pdf in read_run(out)), args.output, args.source)
    print(f"{args.output}: {counts['documents']} documents ({counts['empty']} PDFs without text, "
          f"{counts['duplicates']} duplicates left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
