"""Command line: settings, logging, signals, exit codes; one handler turns errors into one clear line."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Callable, Sequence

from .checkpoint import SetupError, resolve_model
from .config import VLLM_SPEC, Config, RunnerSpec, UsageError, parse_config
from .engines.base import Engine
from .models import inspect as inspect_model
from .pipeline import Pipeline, StopReason
from .report import RunReport
from .store import WriteError

log = logging.getLogger("ocr")
EngineFactory = Callable[[], Engine]


class ExitCode(IntEnum):
    OK = 0              # every PDF complete (or skipped as already complete)
    INCOMPLETE = 1      # some PDFs failed or are partial; listed at the end
    USAGE = 2           # bad flags or set-up: nothing was run
    INTERRUPTED = 130   # stopped by SIGINT/SIGTERM; finished pages are kept


@dataclass(frozen=True)
class Runner:
    """A runner: its command line (a spec over Config's fields) and how it builds its engine from a Config
    (checks that can fail run before any work; the returned factory builds an engine each time it is called)."""
    spec: RunnerSpec
    engine_factory: Callable[[Config], EngineFactory]
    # The defaults left to the machine (None in Config), settled before the engine and the report see them.
    settle: Callable[[Config], Config] = lambda cfg: cfg


def check_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise SetupError(f"cannot write to --output-dir {output_dir}: {exc.strerror or exc}") from exc


def setup_logging(cfg: Config) -> Path:
    log_dir = cfg.output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}{cfg.shard_suffix}.log"
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    file_handler.setFormatter(fmt)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("ocr")
    root.setLevel(cfg.log_level)
    root.handlers[:] = [file_handler, console]
    root.propagate = False
    return path


SAME_REQUEST_S = 2.0     # GNU `timeout` signals the runner, then its own process group: two SIGTERMs at once


def install_signal_handlers(pipeline: Pipeline) -> dict:
    """First SIGINT/SIGTERM: stop gracefully (the final report is written). Another within SAME_REQUEST_S
    is the same request; a later one exits at once. Returns the handlers it replaced."""
    first: list[float] = []

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if first and time.monotonic() - first[0] < SAME_REQUEST_S:
            return
        if first:                          # asked twice: leave now; every file on disk is whole
            os._exit(ExitCode.INTERRUPTED)
        first.append(time.monotonic())
        log.warning("%s received: finishing up (send it again to exit at once)", name)
        pipeline.request_stop(StopReason.SIGNAL, f"stopped by {name}")

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def write_report(report: RunReport) -> None:
    """The final report, if the disk allows it (a full disk must not hide the run's outcome)."""
    try:
        report.write()
    except WriteError as exc:
        log.error("the run report could not be written: %s", exc)


def vllm_engine_factory(cfg: Config) -> EngineFactory:
    from .engines.vllm import check_tensor_parallel

    check_tensor_parallel(cfg.tensor_parallel_size)
    model = cfg.model if cfg.load_format == "dummy" else resolve_model(cfg.model)   # dummy: config only
    local = dataclasses.replace(cfg, model=model)
    checkpoint = inspect_model(model)
    checkpoint.vllm_hf_overrides()      # refuses a checkpoint layout vLLM cannot read, before any work
    check_tensor_parallel(cfg.tensor_parallel_size, checkpoint.attention_heads, checkpoint.family.name)

    def factory() -> Engine:
        from .engines.vllm import VllmEngine
        return VllmEngine(local)
    return factory


def settle_for_gpu(cfg: Config) -> Config:
    from .gpu_sizing import settle
    return settle(cfg)


VLLM = Runner(VLLM_SPEC, vllm_engine_factory, settle_for_gpu)


def run(cfg: Config, engine_factory: EngineFactory | None = None, runner: Runner = VLLM) -> ExitCode:
    if not cfg.input_dir.is_dir():
        raise UsageError(f"--input-dir {cfg.input_dir} is not a folder")
    if engine_factory is None:           # a given factory (tests, bench.py) comes with its settings settled
        cfg = runner.settle(cfg)
    factory = engine_factory or runner.engine_factory(cfg)      # refuses what cannot run before any output
    check_output_dir(cfg.output_dir)
    log_path = setup_logging(cfg)
    report = RunReport(cfg.report_path, {k: str(v) if isinstance(v, Path) else v
                                         for k, v in dataclasses.asdict(cfg).items()})
    pipeline = Pipeline(cfg, factory, report)
    previous = install_signal_handlers(pipeline)
    log.info("log file: %s", log_path)
    try:
        pipeline.run()
    finally:
        report.interrupted = str(pipeline.stop) if pipeline.stop else None
        write_report(report)
        for line in report.summary_lines():
            log.info("%s", line)
        log.info("report: %s", cfg.report_path)
        # Restored only now: GNU timeout's second SIGTERM (to the process group) can come late on a loaded
        # machine, and with the default handler back it killed the runner after its report (exit -15
        # instead of 130, 1 of 10 tries in tests/test_signals.py during a CI run).
        for sig, old in previous.items():
            signal.signal(sig, old)
    if pipeline.stop and pipeline.stop.reason is StopReason.SIGNAL:
        return ExitCode.INTERRUPTED
    return ExitCode.INCOMPLETE if report.problems() or pipeline.stop else ExitCode.OK


def main(argv: Sequence[str] | None = None, engine_factory: EngineFactory | None = None,
         runner: Runner = VLLM) -> int:
    return guarded(lambda: run(parse_config(argv, runner.spec), engine_factory, runner),
                   "finished pages are kept and the next run resumes")


def guarded(body: Callable[[], int], kept: str) -> int:
    """The one top-level handler (the runner's and ocr-ray's): each error becomes one line and an exit code;
    `kept` says what a stopped run leaves behind."""
    try:
        return body()
    except (UsageError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:         # a bug: finished pages are kept (journal, Markdown) and the next run resumes
        where = _log_traceback()
        print(f"error: internal error, the run stopped ({type(exc).__name__}: {exc}); {kept}"
              f"{f'; traceback in {where}' if where else ''}", file=sys.stderr)
        return ExitCode.INCOMPLETE


def _log_traceback() -> str | None:
    """The current exception's traceback into the run log file only (the console gets one line)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "internal error", None, sys.exc_info())
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            return handler.baseFilename
    return None
