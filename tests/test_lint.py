"""Pyflakes' rules over the code (ruff --select F): an undefined name is a crash waiting on its code path,
an unused import a leftover of a move."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_no_undefined_names_or_unused_imports():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is in the test extra: pip install -e '.[test]'"
    done = subprocess.run([ruff, "check", "--select", "F", "--no-cache", "--output-format", "concise",
                           "ocr", "bench", "tests", "aws", "scripts", "run_pdf_ocr_vllm.py", "run_pdf_ocr.py"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
