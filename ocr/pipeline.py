"""Connects the stages: plan -> render (+ blank check) -> engine -> finish -> journal -> Markdown.

One control loop on the main thread; rendering runs ahead in processes, the engine in its own process.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from . import roi
from .assets import assets_dir, link_figures, page_image_path, save_crops, save_png
from .config import Config
from .discover import plan_jobs
from .engine import PROMPTS, Engine
from .finish import assemble, blank_page, failed_page, finish_page
from .passes import (ATTEMPT_AGAIN, ATTEMPT_LARGE, ATTEMPT_ROI, ATTEMPT_RUNAWAY, Final, LargeCap, PageWork,
                     PassSettings, settings_for)
from .progress import Progress
from .records import EngineOutput, PageKey, PageRequest, PageResult, PageStatus, PdfJob, RenderedPage
from .render import PdfError, Renderer, open_pdf
from .report import PdfStatus, RunReport
from .store import SourceId, Store, source_id, write_atomic
from .supervise import Supervisor, TooManyRestarts

log = logging.getLogger(__name__)
REPORT_EVERY_S = 10.0


@dataclass
class PdfProgress:
    job: PdfJob
    source: SourceId
    total: int
    results: dict[int, PageResult]
    started: float = field(default_factory=time.monotonic)


class Pipeline:
    def __init__(self, cfg: Config, engine_factory: Callable[[], Engine], report: RunReport):
        self.cfg = cfg
        self.engine_factory = engine_factory
        self.report = report
        self.store = Store(cfg.state_dir, cfg.fingerprint(), f"manifest{cfg.shard_suffix}.jsonl")
        self.stop_reason: str | None = None
        self._pdfs: dict[int, PdfProgress] = {}
        self._work: dict[PageKey, PageWork] = {}        # pages in the engine, with their passes
        self.passes = PassSettings()
        self._large_cap = LargeCap(cfg.retry_large_cap)
        self._feed: Iterator[tuple[PdfProgress, int]] = iter(())
        self._feed_done = False
        self._last_report = 0.0
        self.special_tokens: tuple[str, ...] = ()

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    # --- plan -------------------------------------------------------------------------------------
    def _todo(self) -> list[PdfJob]:
        jobs = plan_jobs(self.cfg.input_dir, self.cfg.output_dir, self.cfg.num_shards, self.cfg.shard_index)
        todo = []
        for job in jobs:
            if not self.cfg.overwrite and self.store.is_complete(job):
                self.report.entry(job.name).status = PdfStatus.SKIPPED
            else:
                todo.append(job)
        log.info("%d PDFs in this shard: %d to do, %d already complete", len(jobs), len(todo),
                 len(jobs) - len(todo))
        return todo

    def _pages(self, jobs: list[PdfJob]) -> Iterator[tuple[PdfProgress, int]]:
        """Pages still to OCR, PDF after PDF; bad PDFs are reported and passed over."""
        for job in jobs:
            entry = self.report.entry(job.name)
            try:
                with open_pdf(job.path) as doc:
                    total = min(doc.page_count, self.cfg.max_pages or doc.page_count)
                source = source_id(job.path)
            except (PdfError, OSError) as exc:
                entry.status, entry.error = PdfStatus.FAILED, str(exc)
                log.warning("%s: %s", job.name, exc)
                continue
            pdf = PdfProgress(job, source, total, self.store.open_journal(job, source) if not
                              self.cfg.overwrite else self._fresh_journal(job, source))
            entry.pages, entry.resumed_pages = total, len(pdf.results)
            for result in pdf.results.values():
                self.report.add_page(job.name, result)
            self._pdfs[job.index] = pdf
            todo = [p for p in range(1, total + 1) if p not in pdf.results]
            if not todo:
                self._finalize(pdf)
            for page in todo:
                yield pdf, page

    def _fresh_journal(self, job: PdfJob, source: SourceId) -> dict[int, PageResult]:
        self.store.drop_journal(job)
        return self.store.open_journal(job, source)

    def _fill(self, renderer: Renderer) -> None:
        while not self._feed_done and not self.stop_reason and renderer.has_room():
            try:
                pdf, page = next(self._feed)
            except StopIteration:
                self._feed_done = True
                return
            renderer.submit(pdf.job.path, PageKey(pdf.job.index, page))

    # --- run --------------------------------------------------------------------------------------
    def run(self) -> None:
        todo = self._todo()
        self._feed = self._pages(todo)
        window = max(2 * self.cfg.render_workers, min(self.cfg.batch_pages, 64))
        with Renderer(self.cfg.render_workers, window, self.cfg.dpi, self.cfg.max_render_pixels) as renderer, \
                Progress(disabled=self.cfg.no_progress) as self.progress:
            threading.Thread(target=self._count_pages, args=(todo,), daemon=True).start()
            self._fill(renderer)                       # pages render while the engine loads
            if self._nothing_to_do(renderer):
                return
            sup = Supervisor(self.engine_factory, self.cfg.max_engine_restarts, self.cfg.page_timeout,
                             on_event=self.report.event, stopping=lambda: self.stop_reason is not None)
            self.report.engine_ready = time.time()
            self.special_tokens = tuple(getattr(sup.engine, "special_tokens", ()))
            self.passes = settings_for(self.cfg, sup.engine)
            self._log_passes()
            self.report.engine.update({k: round(v, 1) if isinstance(v, float) else v
                                       for k in ("load_seconds", "guard_active")
                                       if (v := getattr(sup.engine, k, None)) is not None})
            try:
                self._loop(renderer, sup)
            except TooManyRestarts as exc:
                log.error("%s: stopping", exc)
                self.request_stop(str(exc))
            finally:
                self.report.engine.update(restarts=sup.restarts, pages_isolated=len(sup.isolated),
                                          seconds_lost=round(sup.seconds_lost, 1))
                sup.close()

    def _nothing_to_do(self, renderer: Renderer) -> bool:
        return self._feed_done and renderer.pending() == 0

    def _loop(self, renderer: Renderer, sup: Supervisor) -> None:
        while not self.stop_reason:
            self._fill(renderer)
            while sup.accepting() and sup.in_flight() < self.cfg.pages_in_flight and not self.stop_reason:
                page = renderer.next(block=sup.in_flight() == 0)
                if page is None:
                    break
                self._route(page, sup)
                self._fill(renderer)
            if sup.in_flight() == 0:
                if self._nothing_to_do(renderer):
                    return
                continue
            for out in sup.poll():
                self._on_output(out, sup)
            self._maybe_write_report()

    def _route(self, page: RenderedPage, sup: Supervisor) -> None:
        pdf = self._pdfs[page.key.pdf]
        if page.error:
            self._record(pdf, failed_page(page.key.page, page.error))
        elif page.blank:
            self._record(pdf, blank_page(page.key.page))
        else:
            if self.cfg.save_page_images:
                save_png(page.image, page_image_path(pdf.job.md_path, page.key.page))
            request = PageRequest(page.key, page.image, self.cfg.prompt or PROMPTS[self.cfg.mode])
            self._work[page.key] = PageWork(request, self.passes, self._large_cap)
            self._submit(request, sup)

    def _submit(self, request: PageRequest, sup: Supervisor) -> None:
        try:
            sup.submit(request)
        except Exception as exc:  # the input processor rejected this image: only this request fails
            log.warning("page %d of %s rejected by the engine: %s", request.key.page,
                        self._pdfs[request.key.pdf].job.name, exc)
            self._on_output(request.answer("", 0, None, error=f"engine error: {exc}"), sup)

    def _on_output(self, out: EngineOutput, sup: Supervisor) -> None:
        work = self._work[out.key]
        step = work.on_output(out)
        if isinstance(step, Final):
            del self._work[out.key]
            self._record(self._pdfs[out.key.pdf], self._finish(work.request, step))
            return
        if step:
            log.info("page %d of %s: %s", out.key.page, self._pdfs[out.key.pdf].job.name, _why(step[0]))
        for request in step:
            self._submit(request, sup)

    def _finish(self, request: PageRequest, final: Final) -> PageResult:
        page, md_path = request.key.page, self._pdfs[request.key.pdf].job.md_path
        if final.error:
            return replace(failed_page(page, final.error, final.tokens, final.finish_reason),
                           counters=final.counters)
        out = EngineOutput(request.key, final.text, final.tokens, final.finish_reason)
        result = finish_page(out, mode=self.cfg.mode, special_tokens=self.special_tokens,
                             greek_repair=self.cfg.greek_repair)
        result = replace(result, counters={**final.counters, **result.counters})
        if self.cfg.save_crops and self.cfg.mode == "grounded":
            crops = save_crops(request.image, final.text, md_path, page)
            saved = sum(map(len, crops.values())) + len(roi.save_crops(final.crops, assets_dir(md_path), page))
            result = replace(result, text=link_figures(result.text, crops.get("image", [])),
                             counters={**result.counters, "crops_saved": saved})
        return result

    def _log_passes(self) -> None:
        p, cfg = self.passes, self.cfg
        if p.grounded and p.required_labels and cfg.retry_large_cap > 0 and not p.large:
            log.warning("this engine cannot read pages in Large mode: the Large-mode retry for pages "
                        "without %s is off", ",".join(p.required_labels))
        if cfg.runaway_retry == "on" and not p.retry_sampling:
            log.info("this engine has no per-request sampling%s: runaway pages are counted, not retried",
                     "" if not p.large else " (empty answers are read again in Large mode)")

    # --- results ----------------------------------------------------------------------------------
    def _record(self, pdf: PdfProgress, result: PageResult) -> None:
        pdf.results[result.page] = result
        self.store.journal_page(pdf.job, result)
        self.report.add_page(pdf.job.name, result)
        self.progress.page_done(result.tokens)
        if len(pdf.results) == pdf.total:
            self._finalize(pdf)

    def _finalize(self, pdf: PdfProgress) -> None:
        job, entry = pdf.job, self.report.entry(pdf.job.name)
        write_atomic(job.md_path, assemble(list(pdf.results.values())))
        failed = sorted(r.page for r in pdf.results.values() if r.status == PageStatus.FAILED)
        if failed:
            entry.status = PdfStatus.PARTIAL        # the journal stays: the next run redoes only these
        else:
            self.store.mark_complete(job, pdf.source, pdf.total)
            self.store.drop_journal(job)
            entry.status = PdfStatus.COMPLETE
        entry.output = job.md_path.relative_to(self.cfg.output_dir).as_posix()
        entry.seconds = time.monotonic() - pdf.started
        del self._pdfs[job.index]
        log.info("%s: %s, %d pages%s", job.name, entry.status.value, pdf.total,
                 f", failed pages {failed}" if failed else "")

    def _maybe_write_report(self) -> None:
        if time.monotonic() - self._last_report > REPORT_EVERY_S:
            self._last_report = time.monotonic()
            self.report.write()

    def _count_pages(self, jobs: list[PdfJob]) -> None:
        """Total pages for the progress bar's ETA, counted beside the run."""
        total = 0
        for job in jobs:
            try:
                with open_pdf(job.path) as doc:
                    total += min(doc.page_count, self.cfg.max_pages or doc.page_count)
            except (PdfError, OSError):
                continue
        self.progress.set_total(total)


def _why(request: PageRequest) -> str:
    return {ATTEMPT_AGAIN: "engine error; trying once more",
            ATTEMPT_RUNAWAY: f"runaway answer; retrying ({request.vision} mode, "
                             f"{'sampled' if request.sampling else 'greedy'})",
            ATTEMPT_LARGE: "required layout labels missing; reading it again in Large mode",
            ATTEMPT_ROI: "ROI pass: reading its regions again"}.get(request.attempt, "retrying")
