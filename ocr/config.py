"""The run's settings: one frozen object, each option declared once next to its default, help, the engines it
applies to and whether it changes what is written (the resume fingerprint is derived from that)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"
ENGINES = ("vllm", "hf")        # the runners' engines: ocr.engines.vllm, ocr.engines.hf
SMALL_GPU_BATCH = 128          # --batch-pages where ocr.gpu_sizing has not settled it (NOTES.md, defaults)


def opt(default: Any, help: str, *, engine: str | Sequence[str] | None = None, output: bool | str,
        **argparse_kwargs: Any) -> Any:
    """A config field that is also a command-line flag (--field-name).

    engine: the engines it means something to (None: all of ENGINES).
    output: True if it changes what is written (the Markdown), so a PDF finished with another value is redone;
            a --mode name ("grounded") if it changes the output in that mode only; False otherwise."""
    engines = ENGINES if engine is None else (engine,) if isinstance(engine, str) else tuple(engine)
    assert set(engines) <= set(ENGINES) and output in (True, False, "grounded", "clean"), (engines, output)
    return field(default=default, metadata={"help": help, "engine": engines, "output": output,
                                            "argparse": argparse_kwargs})


def _default_render_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class Config:
    # Input and output
    input_dir: Path = opt(None, "folder searched recursively for *.pdf (any case)", output=False, required=True,
                          type=Path)
    output_dir: Path = opt(None, "where <relative path>/<stem>.md, the run report and logs go", output=False,
                           required=True, type=Path)
    mode: str = opt("clean", "clean: Markdown only; grounded: keep <|ref|>/<|det|> layout blocks", output=True,
                    choices=("clean", "grounded"))
    max_pages: int | None = opt(None, "OCR at most this many pages of each PDF (of the --pages selection)",
                                output=True, type=int)
    pages: str | None = opt(None, "OCR only these pages of each PDF, counted from 1 as the page lines count "
                            "them, e.g. '1-5,10,20-'", output=True)
    format: str = opt("md", "files per PDF: 'md', or 'md,jsonl' for <stem>.jsonl beside the Markdown (a JSON "
                      "object per page; docs/output.md)", output=False)
    num_shards: int = opt(1, "split the PDFs into this many disjoint shards (one per worker/GPU)", output=False,
                          type=int)
    shard_index: int = opt(0, "which shard this worker runs (0-based)", output=False, type=int)
    overwrite: bool = opt(False, "redo PDFs that are already complete (otherwise they are skipped)", output=False)
    # Rendering and blank pages
    dpi: int = opt(144, "render resolution; 144 is what DeepSeek-OCR's own PDF runner uses", output=True, type=int)
    max_render_pixels: int = opt(12_000_000, "cap on pixels per rendered page (posters are scaled down)",
                                 output=True, type=int)
    render_workers: int = opt(_default_render_workers(), "render processes running ahead of the engine",
                              output=False, type=int)
    preprocess_workers: int = opt(max(1, min(8, (os.cpu_count() or 2) // 2)), "threads running vLLM's "
                                  "input processor (image tiling, tokenizing) beside the engine", engine="vllm",
                                  output=False, type=int)
    input_torch_threads: int = opt(1, "torch threads of the runner's process on a GPU, where the input "
                                   "processor's tensor operations run (0: torch's default, one per core; "
                                   "each --preprocess-workers thread otherwise starts its own team of one per "
                                   "core beside the engine's); vLLM's own processes keep theirs",
                                   engine="vllm", output=False, type=int)
    blank_threshold: int = opt(20, "a page with no text or drawings is skipped as blank when its biggest mark "
                               "holds fewer ink pixels than this (dust on a blank scan: up to ~15, one 8-pt "
                               "digit ~21); higher skips dustier scans, 0 = never skip (docs/reliability.md)",
                               output=True, type=int)
    post_workers: int = opt(1, "processes running post-processing and the runaway verdict beside the engine "
                            "loop (one keeps up with ~100 ordinary pages/s, bench/postprocess_bench.py; 64 pages/s "
                            "with a control loop that looks every 25 ms, on a loaded 2-core CPU, --cadence 25)",
                            output=False, type=int)
    post_timeout: float = opt(60.0, "seconds of post-processing one page may take before it keeps its raw "
                              "text without meta tokens (counter postprocess_timeout); the worst 200 KB "
                              "input takes < 1 s", output=False, type=float)
    open_timeout: float = opt(120.0, "seconds to open and read one PDF before it is reported and skipped, "
                              "and to render one page before it gets a failure stub (a hung network mount)",
                              output=False, type=float)
    save_page_images: bool = opt(False, "also write page PNGs to <stem>_assets/", output=False)
    save_crops: bool = opt(False, "grounded mode: write figure/table crops to <stem>_assets/", output="grounded")
    # Model and engine
    model: str = opt(DEFAULT_MODEL, "Hugging Face id or local checkpoint directory", output=True)
    load_format: str = opt("auto", "vLLM load_format; 'dummy' = random weights, for throughput tests only",
                           engine="vllm", output=True, choices=("auto", "dummy"))
    batch_pages: int | None = opt(None, "pages decoding in the engine at once (continuous batching; vLLM "
                                  "max_num_seqs; default: 256 on a GPU of 64 GiB or more with 40 GiB "
                                  "of the host's RAM per GPU, else 128; ocr/gpu_sizing.py)", output=False, type=int)
    max_num_seqs: int | None = opt(None, "vLLM max_num_seqs (default: --batch-pages)", engine="vllm",
                                   output=False, type=int)
    queue_ahead: int | None = opt(None, "pages prepared and waiting in the engine beyond --batch-pages, so "
                                  "a finished page's place is taken at the next step (default: a quarter "
                                  "of --batch-pages, at least 16 but no more than --batch-pages)", output=False,
                                  type=int)
    max_tokens: int = opt(6144, "output tokens per page at most (prompt + output <= 8192)", output=True, type=int)
    gpu_memory_utilization: float = opt(0.9, "share of GPU memory vLLM may use", engine="vllm", output=False,
                                        type=float)
    kv_cache_dtype: str = opt("fp8", "KV cache dtype; falls back to auto where FP8 is not supported",
                              engine="vllm", output=True, choices=("fp8", "auto", "bfloat16", "fp8_e4m3", "fp8_e5m2"))
    enable_fp8_weights: bool = opt(False, "quantize weights to FP8 on load (check quality first)", engine="vllm",
                                   output=True)
    tensor_parallel_size: int = opt(1, "GPUs per engine; must divide the model's 10 attention heads",
                                    engine="vllm", output=False, type=int)
    mm_encoder_tp_mode: str | None = opt(None, "with tensor parallelism: 'data' runs the vision encoder "
                                         "data-parallel", engine="vllm", output=False, choices=("weights", "data"))
    block_size: int | None = opt(None, "KV cache block size (default: vLLM's; 256 is DeepSeek-OCR's own)",
                                 engine="vllm", output=False, type=int)
    attention_backend: str | None = opt(None, "vLLM attention backend, e.g. TRITON_ATTN (default: vLLM's)",
                                        engine="vllm", output=False)
    mm_encoder_attn_backend: str | None = opt(None, "vision encoder attention backend, e.g. TORCH_SDPA where "
                                              "this vLLM build has no FlashAttention kernels (default: vLLM's)",
                                              engine="vllm", output=False)
    enforce_eager: bool = opt(False, "disable CUDA graphs", engine="vllm", output=False)
    mm_encoder_cudagraph: bool | None = opt(None, "capture the vision encoder in CUDA graphs (vLLM's "
                                            "compilation_config cudagraph_mm_encoder, where this vLLM has it; "
                                            "batches holding a Large view run eagerly); default: on where "
                                            "--batch-pages defaults to 256, off otherwise (ocr/gpu_sizing.py)", engine="vllm",
                                            output=False, action=argparse.BooleanOptionalAction)
    cudagraph_max_tokens: int = opt(2048, "capture the decoder in CUDA graphs for steps of up to this many "
                                    "tokens, 128 apart past 512; 0 = vLLM's own sizes, which stop at 512, so a "
                                    "step that also prefills a new page (~900 prompt tokens) runs without "
                                    "graphs (H200, 256 in flight: runner 18.4 against 16.1 pages/s; NOTES.md)",
                                    engine="vllm", output=False, type=int)
    prompt: str | None = opt(None, "override the prompt (default: DeepSeek-OCR's own prompt for --mode)",
                             output=True)
    ngram_size: int | None = opt(None, "no-repeat n-gram guard size, 0 turns it off (default: the model's own: "
                                 "30 for DeepSeek-OCR, 20 for DeepSeek-OCR-2)", output=True, type=int)
    ngram_window: int | None = opt(None, "no-repeat n-gram guard window in tokens (default: 90)", engine="vllm",
                                   output=True, type=int)
    ngram_impl: str = opt("ocr", "n-gram guard implementation: ocr = the runner's batched guard (V1 and V2 model "
                          "runners), vllm = vLLM's own, for comparison (V1 model runner only; docs/ngram-guard.md)",
                          engine="vllm", output=False, choices=("ocr", "vllm"))
    trust_remote_code: bool = opt(False, "allow the checkpoint's own Python code", engine="hf", output=False)
    # Recovery passes (ocr/passes.py)
    runaway_retry: str = opt("on", "read a page once more when its answer loops, is cut at --max-tokens or "
                             "is empty (other sampling, or Large mode); the better answer is kept", output=True,
                             choices=("on", "off"))
    required_labels: str = opt("table", "grounded mode: layout labels a page should have; a page without "
                               "them is read again in the 1280 Large mode (comma-separated, '' = off)",
                               output="grounded")
    retry_large_cap: int = opt(50, "Large-mode re-reads allowed per run and worker (most pages have no "
                               "table, so this bounds the extra work; 0 = off)", output="grounded", type=int)
    roi_pass: bool = opt(False, "grounded mode: read each table, title, paragraph and figure region again "
                         "as a crop with the clean prompt and merge the texts back in the model's reading order",
                         output="grounded")
    roi_max_crops: int = opt(48, "--roi-pass: regions read again per page at most", output="grounded", type=int)
    # Post-processing
    greek_repair: str = opt("safe", "repair unambiguous Greek OCR slips (look-alike letters, final sigma)",
                            output=True, choices=("off", "safe"))
    # Failure handling
    page_timeout: float = opt(900.0, "seconds without any finished page, pages in flight, before the "
                              "engine counts as hung", output=False, type=float)
    max_engine_restarts: int = opt(12, "engine restarts allowed per run before stopping (isolating a page "
                                   "that kills the engine among the default 160 pages in flight takes up "
                                   "to 10)", output=False, type=int)
    # Logging
    log_level: str = opt("INFO", "log level", output=False, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    no_progress: bool = opt(False, "no progress bar", output=False)

    @property
    def seqs(self) -> int:
        return self.max_num_seqs or self.batch_pages or SMALL_GPU_BATCH

    @property
    def pages_in_flight(self) -> int:
        """Pages the runner keeps in the engine: decoding (max_num_seqs) plus prepared and waiting."""
        ahead = self.queue_ahead if self.queue_ahead is not None else min(self.seqs, max(16, self.seqs // 4))
        return self.seqs + ahead

    @property
    def page_spec(self) -> Any:
        """--pages as an ocr.pages.PageSpec (every page when not given)."""
        from .pages import parse_spec
        return parse_spec(self.pages)

    @property
    def formats(self) -> tuple[str, ...]:
        from .jsonl_out import parse_formats
        return parse_formats(self.format)

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
        """The settings that change a PDF's output (fields declared output=...): a finished PDF made with others
        is redone. A field enters only away from its default, except the first fingerprint's keys (_ALWAYS), so
        outputs made before a field existed stay complete; a `--load-format dummy` run is never taken as done."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            when, value = f.metadata["output"], getattr(self, f.name)
            if when is False or (when is not True and when != self.mode):
                continue
            if f.name in _ALWAYS or (when == "grounded" and f.name in _ALWAYS_GROUNDED) or value != f.default:
                out[f.name] = _fingerprint_value(f.name, value)
        return out


