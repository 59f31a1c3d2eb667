"""Open PDFs with PyMuPDF and render pages to RGB images in background processes, ahead of the engine;
notice damaged files (MuPDF repairs, missing page content) and blank pages on the way."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pymupdf
from PIL import Image

from .blank import MIN_MARK_INK, Verdict, check_page, largest_mark
from .discover import file_problem
from .helper_process import start_helper
from .records import PageKey, RenderedPage
from .store import SourceId, source_id

OPEN_TIMEOUT_S = 120.0     # opening and reading one file (a hung network mount blocks for ever)


class PdfError(Exception):
    """A PDF that cannot be OCRed at all; the message says why in a few words."""


class OpenCancelled(Exception):
    """The run began stopping while a PDF was being opened: it stays unfinished, not failed."""


def open_pdf(path: Path) -> pymupdf.Document:
    """Open a PDF or raise PdfError with a clear reason (empty, not a PDF, encrypted, no pages...)."""
    problem = file_problem(path)         # a FIFO or a device would block open() below
    if problem:
        raise PdfError(problem)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise PdfError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise PdfError("empty file (0 bytes)")
    if b"%PDF" not in head:  # MuPDF would "repair" any file into a page; readers require the header
        raise PdfError("not a PDF (no %PDF header in the first 1024 bytes)")
    try:
        doc = _open_document(path)
    except Exception as exc:
        raise PdfError(f"damaged PDF: {exc}") from exc
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        raise PdfError("encrypted PDF: needs a password")
    if doc.page_count == 0:
        doc.close()
        raise PdfError("PDF has no pages (damaged or empty page tree)")
    return doc


def _open_document(path: Path) -> pymupdf.Document:
    """MuPDF takes file names as UTF-8; a name that is not (an archive unzipped from CP1253) is opened
    through its file descriptor, or read into memory where there is no /proc."""
    try:
        os.fsdecode(path).encode("utf-8")
        return pymupdf.open(path, filetype="pdf")
    except UnicodeEncodeError:
        pass
    if not os.path.isdir("/proc/self/fd"):
        return pymupdf.open(stream=Path(path).read_bytes(), filetype="pdf")
    fd = os.open(path, os.O_RDONLY)
    try:
        return pymupdf.open(f"/proc/self/fd/{fd}", filetype="pdf")     # MuPDF opens its own handle
    finally:
        os.close(fd)


def page_zoom(width_pt: float, height_pt: float, dpi: int, max_pixels: int) -> float:
    """Zoom for rendering at dpi, lowered so the page stays within max_pixels (posters, 1:61 strips)."""
    zoom = dpi / 72.0
    area = max(width_pt, 1.0) * max(height_pt, 1.0) * zoom * zoom
    if area > max_pixels:
        zoom *= (max_pixels / area) ** 0.5 * 0.99   # MuPDF rounds pixmap sides up: stay under the cap
    return zoom


def render_page(doc: pymupdf.Document, page_no: int, dpi: int, max_pixels: int) -> Image.Image:
    return _render(doc[page_no - 1], dpi, max_pixels)


def _render(page: pymupdf.Page, dpi: int, max_pixels: int) -> Image.Image:
    zoom = page_zoom(page.rect.width, page.rect.height, dpi, max_pixels)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
    return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


@dataclass(frozen=True)
class PdfInfo:
    """What the runner learns from opening a PDF, before any page is rendered."""
    pages: int                  # pages to OCR (--max-pages applied)
    source: SourceId
    repaired: str | None        # MuPDF had to repair the file (a truncated download): its first warning


def inspect_pdf(path: Path, max_pages: int | None = None, timeout_s: float | None = None,
                stopping: Callable[[], bool] = lambda: False) -> PdfInfo:
    """Open and read a PDF within timeout_s (default OPEN_TIMEOUT_S), or raise PdfError (also for
    unreadable files); OpenCancelled as soon as `stopping()` turns true."""
    return _within(OPEN_TIMEOUT_S if timeout_s is None else timeout_s, stopping, _inspect, path, max_pages)


def _inspect(path: Path, max_pages: int | None) -> PdfInfo:
    problem = file_problem(path)
    if problem:
        raise PdfError(problem)
    try:
        source = source_id(path)     # reads the whole file in Python first: a hung read times out here
    except OSError as exc:
        raise PdfError(f"cannot read file: {exc.strerror or exc}") from exc
    pymupdf.TOOLS.mupdf_warnings(reset=True)
    with open_pdf(path) as doc:
        warnings = _first_line(pymupdf.TOOLS.mupdf_warnings(reset=True))
        repaired = (warnings or "repaired by MuPDF") if doc.is_repaired else None
        return PdfInfo(min(doc.page_count, max_pages or doc.page_count), source, repaired)


def _within(timeout_s: float, stopping: Callable[[], bool], fn: Callable, *args):
    """fn(*args) in a daemon thread (one that hangs in a read must not hold up the run or its exit);
    PdfError once timeout_s has passed."""
    box: dict = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller as it is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="open-pdf", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(max(0.0, min(0.2, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            raise PdfError(f"opening or reading the file took more than {timeout_s:g} s (a hung network "
                           f"mount, a file that never ends?): skipped")
        if stopping():
            raise OpenCancelled()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


_open_docs: dict[str, pymupdf.Document] = {}   # per render process: the PDF it rendered last


def _cached_doc(path: str) -> pymupdf.Document:
    if path not in _open_docs:
        for old in _open_docs.values():
            old.close()
        _open_docs.clear()
        _open_docs[path] = open_pdf(Path(path))
    return _open_docs[path]


def page_damage(doc: pymupdf.Document, page: pymupdf.Page, verdict: Verdict, image: Image.Image) -> str | None:
    """What the file lost on this page, if anything: content streams that are not there (a truncated
    download), or, in a file MuPDF had to repair, warnings while rendering or an empty render of a page
    that says it holds text or drawings."""
    if any(not doc.xref_is_stream(xref) for xref in page.get_contents()):
        return "page content missing (truncated or damaged file)"
    warnings = pymupdf.TOOLS.mupdf_warnings(reset=True)
    if not doc.is_repaired:
        return None
    if warnings:
        return f"MuPDF: {_first_line(warnings)}"
    if verdict.evidence in ("text", "drawings") and largest_mark(image) == 0:
        return f"renders empty though it holds {verdict.evidence}"
    return None


def render_task(path: str, key: PageKey, dpi: int, max_pixels: int, min_mark: int = MIN_MARK_INK) -> RenderedPage:
    """One page, rendered, blank-checked and checked for damage in a render process. Never raises."""
    start = time.perf_counter()
    try:
        doc = _cached_doc(path)
        pymupdf.TOOLS.mupdf_warnings(reset=True)          # the open's own warnings are the file's, not the page's
        try:
            page = doc.load_page(key.page - 1)
        except Exception as exc:
            damage = f"page cannot be loaded ({exc})"
            return RenderedPage(key, error=f"damaged PDF: {damage}", damage=damage,
                                seconds=time.perf_counter() - start)
        image = _render(page, dpi, max_pixels)
        verdict = check_page(page, image, min_mark)
        damage = page_damage(doc, page, verdict, image)
    except Exception as exc:  # a page that fails to render must not stop the PDF or the run
        return RenderedPage(key, error=f"render failed: {type(exc).__name__}: {exc}",
                            seconds=time.perf_counter() - start)
    finally:
        # MuPDF keeps decoded page images (up to 256 MB) for reuse; a scan's images are used once.
        # Emptying the store keeps a render process at ~220 MB instead of ~450 MB, and is no slower.
        pymupdf.TOOLS.store_shrink(100)
    seconds = time.perf_counter() - start
    if damage and verdict.blank:          # nothing left of it to read: not a blank page, a lost one
        return RenderedPage(key, error=f"damaged PDF: {damage}", damage=damage, seconds=seconds)
    return RenderedPage(key, image=None if verdict.blank else image, blank=verdict.blank,
                        blank_reason=verdict.reason.value if verdict.reason else None, damage=damage,
                        seconds=seconds)


def warm_up() -> None:
    """A render process's first task: nothing; unpickling it imports this module (PyMuPDF, Pillow)."""


