"""ocr-ray: the runner on a Ray cluster. A coordinator actor leases PDFs to one worker actor per GPU, each
running the pipeline with its own engine; a lost worker's PDFs go to the others; one merged report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .checkpoint import SetupError
from .cli import ExitCode, guarded
from .config import VLLM_SPEC, Config, UsageError, build_parser, validate
from .gpu_sizing import memory_share, settle
from .engines.base import Engine
from .engines.vllm import check_tensor_parallel
from .jsonl_out import jsonl_path
from .leases import ItemState, LeaseQueue
from .merge_reports import PROBLEM_STATUSES, Shard, merge, summary_lines
from .pipeline import Pipeline, StopReason
from .records import PdfJob
from .report import PdfEntry, PdfStatus, RunReport, merged_text
from .storage import (SourcePdf, Storage, done_key, is_complete, load_done, local_sha256, manifest_entry,
                      outputs_of, plan, publish, todo)

log = logging.getLogger("ocr.ray")
EngineMaker = Callable[[Config], Callable[[], Engine]]
DESCRIPTION = ("OCR every PDF under --input-dir (a folder or an fsspec URL such as s3://bucket/prefix) on a "
               "Ray cluster: one worker per GPU, PDFs handed out in small leases, one merged report.")
SHARD_FLAGS = ("--num-shards", "--shard-index")
WAIT_POLL_S = 0.5


@dataclass(frozen=True)
class RayOptions:
    """ocr-ray's own flags; the runner's flags make the Config."""
    address: str
    input_url: str
    output_url: str
    num_workers: int | None
    gpus_per_worker: float
    cpus_per_worker: float
    lease_pdfs: int
    lease_ttl: float
    max_losses: int
    worker_restarts: int
    cache_dir: str | None
    progress_every: float
    storage_options: dict[str, Any]


def build_ray_parser() -> argparse.ArgumentParser:
    """The runner's parser (every runner flag, declared once in ocr/config.py) plus the Ray group."""
    p = build_parser(VLLM_SPEC, prog="ocr-ray")
    p.description = DESCRIPTION
    for action in p._actions:
        if action.dest in ("input_dir", "output_dir"):
            action.type = str                       # URLs: Path would fold s3:// into s3:/
            action.help += " (a local path or an fsspec URL such as s3://bucket/prefix)"
    g = p.add_argument_group("Ray cluster")
    g.add_argument("--address", default="auto", help="Ray cluster: 'auto' (the one this node belongs to), "
                   "ray://HEAD:10001 (Ray Client), or 'local' (start one on this machine)")
    g.add_argument("--num-workers", type=int, help="worker actors (default: the cluster's GPUs divided by "
                   "--gpus-per-worker)")
    g.add_argument("--gpus-per-worker", type=float, help="GPUs per worker actor (default: "
                   "--tensor-parallel-size; 0 for CPU engines; 0.5: two workers per GPU, each asking vLLM for "
                   "half the GPU memory share, loading one at a time: faster on an H200, NOTES.md session 13)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per worker (its "
                   "render processes are started by the pipeline either way)")
    g.add_argument("--lease-pdfs", type=int, default=2, help="PDFs per lease: a worker asks for more when "
                   "its lease is used up, so fast workers take more")
    g.add_argument("--lease-ttl", type=float, default=120.0, help="seconds a lease lives without a heartbeat "
                   "before its PDFs go back to the queue")
    g.add_argument("--max-losses", type=int, default=3, help="a PDF lost with its worker this many times is "
                   "failed instead of handed out again")
    g.add_argument("--worker-restarts", type=int, default=4, help="replacement workers started for lost "
                   "ones, in all")
    g.add_argument("--cache-dir", help="local folder for staged PDFs and per-worker output (default: the "
                   "system's temporary folder)")
    g.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines")
    g.add_argument("--storage-options", default="{}", help="JSON passed to fsspec for both folders, e.g. "
                   "'{\"endpoint_url\": \"http://minio:9000\"}' (credentials come from the usual AWS "
                   "variables or files)")
    return p


