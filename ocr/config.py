"""The run's settings: one frozen object, each option declared once next to its default and help."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"


def opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A config field that is also a command-line flag (--field-name)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def _default_render_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class Config:
    # Input and output
    input_dir: Path = opt(None, "folder searched recursively for *.pdf (any case)", required=True, type=Path)
    output_dir: Path = opt(None, "where <relative path>/<stem>.md, the run report and logs go",
                           required=True, type=Path)
    mode: str = opt("clean", "clean: Markdown only; grounded: keep <|ref|>/<|det|> layout blocks",
                    choices=("clean", "grounded"))
    max_pages: int | None = opt(None, "OCR at most this many pages of each PDF", type=int)
    num_shards: int = opt(1, "split the PDFs into this many disjoint shards (one per worker/GPU)", type=int)
    shard_index: int = opt(0, "which shard this worker runs (0-based)", type=int)
    overwrite: bool = opt(False, "redo PDFs that are already complete (otherwise they are skipped)")
    # Rendering and blank pages
    dpi: int = opt(144, "render resolution; 144 is what DeepSeek-OCR's own PDF runner uses", type=int)
    max_render_pixels: int = opt(12_000_000, "cap on pixels per rendered page (posters are scaled down)",
                                 type=int)
    render_workers: int = opt(_default_render_workers(), "render processes running ahead of the engine",
                              type=int)
    preprocess_workers: int = opt(max(1, min(8, (os.cpu_count() or 2) // 2)), "threads running vLLM's "
                                  "input processor (image tiling, tokenizing) beside the engine", type=int)
    save_page_images: bool = opt(False, "also write page PNGs to <stem>_assets/")
    save_crops: bool = opt(False, "grounded mode: write figure/table crops to <stem>_assets/")
    # Model and engine
    model: str = opt(DEFAULT_MODEL, "Hugging Face id or local checkpoint directory")
    load_format: str = opt("auto", "vLLM load_format; 'dummy' = random weights, for throughput tests only",
                           choices=("auto", "dummy"))
    batch_pages: int = opt(128, "pages decoding in the engine at once (continuous batching; vLLM max_num_seqs)",
                           type=int)
    max_num_seqs: int | None = opt(None, "vLLM max_num_seqs (default: --batch-pages)", type=int)
    queue_ahead: int | None = opt(None, "pages prepared and waiting in the engine beyond --batch-pages, so "
                                  "a finished page's place is taken at the next step (default: a quarter "
                                  "of --batch-pages, at least 16 but no more than --batch-pages)", type=int)
    max_tokens: int = opt(6144, "output tokens per page at most (prompt + output <= 8192)", type=int)
    gpu_memory_utilization: float = opt(0.9, "share of GPU memory vLLM may use", type=float)
    kv_cache_dtype: str = opt("fp8", "KV cache dtype; falls back to auto where FP8 is not supported",
                              choices=("fp8", "auto", "bfloat16", "fp8_e4m3", "fp8_e5m2"))
    enable_fp8_weights: bool = opt(False, "quantize weights to FP8 on load (check quality first)")
    tensor_parallel_size: int = opt(1, "GPUs per engine; must divide the model's 10 attention heads",
                                    type=int)
    mm_encoder_tp_mode: str | None = opt(None, "with tensor parallelism: 'data' runs the vision encoder "
                                         "data-parallel", choices=("weights", "data"))
    block_size: int | None = opt(None, "KV cache block size (default: vLLM's; 256 is DeepSeek-OCR's own)",
                                 type=int)
    attention_backend: str | None = opt(None, "vLLM attention backend, e.g. TRITON_ATTN (default: vLLM's)")
    enforce_eager: bool = opt(False, "disable CUDA graphs")
    prompt: str | None = opt(None, "override the prompt (default: DeepSeek-OCR's own prompt for --mode)")
    ngram_size: int | None = opt(None, "no-repeat n-gram guard size, 0 turns it off (default: the model's own: "
                                 "30 for DeepSeek-OCR, 20 for DeepSeek-OCR-2)", type=int)
    ngram_window: int | None = opt(None, "no-repeat n-gram guard window in tokens (default: 90)", type=int)
    trust_remote_code: bool = opt(False, "allow the checkpoint's own Python code (transformers runner)")
    # Recovery passes (ocr/passes.py)
    runaway_retry: str = opt("on", "read a page once more when its answer loops, is cut at --max-tokens or "
                             "is empty (other sampling, or Large mode); the better answer is kept",
                             choices=("on", "off"))
    required_labels: str = opt("table", "grounded mode: layout labels a page should have; a page without "
                               "them is read again in the 1280 Large mode (comma-separated, '' = off)")
    retry_large_cap: int = opt(50, "Large-mode re-reads allowed per run and worker (most pages have no "
                               "table, so this bounds the extra work; 0 = off)", type=int)
    roi_pass: bool = opt(False, "grounded mode: read each table, title, paragraph and figure region again "
                         "as a crop with the clean prompt and merge the texts back in the model's reading order")
    roi_max_crops: int = opt(48, "--roi-pass: regions read again per page at most", type=int)
    # Post-processing
    greek_repair: str = opt("safe", "repair unambiguous Greek OCR slips (look-alike letters, final sigma)",
                            choices=("off", "safe"))
    # Failure handling
    page_timeout: float = opt(900.0, "seconds without any finished page, pages in flight, before the "
                              "engine counts as hung", type=float)
    max_engine_restarts: int = opt(12, "engine restarts allowed per run before stopping (isolating a page "
                                   "that kills the engine among the default 160 pages in flight takes up "
                                   "to 10)", type=int)
    # Logging
    log_level: str = opt("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    no_progress: bool = opt(False, "no progress bar")

    @property
    def seqs(self) -> int:
        return self.max_num_seqs or self.batch_pages

    @property
    def pages_in_flight(self) -> int:
        """Pages the runner keeps in the engine: decoding (max_num_seqs) plus prepared and waiting."""
        ahead = self.queue_ahead if self.queue_ahead is not None else min(self.seqs, max(16, self.seqs // 4))
        return self.seqs + ahead

    @property
    def shard_suffix(self) -> str:
        return "" if self.num_shards == 1 else f".shard-{self.shard_index}-of-{self.num_shards}"

    @property
    def report_path(self) -> Path:
        return self.output_dir / f"run_report{self.shard_suffix}.json"

    @property
    def state_dir(self) -> Path:
        """Journals and the resume manifest live here, out of the way of the Markdown files."""
        return self.output_dir / ".ocr-state"

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change a PDF's output: a finished PDF made with others is redone."""
        return {"model": self.model, "mode": self.mode, "prompt": self.prompt, "max_pages": self.max_pages,
                "dpi": self.dpi, "max_tokens": self.max_tokens, "greek_repair": self.greek_repair,
                **self._grounded_passes(), **self._decoding()}

    def _decoding(self) -> dict[str, Any]:
        """Weights and decoding settings, only where they differ from the defaults (so outputs made at
        the defaults stay done): a `--load-format dummy` test run's Markdown is never taken as finished."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name in _DECODING and getattr(self, f.name) != f.default}

    def _grounded_passes(self) -> dict[str, Any]:
        """The grounded-only passes change a page's layout blocks: a PDF made without them is redone.
        (The runaway retry is left out: it changes only runaway pages, not worth a corpus re-run.)"""
        if self.mode != "grounded":
            return {}
        from .large_mode import parse_required
        return {"roi_pass": self.roi_pass, "required_labels": sorted(parse_required(self.required_labels))}


_DECODING = ("load_format", "enable_fp8_weights", "ngram_size", "ngram_window")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(prog: str = "run_pdf_ocr_vllm.py", description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        meta = dict(f.metadata)
        if f.type in ("bool", bool):
            parser.add_argument(_flag(f.name), action="store_true", help=meta["help"])
            continue
        parser.add_argument(_flag(f.name), default=f.default, **meta)
    return parser


class UsageError(ValueError):
    """A flag combination that cannot work; exits with the usage code."""


def validate(cfg: Config) -> Config:
    checks = [
        (cfg.num_shards >= 1, "--num-shards must be >= 1"),
        (0 <= cfg.shard_index < cfg.num_shards, "--shard-index must be in [0, --num-shards)"),
        (cfg.max_pages is None or cfg.max_pages >= 1, "--max-pages must be >= 1"),
        (cfg.batch_pages >= 1, "--batch-pages must be >= 1"),
        (cfg.queue_ahead is None or cfg.queue_ahead >= 0, "--queue-ahead must be >= 0"),
        (cfg.dpi >= 36, "--dpi must be >= 36"),
        (cfg.max_tokens >= 1, "--max-tokens must be >= 1"),
        (0.05 <= cfg.gpu_memory_utilization <= 1.0, "--gpu-memory-utilization must be in [0.05, 1]"),
        (cfg.render_workers >= 1, "--render-workers must be >= 1"),
        (cfg.preprocess_workers >= 1, "--preprocess-workers must be >= 1"),
        (cfg.max_engine_restarts >= 0, "--max-engine-restarts must be >= 0"),
        (cfg.tensor_parallel_size >= 1, "--tensor-parallel-size must be >= 1"),
        (cfg.retry_large_cap >= 0, "--retry-large-cap must be >= 0"),
        (cfg.roi_max_crops >= 1, "--roi-max-crops must be >= 1"),
        (not cfg.roi_pass or cfg.mode == "grounded", "--roi-pass needs --mode grounded (it reads the "
                                                     "layout boxes)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return cfg


def parse_config(argv: Sequence[str] | None = None, **parser_kwargs: Any) -> Config:
    args = build_parser(**parser_kwargs).parse_args(argv)
    return validate(Config(**vars(args)))