@dataclass
class _Entry:
    args: tuple
    future: Future | None = None
    solo: bool = False            # in progress when a render process died: rendered alone, to find the culprit


CLOSE_GRACE_S = 3.0       # a page renders in 0.1-1 s; a hung one is killed after this


def wait_for_exit(processes: list, timeout_s: float) -> None:
    """Until every process has exited or timeout_s has passed (their sentinels: no reaping here)."""
    from multiprocessing.connection import wait
    deadline = time.monotonic() + timeout_s
    alive = []
    for process in processes:
        try:
            alive.append(process.sentinel)
        except ValueError:                    # closed: gone already
            pass
    while alive and (left := deadline - time.monotonic()) > 0:
        done = wait(alive, timeout=left)
        alive = [s for s in alive if s not in done]


class Renderer:
    """A pool of render processes with a bounded window of pages in progress, returned in order.

    When a render process dies (out of memory, a MuPDF crash), every page in progress fails with it; those
    pages are rendered again one at a time, so only the page that kills a process alone gets the stub."""

    def __init__(self, workers: int, window: int, dpi: int, max_pixels: int, task: Callable | None = None,
                 min_mark: int = MIN_MARK_INK, timeout_s: float = 120.0):
        self._workers, self._task, self._min_mark = workers, task, min_mark
        # no render finished for this long, renders pending: a page hangs (a hung network mount, a MuPDF
        # loop); its processes are killed and the pages in progress rendered one at a time, as after a crash
        self._timeout = timeout_s
        self._progress = time.monotonic()      # when a render last finished (or the pool went idle)
        self._stalled = False                  # the last broken pool was killed for a stall
        self._warming: list[Future] = []
        self._pool = self._new_pool()
        self._window = max(window, workers)
        self._dpi, self._max_pixels = dpi, max_pixels
        self._pending: deque[_Entry] = deque()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the parent may hold CUDA and vLLM threads, which must not be forked
        pool = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_helper, initargs=(os.getpid(),))
        # one warm-up per process (each submit starts one): start-up and imports (PyMuPDF: 3.6 s here, more
        # under load) happen before the first page, and the render deadline is armed only after them
        self._warming = [pool.submit(warm_up) for _ in range(self._workers)]
        return pool

    def has_room(self) -> bool:
        return len(self._pending) < self._window

    def submit(self, path: Path, key: PageKey) -> None:
        self._pending.append(_Entry((str(path), key, self._dpi, self._max_pixels, self._min_mark)))
        self._launch()

    def pending(self) -> int:
        return len(self._pending)

    def _launch(self) -> None:
        """Start what may start: while suspects remain, one of them alone and nothing else."""
        suspects = any(e.solo for e in self._pending)
        for entry in self._pending:
            if entry.solo:
                if entry.future is None:
                    entry.future = self._start(entry)
                if not entry.future.done():
                    return
            elif entry.future is None:
                if suspects:
                    return
                entry.future = self._start(entry)

    def _start(self, entry: _Entry) -> Future:
        if not any(e.future is not None and not e.future.done() for e in self._pending):
            self._progress = time.monotonic()  # the pool was idle: the deadline starts now
        try:
            future = self._pool.submit(self._task or render_task, *entry.args)
            future.add_done_callback(self._finished)
            return future
        except BrokenProcessPool as exc:     # a process died since the last look: next() sorts it out
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def _finished(self, future: Future) -> None:
        self._progress = time.monotonic()     # (in the pool's thread: one float store)

    def _check_stall(self) -> None:
        if not all(f.done() for f in self._warming):
            self._progress = time.monotonic()  # still starting: the deadline counts from the end of it
            return
        if time.monotonic() - self._progress > self._timeout and not self._stalled:
            self._stalled = self._kill_processes() > 0   # the pool breaks: every page in progress fails with it

    def _kill_processes(self, processes: list | None = None) -> int:
        """SIGKILL the pool's processes (or these). A broken pool's clean-up sends SIGTERM, which they ignore,
        and then waits for every process to end: a hung one would hold it, and the runner's exit, for ever."""
        processes = self._processes() if processes is None else processes
        for process in processes:
            process.kill()
        return len(processes)

    def _processes(self) -> list:
        return list((getattr(self._pool, "_processes", None) or {}).values())

    def _wait(self, future: Future) -> None:
        while not future.done():
            self._check_stall()
            try:
                future.exception(timeout=0.2)
            except TimeoutError:
                pass

    def next(self, block: bool) -> RenderedPage | None:
        """The oldest page in progress if it is done (or when block is set), else None."""
        self._launch()
        if not self._pending:
            return None
        if not self._pending[0].future.done():
            self._check_stall()
            if not block:
                return None
            self._wait(self._pending[0].future)
        entry = self._pending.popleft()
        try:
            page = entry.future.result()
        except BrokenProcessPool:
            stalled, self._stalled = self._stalled, False
            self._kill_processes()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()           # the deadline is armed again after its warm-up
            if entry.solo:
                why = f"rendering took over {self._timeout:g} s" if stalled else "the render process died"
                return RenderedPage(entry.args[1], error=f"render failed: {why} on this page")
            for other in (entry, *self._pending):
                if other.future is not None and not (other.future.done() and other.future.exception() is None):
                    other.future, other.solo = None, True
            self._pending.appendleft(entry)
            return self.next(block)
        self._launch()
        return page

    def close(self) -> None:
        """The processes finish what they hold and exit; those still running after CLOSE_GRACE_S (a hung
        page) are killed. Killing one while it sends a page back leaves the pool's reader thread waiting
        for the rest of that message for ever, and the process's exit with it (seen: a test run that
        printed its result, then hung in concurrent.futures' exit hook on a 6 MB page, 131 KB read)."""
        processes = self._processes()               # shutdown forgets them
        self._pool.shutdown(wait=False, cancel_futures=True)
        wait_for_exit(processes, CLOSE_GRACE_S)
        self._kill_processes(processes)             # (a no-op on one that has exited)

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