def parse_args(argv: Sequence[str] | None) -> tuple[RayOptions, Config]:
    argv = list(sys.argv[1:] if argv is None else argv)
    for flag in SHARD_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            raise UsageError(f"{flag}: ocr-ray hands PDFs out in leases instead of shards; leave it out")
    parser = build_ray_parser()

    def reject(message: str) -> None:
        raise UsageError(message)
    parser.error = reject
    args = vars(parser.parse_args(argv))
    own = {f.name for f in dataclasses.fields(RayOptions)} - {"input_url", "output_url"}
    values = {k: args.pop(k) for k in own}
    try:
        values["storage_options"] = json.loads(values["storage_options"])
        assert isinstance(values["storage_options"], dict)
    except (ValueError, AssertionError):
        raise UsageError("--storage-options must be a JSON object") from None
    input_url, output_url = args.pop("input_dir"), args.pop("output_dir")
    cfg = validate(Config(input_dir=Path(input_url), output_dir=Path(output_url), **args))
    check_tensor_parallel(cfg.tensor_parallel_size)
    if values["gpus_per_worker"] is None:
        values["gpus_per_worker"] = float(cfg.tensor_parallel_size)
    for name, ok in (("--lease-pdfs", values["lease_pdfs"] >= 1), ("--lease-ttl", values["lease_ttl"] > 0),
                     ("--max-losses", values["max_losses"] >= 1), ("--worker-restarts", values["worker_restarts"] >= 0),
                     ("--num-workers", values["num_workers"] is None or values["num_workers"] >= 1),
                     ("--gpus-per-worker", values["gpus_per_worker"] >= 0)):
        if not ok:
            raise UsageError(f"{name} is out of range")
    return RayOptions(input_url=input_url, output_url=output_url, **values), share_gpu_memory(
        cfg, values["gpus_per_worker"])


def share_gpu_memory(cfg: Config, gpus_per_worker: float) -> Config:
    """Workers sharing a GPU (--gpus-per-worker below 1) each ask vLLM for their share of its memory
    (gpu_sizing.memory_share; a value other than the default counts as set)."""
    if not 0 < gpus_per_worker < 1:
        return cfg
    default = Config.__dataclass_fields__["gpu_memory_utilization"].default
    share = memory_share(cfg.gpu_memory_utilization, cfg.gpu_memory_utilization != default, gpus_per_worker,
                         f"--gpus-per-worker {gpus_per_worker:g}")
    return dataclasses.replace(cfg, gpu_memory_utilization=share)


