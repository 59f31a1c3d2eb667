"""A page that kills its render process: only that page gets the stub, the pages beside it render."""

from __future__ import annotations

import os
import time

from ocr.records import PageKey
from ocr.render import Renderer, render_task
from pdfgen import make_pdf, numbered_pages

KILLER_PAGE = 3


def crashing_task(path, key, *settings):
    """render_task, but page 3 takes its render process down (as a MuPDF segfault or the OOM killer)
    while page 2, slow, is still rendering in the other process."""
    if key.page == KILLER_PAGE:
        time.sleep(0.3)
        os._exit(1)
    if key.page == KILLER_PAGE - 1:
        time.sleep(2.0)
    return render_task(path, key, *settings)


def render_all(renderer: Renderer, pdf, pages: int) -> list:
    """Every page through the renderer as the runner feeds it: submit while there is room, take in order."""
    got = []
    for page in range(1, pages + 1):
        if not renderer.has_room():
            got.append(renderer.next(block=True))
        renderer.submit(pdf, PageKey(0, page))
    while renderer.pending():
        got.append(renderer.next(block=True))
    return got


def test_only_the_page_that_kills_a_render_process_is_stubbed(tmp_path):
    pdf = make_pdf(tmp_path / "a.pdf", numbered_pages(8))
    with Renderer(workers=2, window=6, dpi=40, max_pixels=10**6, task=crashing_task) as renderer:
        got = render_all(renderer, pdf, 8)
    assert [p.key.page for p in got] == list(range(1, 9))                 # in order, none lost
    failed = {p.key.page: p.error for p in got if p.error}
    assert failed == {KILLER_PAGE: "render failed: the render process died on this page"}
    assert all(p.image is not None or p.blank for p in got if p.key.page != KILLER_PAGE)


def hanging_task(path, key, *settings):
    """render_task, but page 4 never finishes (a read on a hung network mount, a MuPDF loop)."""
    if key.page == KILLER_PAGE + 1:
        time.sleep(3600)
    return render_task(path, key, *settings)


def test_a_page_that_never_finishes_rendering_gets_a_stub_and_the_rest_render(tmp_path):
    pdf = make_pdf(tmp_path / "a.pdf", numbered_pages(6))
    with Renderer(workers=2, window=4, dpi=40, max_pixels=10**6, task=hanging_task, timeout_s=3.0) as renderer:
        got = render_all(renderer, pdf, 6)
    assert [p.key.page for p in got] == list(range(1, 7))                 # in order, none lost
    failed = {p.key.page: p.error for p in got if p.error}
    assert failed == {KILLER_PAGE + 1: "render failed: rendering took over 3 s on this page"}
    assert all(p.image is not None or p.blank for p in got if p.key.page != KILLER_PAGE + 1)


def slow_task(path, key, *settings):
    """render_task after a second: the page a process holds when the run stops."""
    time.sleep(1.0)
    return render_task(path, key, *settings)


def gone_within(process, seconds: float) -> bool:
    """The process has exited and been reaped. Not `join(); is_alive()`: the pool's own thread reaps its
    processes too, and a Process whose waitpid loses that race to ECHILD reads as alive (seen once in CI)."""
    import psutil
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.exitcode is not None:
            return True
        try:
            if psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE:
                process.join(timeout=0.1)
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_closing_lets_a_process_finish_its_page_and_kills_a_hung_one(tmp_path):
    """close() at a stop: a process rendering a page finishes it (killed while it sends a page back, it
    would leave the pool's reader waiting for the rest for ever, and the runner's exit with it); a hung
    one is killed after CLOSE_GRACE_S, so the stop still ends."""
    from ocr import render
    pdf = make_pdf(tmp_path / "a.pdf", numbered_pages(2))
    renderer = Renderer(workers=1, window=1, dpi=40, max_pixels=10**6, task=slow_task)
    for warm in renderer._warming:
        warm.result(timeout=120)
    renderer.submit(pdf, PageKey(0, 1))
    future = renderer._pending[0].future
    time.sleep(0.3)                                              # the page is in its process now
    renderer.close()
    assert future.result(timeout=10).key.page == 1               # finished and sent back whole

    hung = Renderer(workers=1, window=1, dpi=40, max_pixels=10**6, task=hanging_task)
    for warm in hung._warming:
        warm.result(timeout=120)
    hung.submit(pdf, PageKey(0, KILLER_PAGE + 1))
    (process,) = hung._processes()
    time.sleep(0.3)
    start = time.monotonic()
    hung.close()
    assert render.CLOSE_GRACE_S - 0.5 < time.monotonic() - start < render.CLOSE_GRACE_S + 5
    assert gone_within(process, 10.0)
