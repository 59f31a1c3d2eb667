"""Connects the stages: jobs -> open (resume, count) -> render (+ blank check) -> engine -> finish -> journal ->
Markdown.

One control loop on the main thread; rendering runs ahead in processes, the engine in its own process.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Iterable, Iterator

from . import roi, runaway
from .assets import assets_dir, link_figures, page_image_path, save_crops, save_png
from .config import Config
from .discover import plan_jobs
from .engines.base import Engine, Failure
from .engines.supervisor import Supervisor, TooManyRestarts
from .finish import assemble, blank_page, failed_page
from .jsonl_out import jsonl_path, write_for_pdf
from .models import PROMPTS
from .pages import select, selection_line
from .postwork import FAILED_COUNTER, TIMEOUT_COUNTER, Done, PostWorkers, fallback_page, finish_job, judge_job
from .passes import ATTEMPT_AGAIN, ATTEMPT_LARGE, ATTEMPT_ROI, ATTEMPT_RUNAWAY, Final, LargeCap, PageWork, \
    PassSettings, settings_for
from .progress import Progress
from .records import EngineOutput, PageKey, PageRequest, PageResult, PageStatus, PdfJob, RenderedPage
from .render import OpenCancelled, PdfError, Renderer, inspect_pdf
from .report import PdfStatus, RunReport
from .store import SourceId, Store, WriteError, write_atomic

log = logging.getLogger(__name__)
REPORT_EVERY_S = 10.0


class StopReason(Enum):
    SIGNAL = "signal"                        # SIGINT/SIGTERM: exit code 130, the next run resumes
    TOO_MANY_RESTARTS = "too many restarts"  # the engine died more than --max-engine-restarts times
    WRITE_ERROR = "write error"              # an output could not be written (disk full): exit code 1


@dataclass(frozen=True)
class Stop:
    reason: StopReason
    message: str                             # for the log and the report ("stopped by SIGTERM")

    def __str__(self) -> str:
        return self.message


@dataclass
class PdfProgress:
    job: PdfJob
    source: SourceId
    total: int
    results: dict[int, PageResult]
    started: float = field(default_factory=time.monotonic)
    page_count: int = 0                      # pages in the PDF
    pages: list[int] = field(default_factory=list)    # the selected pages (--pages, --max-pages)
    damage: dict[int, str] = field(default_factory=dict)     # pages in the engine whose file data is damaged


class Pipeline:
    """Runs jobs to Markdown. `jobs`: where PDFs come from (default: --input-dir, this shard), pulled lazily
    when the render queue has room (the iterable may block); a finished PDF is skipped unless --overwrite.
    `on_pdf_done(job, status)`: called once a PDF's outcome is final (Markdown and manifest written, or failed,
    or skipped as complete); PDFs still unfinished when the run stops are not reported."""

    def __init__(self, cfg: Config, engine_factory: Callable[[], Engine], report: RunReport,
                 jobs: Iterable[PdfJob] | None = None,
                 on_pdf_done: Callable[[PdfJob, PdfStatus], None] | None = None,
                 finisher: Callable[..., PageResult] = finish_job):
        self.cfg = cfg
        self._finisher = finisher           # the page clean-up run in the post workers (module-level, picklable)
        self.engine_factory = engine_factory
        self.report = report
        self.on_pdf_done = on_pdf_done
        self.store = Store(cfg.state_dir, cfg.fingerprint(), f"manifest{cfg.shard_suffix}.jsonl")
        self.stop: Stop | None = None
        self._jobs_given = jobs
        self._jobs: Iterator[PdfJob] = iter(())
        self._pages: deque[tuple[PdfProgress, int]] = deque()   # pages of opened PDFs, not yet rendering
        self._feed_done = False
        self._pdfs: dict[int, PdfProgress] = {}
        self._work: dict[PageKey, PageWork] = {}        # pages in the engine, with their passes
        self.passes: PassSettings | None = None         # known once the engine is up
        self._large_cap = LargeCap(cfg.retry_large_cap)
        self._last_report = 0.0
        self.special_tokens: tuple[str, ...] = ()
        self._post: PostWorkers | None = None
        # in the post workers: answers being judged (runaway verdict), pages being finished
        self._judging: dict[PageKey, EngineOutput] = {}
        self._finishing: dict[PageKey, tuple[PageRequest, Final]] = {}

    def request_stop(self, reason: StopReason, message: str) -> None:
        self.stop = self.stop or Stop(reason, message)

    # --- jobs and pages ---------------------------------------------------------------------------
    def _planned(self) -> Iterator[PdfJob]:
        jobs = plan_jobs(self.cfg.input_dir, self.cfg.output_dir, self.cfg.num_shards, self.cfg.shard_index)
        log.info("%d PDFs in this shard", len(jobs))
        for job in jobs:                # every planned PDF is in the report, started or not
            self.report.entry(job.name)
        return iter(jobs)

    def _next_page(self) -> tuple[PdfProgress, int] | None:
        """The next page to render; opens the next job's PDF when the current one has none left."""
        while not self._pages and not self.stop:
            job = next(self._jobs, None)
            if job is None:
                self._feed_done = True
                return None
            self._open(job)
        return self._pages.popleft() if self._pages else None

    def _open(self, job: PdfJob) -> None:
        """Skip a complete PDF; open the others once: count their pages, take finished pages from the journal
        (or start afresh with --overwrite), queue the rest. A bad PDF is reported and passed over, and so is
        one that meets an unexpected error."""
        try:
            self._open_job(job)
        except WriteError as exc:
            self._write_failed(job, exc)
        except Exception as exc:
            self._internal_error(job, exc)

    def _open_job(self, job: PdfJob) -> None:
        if not self.cfg.overwrite and self.store.is_complete(job) and self._outputs_present(job):
            self._settle(job, PdfStatus.SKIPPED)
            return
        try:
            info = inspect_pdf(job.path, None, self.cfg.open_timeout, stopping=lambda: self.stop is not None)
        except OpenCancelled:
            return
        except PdfError as exc:
            log.warning("%s: %s", job.name, exc)
            self._settle(job, PdfStatus.FAILED, error=str(exc))
            return
        page_count, source = info.pages, info.source
        if info.repaired:
            log.warning("%s: damaged file, repaired by MuPDF (%s)", job.name, info.repaired)
            self.report.entry(job.name).repaired = info.repaired
        pages = select(self.cfg.page_spec, page_count, self.cfg.max_pages)
        if not pages:
            why = f"none of --pages {self.cfg.pages} is in it ({page_count} pages)"
            log.info("%s: %s", job.name, why)
            self._settle(job, PdfStatus.SKIPPED, error=why)
            return
        if self.cfg.overwrite:
            self.store.drop_journal(job)
        pdf = PdfProgress(job, source, len(pages), self.store.open_journal(job, source), page_count=page_count,
                          pages=pages)
        self.report.pdf_opened(job.name, pdf.total, list(pdf.results.values()))
        self.progress.add_total(pdf.total - len(pdf.results))
        self._pdfs[job.index] = pdf
        self._pages.extend((pdf, page) for page in pages if page not in pdf.results)
        if len(pdf.results) == pdf.total:
            self._close(pdf)

    def _outputs_present(self, job: PdfJob) -> bool:
        """A complete PDF is done only if every file asked for is there (--format jsonl added later: redone)."""
        return "jsonl" not in self.cfg.formats or jsonl_path(job.md_path).exists()

    def _fill(self, renderer: Renderer) -> None:
        while not self._feed_done and not self.stop and renderer.has_room():
            item = self._next_page()
            if item is None:
                return
            pdf, page = item
            renderer.submit(pdf.job.path, PageKey(pdf.job.index, page))

    # --- run --------------------------------------------------------------------------------------
    def run(self) -> None:
        self._jobs = iter(self._jobs_given) if self._jobs_given is not None else self._planned()
        window = max(2 * self.cfg.render_workers, min(self.cfg.seqs, 64))
        with Renderer(self.cfg.render_workers, window, self.cfg.dpi, self.cfg.max_render_pixels,
                      min_mark=self.cfg.blank_threshold, timeout_s=self.cfg.open_timeout) as renderer, \
                Progress(disabled=self.cfg.no_progress) as self.progress, \
                PostWorkers(self.cfg.post_workers, self.cfg.post_timeout) as self._post:
            self._fill(renderer)                       # pages render while the engine loads
            if self._nothing_to_do(renderer):
                return
            sup = Supervisor(self.engine_factory, self.cfg.max_engine_restarts, self.cfg.page_timeout,
                             on_event=self.report.event, stopping=lambda: self.stop is not None)
            self.report.engine_ready = time.time()
            caps = sup.engine.caps
            self.special_tokens = caps.special_tokens
            self.passes = settings_for(self.cfg, caps)
            self._log_passes(self.passes)
            self.report.engine.update(load_seconds=round(caps.load_seconds, 1))
            if caps.guard_active is not None:
                self.report.engine["guard_active"] = caps.guard_active
            try:
                self._loop(renderer, sup)
            except TooManyRestarts as exc:
                log.error("%s: stopping", exc)
                self.request_stop(StopReason.TOO_MANY_RESTARTS, str(exc))
            finally:
                self._drain_post()
                self.report.engine.update(restarts=sup.restarts, pages_isolated=len(sup.isolated),
                                          seconds_lost=round(sup.seconds_lost, 1))
                sup.close()

    def _nothing_to_do(self, renderer: Renderer) -> bool:
        return self._feed_done and renderer.pending() == 0

    def _loop(self, renderer: Renderer, sup: Supervisor) -> None:
        while not self.stop:
            self._fill(renderer)
            # a post-processing backlog (a hung page, a starved CPU) may grow to as many pages as are in
            # flight: the engine stays full meanwhile, and the pages held (with their images) stay bounded
            while sup.accepting() and sup.in_flight() < self.cfg.pages_in_flight \
                    and self._in_post() < self.cfg.pages_in_flight and not self.stop:
                page = renderer.next(block=sup.in_flight() == 0)
                if page is None:
                    break
                self._route(page, sup)
                self._fill(renderer)
            self._collect_post(sup)
            if sup.in_flight() == 0:
                if self._nothing_to_do(renderer) and not self._in_post():
                    return
                self._collect_post(sup, wait_s=0.05)   # the rest of this run's pages are in the post workers
                continue
            for out in sup.poll():
                self._on_output(out, sup)
            self._maybe_write_report()

    def _in_post(self) -> int:
        return len(self._judging) + len(self._finishing)

    def _route(self, page: RenderedPage, sup: Supervisor) -> None:
        pdf = self._pdfs.get(page.key.pdf)
        if pdf is None:                     # its PDF failed meanwhile (an internal or write error)
            return
        if page.damage:
            pdf.damage[page.key.page] = page.damage
        if page.error:
            self._record(pdf, failed_page(page.key.page, page.error, failure=Failure.RENDER))
        elif page.blank:
            self._record(pdf, replace(blank_page(page.key.page), blank_reason=page.blank_reason))
        else:
            if self.cfg.save_page_images:
                save_png(page.image, page_image_path(pdf.job.md_path, page.key.page))
            request = PageRequest(page.key, page.image, self.cfg.prompt or PROMPTS[self.cfg.mode])
            assert self.passes is not None
            self._work[page.key] = PageWork(request, self.passes, self._large_cap)
            self._submit(request, sup)

    def _submit(self, request: PageRequest, sup: Supervisor) -> None:
        try:
            sup.submit(request)
        except Exception as exc:  # the input processor rejected this image: only this request fails
            log.warning("page %d of %s rejected by the engine: %s", request.key.page,
                        self._pdfs[request.key.pdf].job.name, exc)
            self._on_output(request.answer("", 0, None, Failure.ENGINE_ERROR, str(exc)), sup)

    def _on_output(self, out: EngineOutput, sup: Supervisor) -> None:
        if out.key.pdf not in self._pdfs:   # its PDF failed meanwhile
            self._work.pop(out.key, None)
            return
        if PageWork.needs_judging(out):
            assert self._post is not None and self.passes is not None
            self._judging[out.key] = out
            self._post.submit(("judge", out.key), judge_job, out.text, out.finish_reason, self.passes.max_tokens)
            return
        self._advance(out, None, sup)

    def _advance(self, out: EngineOutput, judged: runaway.Judged | None, sup: Supervisor) -> None:
        work = self._work[out.key]
        step = work.on_output(out, judged)
        if isinstance(step, Final):
            del self._work[out.key]
            self._finish(work.request, step)
            return
        if step:
            log.info("page %d of %s: %s", out.key.page, self._pdfs[out.key.pdf].job.name, _why(step[0]))
        for request in step:
            self._submit(request, sup)

    def _finish(self, request: PageRequest, final: Final) -> None:
        """A failed page is recorded at once; the others go to the post workers (ocr.postwork)."""
        if final.failure:
            self._record(self._pdfs[request.key.pdf], replace(
                failed_page(request.key.page, final.error or final.failure.value, final.tokens, final.finish_reason,
                            failure=final.failure), counters=final.counters))
            return
        assert self._post is not None
        self._finishing[request.key] = (request, final)
        self._post.submit(("finish", request.key), self._finisher, _answer(request, final), self.cfg.mode,
                          self.special_tokens, self.cfg.greek_repair)

    def _collect_post(self, sup: Supervisor | None, wait_s: float = 0.0) -> None:
        """Take what the post workers are done with: a judged answer goes on through its passes (not when
        stopping: sup is None), a finished page is recorded. A page whose post-processing raised or ran past
        --post-timeout keeps its raw text without meta tokens (postwork.fallback_page)."""
        assert self._post is not None
        for done in self._post.poll(wait_s):
            kind, key = done.key
            if kind == "judge":
                self._judged(self._judging.pop(key), done, sup)
                continue
            request, final = self._finishing.pop(key)
            if key.pdf not in self._pdfs:       # its PDF failed meanwhile
                continue
            if done.error is not None:
                log.warning("page %d of %s: %s; the raw text is kept", key.page, self._pdfs[key.pdf].job.name,
                            done.error)
                result = fallback_page(_answer(request, final), done, self.cfg.mode, self.special_tokens)
            else:
                result = done.value
            self._record(self._pdfs[key.pdf], self._with_assets(request, final, result))

    def _judged(self, out: EngineOutput, done: Done, sup: Supervisor | None) -> None:
        if sup is None or out.key.pdf not in self._pdfs or out.key not in self._work:
            return                               # stopping, or its PDF failed meanwhile: it is redone later
        judged = done.value
        if done.error is not None:               # judge it as sound: its post-processing will meet the same
            log.warning("page %d of %s: runaway check: %s", out.key.page, self._pdfs[out.key.pdf].job.name,
                        done.error)
            self._work[out.key].counters[TIMEOUT_COUNTER if done.timed_out else FAILED_COUNTER] += 1
            judged = runaway.Judged(None, 0, False, 0)
        self._advance(out, judged, sup)

    def _drain_post(self) -> None:
        """At the end of the run or a stop, record the pages still being finished; answers still being
        judged are dropped (their pages are redone by the next run). Waits at most --post-timeout."""
        deadline = time.monotonic() + self.cfg.post_timeout + 1.0
        while self._finishing and time.monotonic() < deadline:
            self._collect_post(None, wait_s=0.1)

    def _with_assets(self, request: PageRequest, final: Final, result: PageResult) -> PageResult:
        page, md_path = request.key.page, self._pdfs[request.key.pdf].job.md_path
        result = replace(result, counters={**final.counters, **result.counters})
        if self.cfg.save_crops and self.cfg.mode == "grounded":
            crops = save_crops(request.image, final.text, md_path, page)
            saved = sum(map(len, crops.values())) + len(roi.save_crops(final.crops, assets_dir(md_path), page))
            result = replace(result, text=link_figures(result.text, crops.get("image", [])),
                             counters={**result.counters, "crops_saved": saved})
        return result

    def _log_passes(self, p: PassSettings) -> None:
        cfg = self.cfg
        if p.grounded and p.required_labels and cfg.retry_large_cap > 0 and not p.large:
            log.warning("this engine cannot read pages in Large mode: the Large-mode retry for pages "
                        "without %s is off", ",".join(p.required_labels))
        if cfg.runaway_retry == "on" and not p.retry_sampling:
            log.info("this engine has no per-request sampling%s: runaway pages are counted, not retried",
                     "" if not p.large else " (empty answers are read again in Large mode)")

    # --- results ----------------------------------------------------------------------------------
    def _record(self, pdf: PdfProgress, result: PageResult) -> None:
        if result.page in pdf.damage:
            result = replace(result, damage=pdf.damage.pop(result.page))
        pdf.results[result.page] = result
        try:
            self.store.journal_page(pdf.job, result)
        except WriteError as exc:
            self._write_failed(pdf.job, exc)
            return
        self.report.add_page(pdf.job.name, result)
        self.progress.page_done(result.tokens)
        if len(pdf.results) == pdf.total:
            self._close(pdf)

    def _close(self, pdf: PdfProgress) -> None:
        """Finalize a PDF whose pages are all done; an error there fails this PDF, not the run."""
        try:
            self._finalize(pdf)
        except WriteError as exc:
            self._write_failed(pdf.job, exc)
        except Exception as exc:
            self._internal_error(pdf.job, exc)

    def _write_failed(self, job: PdfJob, exc: WriteError) -> None:
        """Disk full, quota, I/O error: this PDF fails with the reason and the run stops cleanly (the next
        PDF would meet the same disk); its journal keeps what was written, so the rerun resumes."""
        log.error("%s: %s; stopping the run", job.name, exc)
        self._pdfs.pop(job.index, None)
        self._settle(job, PdfStatus.FAILED, error=str(exc))
        self.request_stop(StopReason.WRITE_ERROR, f"stopped: {exc}")

    def _internal_error(self, job: PdfJob, exc: Exception) -> None:
        log.exception("%s: internal error; this PDF fails, the run goes on", job.name)
        self._pdfs.pop(job.index, None)
        self._settle(job, PdfStatus.FAILED, error=f"internal error: {type(exc).__name__}: {exc} (traceback in "
                                                  f"the log; the next run tries it again)")

    def _finalize(self, pdf: PdfProgress) -> None:
        job = pdf.job
        write_atomic(job.md_path, assemble(list(pdf.results.values()), selection_line(pdf.pages, pdf.page_count)))
        if "jsonl" in self.cfg.formats:
            write_for_pdf(self.cfg, source_path=job.path, source_name=job.name, sha256=pdf.source.sha256,
                          size=pdf.source.size, md_path=job.md_path, pages=pdf.pages, results=pdf.results.values())
        failed = sorted(r.page for r in pdf.results.values() if r.status == PageStatus.FAILED)
        damaged = {r.page: r.damage for r in pdf.results.values() if r.damage}
        error = None
        if damaged:                           # never complete: the next run looks at it again
            status, error = PdfStatus.DAMAGED, _damage_summary(damaged)
        elif failed:
            status = PdfStatus.PARTIAL        # the journal stays: the next run redoes only these
        else:
            self.store.mark_complete(job, pdf.source, pdf.total)
            self.store.drop_journal(job)
            status = PdfStatus.COMPLETE
        del self._pdfs[job.index]
        log.info("%s: %s, %d pages%s", job.name, status.value, pdf.total,
                 f", failed pages {failed}" if failed else "")
        self._settle(job, status, error=error, output=job.md_path.relative_to(self.cfg.output_dir).as_posix(),
                     seconds=time.monotonic() - pdf.started)

    def _settle(self, job: PdfJob, status: PdfStatus, **details: object) -> None:
        """The one place a PDF's outcome reaches the report (and the on_pdf_done hook)."""
        self.report.pdf_settled(job.name, status, **details)  # type: ignore[arg-type]
        if self.on_pdf_done is not None:
            self.on_pdf_done(job, status)

    def _maybe_write_report(self) -> None:
        if time.monotonic() - self._last_report > REPORT_EVERY_S:
            self._last_report = time.monotonic()
            try:
                self.report.write()
            except WriteError as exc:         # the final write at the end tries again
                log.warning("run report not updated: %s", exc)


def _damage_summary(damaged: dict[int, str]) -> str:
    pages = sorted(damaged)
    return f"damaged PDF: pages {pages}: {damaged[pages[0]]}"


def _why(request: PageRequest) -> str:
    return {ATTEMPT_AGAIN: "engine error; trying once more",
            ATTEMPT_RUNAWAY: f"runaway answer; retrying ({request.vision} mode, "
                             f"{'sampled' if request.sampling else 'greedy'})",
            ATTEMPT_LARGE: "required layout labels missing; reading it again in Large mode",
            ATTEMPT_ROI: "ROI pass: reading its regions again"}.get(request.attempt, "retrying")


def _answer(request: PageRequest, final: Final) -> EngineOutput:
    """The page's settled answer, as the post-processing takes it."""
    return EngineOutput(request.key, final.text, final.tokens, final.finish_reason)