# The first fingerprint's keys, present at any value (outputs on disk carry them).
_ALWAYS = ("model", "mode", "prompt", "max_pages", "dpi", "max_tokens", "greek_repair")
_ALWAYS_GROUNDED = ("roi_pass", "required_labels")


def _fingerprint_value(name: str, value: Any) -> Any:
    if name == "pages":                    # "1-3,2-5" and "1-5" select the same pages
        from .pages import canonical, parse_spec
        return canonical(parse_spec(value))
    if name == "required_labels":          # "table, image" and "image,table" make the same pages
        from .large_mode import parse_required
        return sorted(parse_required(value))
    return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True)
class RunnerSpec:
    """One command line over Config's fields: the engine it drives, and its own defaults and help texts."""
    prog: str
    description: str
    engine: str                                    # one of ENGINES
    defaults: Mapping[str, Any] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)
    # Other engines' flags: declared and ignored with a warning ("ignore"), or not declared at all ("reject").
    foreign: str = "reject"


VLLM_SPEC = RunnerSpec(
    "run_pdf_ocr_vllm.py",
    "OCR every PDF under --input-dir into Markdown with DeepSeek-OCR or DeepSeek-OCR-2 in an in-process vLLM "
    "engine.", "vllm")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, spec: RunnerSpec = VLLM_SPEC,
                     exclude: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Config's fields as flags of `parser`, with the spec's defaults and help texts."""
    for f in dataclasses.fields(Config):
        if f.name in exclude:
            continue
        meta = f.metadata
        ours = spec.engine in meta["engine"]
        if not ours and spec.foreign == "reject":
            continue
        text = spec.help.get(f.name, meta["help"])
        if not ours:
            text = f"{'/'.join(meta['engine']).replace('vllm', 'vLLM')} only, ignored here ({text})"
        default = spec.defaults.get(f.name, f.default)
        if f.type in ("bool", bool):
            parser.add_argument(_flag(f.name), action="store_true", default=default, help=text)
        else:
            parser.add_argument(_flag(f.name), default=default, help=text, **meta["argparse"])
    return parser


def build_parser(spec: RunnerSpec = VLLM_SPEC, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or spec.prog, description=spec.description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_config_flags(parser, spec)


def foreign_flags(cfg: Config, engine: str) -> list[str]:
    """Flags set away from their defaults that mean nothing to this engine (the runner warns about them)."""
    return [_flag(f.name) for f in dataclasses.fields(Config)
            if engine not in f.metadata["engine"] and getattr(cfg, f.name) != f.default]


class UsageError(ValueError):
    """A flag combination that cannot work; exits with the usage code."""


def validate(cfg: Config) -> Config:
    checks = [
        (cfg.num_shards >= 1, "--num-shards must be >= 1"),
        (0 <= cfg.shard_index < cfg.num_shards, "--shard-index must be in [0, --num-shards)"),
        (cfg.max_pages is None or cfg.max_pages >= 1, "--max-pages must be >= 1"),
        (cfg.batch_pages is None or cfg.batch_pages >= 1, "--batch-pages must be >= 1"),
        (cfg.cudagraph_max_tokens >= 0, "--cudagraph-max-tokens must be >= 0"),
        (cfg.queue_ahead is None or cfg.queue_ahead >= 0, "--queue-ahead must be >= 0"),
        (cfg.dpi >= 36, "--dpi must be >= 36"),
        (cfg.max_tokens >= 1, "--max-tokens must be >= 1"),
        (0.05 <= cfg.gpu_memory_utilization <= 1.0, "--gpu-memory-utilization must be in [0.05, 1]"),
        (cfg.render_workers >= 1, "--render-workers must be >= 1"),
        (cfg.blank_threshold >= 0, "--blank-threshold must be >= 0"),
        (cfg.open_timeout > 0, "--open-timeout must be > 0"),
        (cfg.post_workers >= 1, "--post-workers must be >= 1"),
        (cfg.post_timeout > 0, "--post-timeout must be > 0"),
        (cfg.preprocess_workers >= 1, "--preprocess-workers must be >= 1"),
        (cfg.input_torch_threads >= 0, "--input-torch-threads must be >= 0"),
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
    from .jsonl_out import parse_formats
    from .pages import parse_spec
    try:
        parse_spec(cfg.pages)
        parse_formats(cfg.format)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return cfg


def parse_config(argv: Sequence[str] | None = None, spec: RunnerSpec = VLLM_SPEC) -> Config:
    args = build_parser(spec).parse_args(argv)
    return validate(Config(**vars(args)))