# --- the coordinator: one actor holding the lease queue ---------------------------------------------------
class Coordinator:
    """The lease queue and what each worker did; every call is short (one actor, one call at a time)."""

    def __init__(self, pdfs: list[SourcePdf], lease_pdfs: int, ttl: float, max_losses: int):
        self.queue = LeaseQueue([p.rel for p in pdfs], lease_pdfs, ttl, max_losses)
        self.pdfs = {p.rel: p for p in pdfs}
        self.finished_by: dict[str, tuple[str, str]] = {}        # rel -> (worker, status)
        self.duplicates: list[dict[str, str]] = []
        self.workers: dict[str, dict[str, Any]] = {}
        self.entries: dict[str, list[dict[str, Any]]] = {}      # worker -> its finished PDFs' report entries

    def _seen(self, worker: str) -> dict[str, Any]:
        return self.workers.setdefault(worker, {"started": time.monotonic(), "pdfs": 0, "pages": 0,
                                                "label": "", "last": time.monotonic()})

    def lease(self, worker: str) -> list[SourcePdf] | None:
        """The next PDFs for this worker; [] when none is free now (others hold the rest); None when done."""
        self._seen(worker)["last"] = time.monotonic()
        if self.queue.finished:
            return None
        got = self.queue.grant(worker, time.monotonic())
        return [self.pdfs[rel] for rel in got.items] if got else []

    def heartbeat(self, worker: str, progress: dict[str, Any]) -> None:
        seen = self._seen(worker)
        seen.update(progress, last=time.monotonic())
        self.queue.heartbeat(worker, time.monotonic())

    def finish(self, worker: str, rel: str, status: str, why: str = "", entry: dict[str, Any] | None = None) -> None:
        """`entry`: the PDF's report entry without page details, which is what the report keeps of a worker
        that is lost later."""
        self._seen(worker)["last"] = time.monotonic()
        if self.queue.finish(worker, rel, status != PdfStatus.FAILED.value, why):
            self.finished_by[rel] = (worker, status)
            if entry is not None:
                self.entries.setdefault(worker, []).append(entry)
        else:
            self.duplicates.append({"pdf": rel, "worker": worker, "first": self.finished_by.get(rel, ("?",))[0]})

    def lose(self, worker: str) -> list[str]:
        return self.queue.lose(worker)

    def status(self) -> dict[str, Any]:
        self.queue.reap(time.monotonic())
        return {"finished": self.queue.finished, "counts": self.queue.counts(), "total": len(self.pdfs),
                "workers": {w: {**s, "seconds": time.monotonic() - s["started"]} for w, s in self.workers.items()}}

    def outcome(self) -> dict[str, Any]:
        return {"finished_by": self.finished_by, "duplicates": self.duplicates, "entries": self.entries,
                "active_s": {w: s["last"] - s["started"] for w, s in self.workers.items()},
                "state": {rel: s.value for rel, s in self.queue.state.items()}, "why_failed": self.queue.why_failed,
                "labels": {w: s.get("label", "") for w, s in self.workers.items()}}


# --- a worker: the pipeline with its own engine, fed from leases ------------------------------------------
class LeaseFeed:
    """The pipeline's job iterable: PDFs pulled lease by lease from the coordinator and staged locally.

    It waits (blocks) for work only while this worker holds nothing unfinished; with PDFs of its own still
    in the pipeline it ends instead, so the pipeline finishes them, and the worker's next round takes
    whatever comes back from lost workers."""

    def __init__(self, worker: "WorkerCore"):
        self.w = worker

    def __iter__(self) -> Iterator[PdfJob]:
        current: deque[SourcePdf] = deque()
        while not self.w.stopping:
            if not current:
                got = self.w.call("lease", self.w.id)
                if got is None:
                    self.w.queue_done = True
                    return
                if not got:
                    if self.w.outstanding:
                        return
                    time.sleep(WAIT_POLL_S)
                    continue
                current.extend(got)
            job = self.w.prepare(current.popleft())
            if job is not None:
                yield job


