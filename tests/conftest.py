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


def shared(path: Path) -> Path:
    """A fixture or golden file that must be there: a checkout without it fails, saying where it is expected."""
    if not path.exists():
        pytest.fail(f"{path} is missing: the shared fixtures (fixtures/raw_outputs, fixtures/pdfs) are expected "
                    f"at {SHARED}, i.e. ../shared next to this checkout", pytrace=False)
    return path


def raw_output(name: str) -> str:
    """One of the real DeepSeek-OCR outputs in ../shared/fixtures/raw_outputs (missing: the test fails, saying where)."""
    return shared(SHARED / "fixtures" / "raw_outputs" / name).read_text(encoding="utf-8")


def fixture_pdf(name: str) -> Path:
    return shared(FIXTURE_PDFS / name)


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


# Tests that run the whole CLI in subprocesses, render hundreds of pages, drive a browser or import vLLM: minutes
# on the 2-core development machine (measured with --durations). `-m "not real_engine and not slow"` is the quick selection (docs/testing.md);
# .ci/run runs everything.
SLOW_MODULES = {"test_nothing_lost.py", "test_browser.py", "test_render_crash.py"}
SLOW_TESTS = {
    "test_thousand_page_pdf_streams_through",                           # test_bad_input: 1,000 rendered pages
    "test_memory_scaling_reports_a_peak_per_size",                      # test_bench: 10- and 100-page runs
    "test_real_runner_shards_share_one_output_dir_without_clashing",    # test_launch: two runner processes
    "test_the_pipeline_and_its_supervisor_need_no_vllm",                # test_contract: CLI in a subprocess
    "test_the_baseline_runs_where_vllm_is_not_installed",               # test_hf_engine: CLI in a subprocess
    "test_cli_refuses_v1_without_trust_remote_code_in_one_line_before_any_work",
    "test_entry_point_runs_in_a_fresh_process",                         # test_doctor
    # import vLLM (the first import takes 1-5 minutes on a loaded 2-core machine)
    "test_token_counts_match_vllms_gundam_formula", "test_plugin_counts_from_the_produced_tensors_and_from_settings",
    "test_install_refuses_an_unknown_vllm", "test_transformers_image_processor_defaults_are_the_official_settings",
    "test_cpu_settings", "test_gpu_keeps_vllm_defaults_and_fp8_kv", "test_head_dim_override_comes_from_the_checkpoint",
    "test_overrides_win", "test_pre_ada_gpu_falls_back_from_fp8_kv", "test_mm_encoder_cudagraph_where_this_vllm_has_it",
    "test_cudagraph_max_tokens_captures_the_decoder_past_vllms_512",
    "test_engine_kwargs_override_comes_last",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
