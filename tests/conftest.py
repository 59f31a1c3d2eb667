"""Shared fixtures: generated PDFs, the real fixture corpus, and running the CLI with the engine double."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURE_PDFS = SHARED / "fixtures" / "pdfs"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def fixture_pdf(name: str) -> Path:
    path = FIXTURE_PDFS / name
    if not path.exists():
        pytest.skip(f"fixture corpus not found at {FIXTURE_PDFS}")
    return path


def run_cli(args: list[str], engine=None, engine_factory=None) -> int:
    from ocr.cli import main
    from doubles import ScriptedEngine

    factory = engine_factory or (lambda: engine or ScriptedEngine())
    return main(["--render-workers", "1", "--no-progress", *args], engine_factory=factory)


def load_report(out: Path, name: str = "run_report.json") -> dict:
    return json.loads((out / name).read_text(encoding="utf-8"))


def pdf_entry(report: dict, pdf: str) -> dict:
    return next(e for e in report["pdfs"] if e["pdf"] == pdf)


class InlinePool:
    """Stands in for the render process pool: renders at submit time, in this process. Makes page
    arrival deterministic (tests of batching and engine death) and lets monkeypatches take effect."""

    def submit(self, fn, *args):
        from concurrent.futures import Future
        future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, **kwargs):
        pass


@pytest.fixture
def inline_render(monkeypatch):
    import ocr.render
    monkeypatch.setattr(ocr.render.Renderer, "_new_pool", lambda self: InlinePool())