class WorkerCore:
    """What one worker actor does, with the coordinator reached through `call` (plain Python: testable
    without Ray). `engine_maker(cfg)` gives the engine factory (ocr.cli.default_engine_factory by default)."""

    def __init__(self, worker_id: str, cfg: Config, engine_maker: EngineMaker, call: Callable[..., Any],
                 input_url: str, output_url: str, storage_options: dict[str, Any], cache_dir: str | None,
                 heartbeat_s: float, label: str = ""):
        self.id, self.call, self.engine_maker, self.label = worker_id, call, engine_maker, label
        self.inputs = Storage(input_url, **storage_options)
        self.outputs = Storage(output_url, **storage_options)
        self.root = Path(cache_dir or tempfile.gettempdir()) / f"ocr-ray-{worker_id}-{uuid.uuid4().hex[:8]}"
        self.staged, out = self.root / "in", self.root / "out"
        self.cfg = settle(dataclasses.replace(cfg, input_dir=self.staged, output_dir=out, num_shards=1,
                                              shard_index=0, no_progress=True),
                          probe=engine_maker is default_engine_maker)      # this actor's GPU
        self.fingerprint = self.cfg.fingerprint()
        self.heartbeat_s = heartbeat_s
        self.outstanding: dict[str, SourcePdf] = {}
        self.stopping: str | None = None
        self.queue_done = False
        self.pipeline = None
        self.report = RunReport(self.cfg.report_path, {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in dataclasses.asdict(self.cfg).items()})

    def run(self) -> dict[str, Any]:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.call("heartbeat", self.id, self.progress())        # the driver learns where it runs
        beat = threading.Event()
        threading.Thread(target=self._heartbeats, args=(beat,), daemon=True).start()
        try:
            while not self.stopping and not self.queue_done:
                self.pipeline = Pipeline(self.cfg, self.engine_maker(self.cfg), self.report,
                                         jobs=LeaseFeed(self), on_pdf_done=self.pdf_done)
                if self.stopping:
                    break
                self.pipeline.run()
                if self.pipeline.stop:
                    self.stopping = self.stopping or str(self.pipeline.stop)
        finally:
            beat.set()
            shutil.rmtree(self.root, ignore_errors=True)     # published already; a partial PDF is redone
            self.report.interrupted = self.stopping
            self.call("heartbeat", self.id, self.progress())
        return self.report.to_json()

    def stop(self, reason: str) -> None:
        self.stopping = self.stopping or reason
        if self.pipeline is not None:
            self.pipeline.request_stop(StopReason.SIGNAL, reason)

    # --- per PDF ----------------------------------------------------------------------------------
    def prepare(self, pdf: SourcePdf) -> PdfJob | None:
        """The staged job, or None when it is done already (a lost worker finished it before it could say
        so, or only its mtime moved) or cannot be read (reported failed)."""
        try:
            local = self.inputs.stage(pdf.rel, self.staged, pdf.mtime_ns)
            if not self.cfg.overwrite and self._done_already(pdf, local):
                self.report.entry(pdf.rel).status = PdfStatus.SKIPPED
                self.call("finish", self.id, pdf.rel, PdfStatus.SKIPPED.value)
                self._unstage(local)
                return None
        except OSError as exc:
            entry = self.report.entry(pdf.rel)
            entry.status, entry.error = PdfStatus.FAILED, f"cannot read the input: {exc}"
            log.warning("%s: %s", pdf.rel, entry.error)
            self.call("finish", self.id, pdf.rel, PdfStatus.FAILED.value, entry.error, entry.to_json())
            return None
        self.outstanding[pdf.rel] = pdf
        return PdfJob(index=pdf.index, path=local, rel=Path(pdf.rel), md_path=self.cfg.output_dir / pdf.md_rel)

    def _done_already(self, pdf: SourcePdf, local: Path) -> bool:
        try:
            entry = json.loads(self.outputs.read_text(done_key(pdf.rel)))
        except (OSError, ValueError):
            return False
        there = all(self.outputs.exists(rel) for rel in outputs_of(pdf, self.cfg.formats))
        return is_complete(entry, pdf, self.fingerprint, there, local_sha256(local))

    def pdf_done(self, job: PdfJob, status: PdfStatus) -> None:
        """The pipeline finished a PDF locally: publish its Markdown (then its manifest entry), tell the
        coordinator. A storage error fails this PDF only."""
        pdf = self.outstanding.pop(job.name, None)
        entry = self.report.entry(job.name)
        try:
            if pdf is not None and status in (PdfStatus.COMPLETE, PdfStatus.PARTIAL) and job.md_path.exists():
                record = manifest_entry(pdf, job.path, entry.pages, self.fingerprint, time.time()) \
                    if status == PdfStatus.COMPLETE else None
                publish(self.outputs, pdf, job.md_path, record)
                entry.output = pdf.md_rel
        except OSError as exc:
            status, entry.status = PdfStatus.FAILED, PdfStatus.FAILED
            entry.error = f"cannot write the output to {self.outputs}: {exc}"
            log.warning("%s: %s", job.name, entry.error)
        self._unstage(job.path, job.md_path)
        summary = {k: v for k, v in entry.to_json().items() if k != "page_details"}
        self.call("finish", self.id, job.name, status.value, entry.error or "", summary)

    def _unstage(self, local: Path, md: Path | None = None) -> None:
        """Frees the worker's disk: the staged copy (never a local input) and the published files."""
        if not self.inputs.local:
            local.unlink(missing_ok=True)
        if md is not None:
            md.unlink(missing_ok=True)
            jsonl_path(md).unlink(missing_ok=True)
            shutil.rmtree(md.with_name(md.stem + "_assets"), ignore_errors=True)

    # --- heartbeats -------------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        entries = list(self.report.pdfs.values())
        return {"label": self.label, "pages": sum(len(e.page_details) for e in entries),
                "pdfs": sum(e.status not in (PdfStatus.UNFINISHED, PdfStatus.SKIPPED) for e in entries),
                "engine_ready": self.report.engine_ready is not None}

    def _heartbeats(self, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            try:
                self.call("heartbeat", self.id, self.progress())
            except Exception as exc:            # the coordinator is gone: the driver ends the run
                log.warning("heartbeat failed: %s", exc)


def _setup_worker_logging(level: str, worker_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(levelname)s [{worker_id}] %(message)s"))
    root = logging.getLogger("ocr")
    root.setLevel(level)
    root.handlers[:] = [handler]
    root.propagate = False


class WorkerActor:
    """The Ray actor around WorkerCore (ray.remote is applied at run time: importing this needs no Ray)."""

    def __init__(self, worker_id: str, cfg: Config, engine_maker: EngineMaker, coordinator: Any,
                 input_url: str, output_url: str, storage_options: dict[str, Any], cache_dir: str | None,
                 heartbeat_s: float):
        import ray
        _setup_worker_logging(cfg.log_level, worker_id)
        ctx = ray.get_runtime_context()
        gpus = ",".join(str(g) for g in ctx.get_accelerator_ids().get("GPU", [])) or "none"
        label = f"{gpus} on {ray.util.get_node_ip_address()}"

        def call(method: str, *args: Any) -> Any:
            return ray.get(getattr(coordinator, method).remote(*args))
        self.core = WorkerCore(worker_id, cfg, engine_maker, call, input_url, output_url, storage_options,
                               cache_dir, heartbeat_s, label)

    def run(self) -> dict[str, Any]:
        return self.core.run()

    def stop(self, reason: str) -> None:
        self.core.stop(reason)


# --- the driver -------------------------------------------------------------------------------------------
def default_engine_maker(cfg: Config) -> Callable[[], Engine]:
    from .cli import vllm_engine_factory
    return vllm_engine_factory(cfg)


def connect(address: str) -> None:
    import ray
    if ray.is_initialized():
        return
    try:
        ray.init(address=None if address == "local" else address, log_to_driver=True)
    except ConnectionError as exc:
        raise SetupError(f"--address {address}: no Ray cluster there ({exc}); start one with `ray start "
                         f"--head` or `ray up aws/ray-cluster.yaml`, or use --address local") from exc


def worker_count(opts: RayOptions, pending: int) -> int:
    import ray
    if opts.num_workers:
        return min(opts.num_workers, pending)
    gpus = ray.cluster_resources().get("GPU", 0)
    if opts.gpus_per_worker == 0:
        raise UsageError("--gpus-per-worker 0 needs --num-workers")
    n = int(gpus // opts.gpus_per_worker)
    if n < 1:
        raise SetupError(f"the Ray cluster has {gpus:g} GPUs: not enough for one worker of "
                         f"{opts.gpus_per_worker:g} (use --num-workers with --gpus-per-worker 0 for CPU engines)")
    return min(n, pending)


class Driver:
    """Starts the coordinator and the workers, waits on their run calls, replaces lost ones, reports."""

    def __init__(self, opts: RayOptions, cfg: Config, engine_maker: EngineMaker, work: list[SourcePdf]):
        import ray
        self.ray, self.opts, self.cfg, self.engine_maker = ray, opts, cfg, engine_maker
        # largest first: a big PDF taken last would finish long after the others
        order = sorted(work, key=lambda p: (-p.size, p.index))
        self.coordinator = ray.remote(num_cpus=0)(Coordinator).remote(order, opts.lease_pdfs, opts.lease_ttl,
                                                                     opts.max_losses)
        self.actor_class = ray.remote(WorkerActor)
        self.runs: dict[Any, tuple[str, Any]] = {}          # run ref -> (worker id, actor)
        self.results: dict[str, dict[str, Any]] = {}
        self.lost: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.started = time.time()
        self.stopping: str | None = None
        self._next = 0
        self.restarts_left = opts.worker_restarts

    def start_worker(self) -> str:
        worker_id = f"w{self._next}"
        self._next += 1
        actor = self.actor_class.options(num_gpus=self.opts.gpus_per_worker, num_cpus=self.opts.cpus_per_worker,
                                         max_concurrency=2, name=None).remote(
            worker_id, self.cfg, self.engine_maker, self.coordinator, self.opts.input_url, self.opts.output_url,
            self.opts.storage_options, self.opts.cache_dir, max(0.2, self.opts.lease_ttl / 4))
        self.runs[actor.run.remote()] = (worker_id, actor)
        return worker_id

    def stop(self, reason: str) -> None:
        self.stopping = self.stopping or reason
        for _, actor in self.runs.values():
            actor.stop.remote(reason)

    def wait(self) -> None:
        last_progress = time.monotonic()
        while self.runs:
            ready, _ = self.ray.wait(list(self.runs), num_returns=1, timeout=min(1.0, self.opts.progress_every))
            for ref in ready:
                self._ended(ref)
            status = self.ray.get(self.coordinator.status.remote())
            if status["finished"]:
                self._drop_idle(status)
            if time.monotonic() - last_progress >= self.opts.progress_every:
                last_progress = time.monotonic()
                for line in progress_lines(status, self.started):
                    print(line, flush=True)

    def _ended(self, ref: Any) -> None:
        worker_id, actor = self.runs.pop(ref)
        try:
            self.results[worker_id] = self.ray.get(ref)
            why = None
        except self.ray.exceptions.RayError as exc:
            why = _first_line(exc)
        back = self.ray.get(self.coordinator.lose.remote(worker_id))     # what it held goes to the others
        if why is None:
            if back:
                self.events.append({"event": "worker_stopped", "time": round(time.time() - self.started, 1),
                                    "worker": worker_id, "pdfs_back_in_queue": back})
            return
        self.lost[worker_id] = why
        self.events.append({"event": "worker_lost", "time": round(time.time() - self.started, 1),
                            "worker": worker_id, "why": why, "pdfs_back_in_queue": back})
        print(f"worker {worker_id} lost ({why}): {len(back)} PDFs back in the queue", flush=True)
        finished = self.ray.get(self.coordinator.status.remote())["finished"]
        if not finished and not self.stopping and self.restarts_left > 0:
            self.restarts_left -= 1
            print(f"starting {self.start_worker()} in its place", flush=True)

    def _drop_idle(self, status: dict[str, Any]) -> None:
        """The queue is done: a replacement still waiting for a GPU will never get work."""
        for ref, (worker_id, actor) in list(self.runs.items()):
            if worker_id not in status["workers"]:
                self.ray.kill(actor)
                del self.runs[ref]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def progress_lines(status: dict[str, Any], started: float) -> list[str]:
    """One line per worker and one in total (pages/s since each worker's first call)."""
    counts, lines = status["counts"], []
    pages = 0
    for worker, s in sorted(status["workers"].items(), key=lambda kv: int(kv[0][1:])):
        pages += s["pages"]
        rate = s["pages"] / s["seconds"] if s["seconds"] else 0.0
        where = f" (GPU {s['label']})" if s.get("label") else ""
        lines.append(f"  worker {worker[1:]}{where}: {s['pdfs']} PDFs, {s['pages']} pages, {rate:.2f} pages/s"
                     + ("" if s.get("engine_ready") else ", engine loading"))
    elapsed = time.time() - started
    done = counts["done"] + counts["failed"]
    lines.insert(0, f"progress: {done}/{status['total']} PDFs ({counts['leased']} leased, {counts['waiting']} "
                    f"waiting), {pages} pages, {pages / elapsed if elapsed else 0.0:.2f} pages/s in total")
    return lines


def assemble_report(driver: Driver, outcome: dict[str, Any], skipped: list[SourcePdf],
                    settings: dict[str, Any]) -> dict[str, Any]:
    """merge_reports' merged shape: workers' reports (a lost worker's as of its last heartbeat), each PDF once
    (the worker that finished it first), plus the PDFs skipped as complete and those never finished."""
    finished_by, state = outcome["finished_by"], outcome["state"]
    shards = []
    for worker_id in sorted({*driver.results, *driver.lost}, key=lambda w: int(w[1:])):
        report = driver.results.get(worker_id)
        if report is None:
            report = rebuilt_report(outcome["entries"].get(worker_id, []), outcome["active_s"].get(worker_id, 0.0),
                                    settings)
        shard = Shard(int(worker_id[1:]), Path(worker_id), report=report, gpus=outcome["labels"].get(worker_id))
        if worker_id in driver.lost:
            shard.problem = (f"lost ({driver.lost[worker_id]}) after {report['totals']['pdfs']} PDFs, "
                             f"{report['totals']['pages']} pages; its unfinished PDFs went to the others")
        else:
            shard.exit_code = 0
        if report is not None:
            report = shard.report = dict(report)
            report["pdfs"] = [p for p in report["pdfs"] if finished_by.get(p["pdf"], (None,))[0] == worker_id
                              or (p["status"] == PdfStatus.UNFINISHED.value and p["pdf"] not in finished_by)]
        shards.append(shard)
    merged = merge(shards, wall_seconds=time.time() - driver.started)
    seen = {p["pdf"] for p in merged["pdfs"]}
    extra = [{"pdf": p.rel, "status": PdfStatus.SKIPPED.value, "worker": None} for p in skipped]
    for rel, st in state.items():
        if rel in seen:
            continue
        if rel in finished_by:
            worker, status = finished_by[rel]
            extra.append({"pdf": rel, "status": status, "worker": int(worker[1:])})
        elif st == ItemState.FAILED.value:
            extra.append({"pdf": rel, "status": PdfStatus.FAILED.value, "error": outcome["why_failed"].get(rel),
                          "worker": None})
        else:
            extra.append({"pdf": rel, "status": PdfStatus.UNFINISHED.value, "worker": None})
    t = merged["totals"]
    for p in extra:
        t["pdfs"] += 1
        t[f"pdfs_{p['status']}"] = t.get(f"pdfs_{p['status']}", 0) + 1
    merged["pdfs"] += extra
    merged["totals"] = {**{k: v for k, v in t.items() if not k.startswith("pdfs_")},
                        **dict(sorted((k, v) for k, v in t.items() if k.startswith("pdfs_")))}
    merged["settings"] = settings
    merged["events"] += driver.events + [{"event": "duplicate", **d} for d in outcome["duplicates"]]
    if driver.stopping and not merged["interrupted"]:
        merged["interrupted"] = driver.stopping
    return merged


def rebuilt_report(entries: list[dict[str, Any]], seconds: float, settings: dict[str, Any]) -> dict[str, Any]:
    """A lost worker's report, from the entries of the PDFs it finished (engine details are lost with it)."""
    report = RunReport(None, settings)
    report.started = time.time() - seconds
    for d in entries:
        report.pdfs[d["pdf"]] = PdfEntry(**{**d, "status": PdfStatus(d["status"]), "counters": Counter(d["counters"]),
                                            "page_details": []})
    return report.to_json()


def report_settings(opts: RayOptions, cfg: Config) -> dict[str, Any]:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    settings.update(input_dir=opts.input_url, output_dir=opts.output_url, ray_address=opts.address,
                    lease_pdfs=opts.lease_pdfs, lease_ttl=opts.lease_ttl)
    for k in ("num_shards", "shard_index"):
        settings.pop(k, None)
    return settings


def skipped_only_report(pdfs: list[SourcePdf], settings: dict[str, Any]) -> dict[str, Any]:
    report = RunReport(None, settings)
    for p in pdfs:
        report.entry(p.rel).status = PdfStatus.SKIPPED
    merged = report.to_json()
    merged["workers"] = []
    return merged


def run(opts: RayOptions, cfg: Config, engine_maker: EngineMaker | None = None) -> ExitCode:
    engine_maker = engine_maker or default_engine_maker
    inputs = Storage(opts.input_url, **opts.storage_options)
    outputs = Storage(opts.output_url, **opts.storage_options)
    if not inputs.fs.isdir(inputs.root):
        raise UsageError(f"--input-dir {opts.input_url} is not a folder")
    try:
        outputs.check_writable()
    except OSError as exc:
        raise SetupError(f"cannot write to --output-dir {opts.output_url}: {exc}") from exc
    pdfs = plan(inputs)
    done = {} if cfg.overwrite else load_done(outputs)
    present = _outputs_present(outputs) if done else set()
    work = todo(pdfs, done, cfg.fingerprint(), present.__contains__, cfg.formats)
    names = {p.rel for p in work}
    skipped = [p for p in pdfs if p.rel not in names]
    log.info("%d PDFs: %d to do, %d already complete", len(pdfs), len(work), len(skipped))
    settings = report_settings(opts, cfg)
    signalled = False
    if not work:
        merged = skipped_only_report(skipped, settings)
    else:
        connect(opts.address)
        driver = Driver(opts, cfg, engine_maker, work)
        for _ in range(worker_count(opts, len(work))):
            driver.start_worker()
        previous = _install_signals(driver)
        try:
            driver.wait()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        outcome = driver.ray.get(driver.coordinator.outcome.remote())
        merged = assemble_report(driver, outcome, skipped, settings)
        signalled = driver.stopping is not None
    outputs.write_text("run_report.json", merged_text(merged))
    print("\n".join(summary_lines(merged)), flush=True)
    print(f"report: {outputs.path('run_report.json')}", flush=True)
    if signalled:
        return ExitCode.INTERRUPTED
    problems = any(p["status"] in PROBLEM_STATUSES for p in merged["pdfs"])
    return ExitCode.INCOMPLETE if problems or merged.get("interrupted") else ExitCode.OK


def _outputs_present(outputs: Storage) -> set[str]:
    """Every .md and .jsonl below the output (one listing instead of one request per PDF)."""
    outputs.fs.invalidate_cache()
    prefix = outputs.root + "/"
    try:
        return {p[len(prefix):] for p in outputs.fs.find(outputs.root) if p.endswith((".md", ".jsonl"))}
    except FileNotFoundError:
        return set()


def _install_signals(driver: Driver) -> dict:
    """First SIGINT/SIGTERM: the workers finish their pages in the engine and stop. Second: exit at once."""
    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if driver.stopping:
            os._exit(ExitCode.INTERRUPTED)
        print(f"{name} received: the workers stop after their current pages (send it again to exit at once)",
              file=sys.stderr, flush=True)
        driver.stop(f"stopped by {name}")
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def main(argv: Sequence[str] | None = None, engine_maker: EngineMaker | None = None) -> int:
    """`engine_maker(cfg)` returns each worker's engine factory; it travels to the actors (pickled), so
    it must be importable there. Tests pass one that builds the scripted engine double."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    def body() -> int:
        opts, cfg = parse_args(argv)
        return run(opts, cfg, engine_maker)
    return guarded(body, "finished PDFs are kept and the next run resumes")   # a bug, or the cluster failed


if __name__ == "__main__":
    sys.exit(main())
