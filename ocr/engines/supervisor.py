"""Keeps an engine alive: watches for death and hangs, restarts it, requeues lost pages, isolates killers."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, TimeoutError as StepTimeout
from typing import Callable

from ..records import EngineOutput, PageKey, PageRequest
from .base import Engine, EngineDead, Failure

log = logging.getLogger(__name__)
LIVENESS_CHECK_S = 1.0     # how often a waiting step checks that the engine processes still exist


class TooManyRestarts(RuntimeError):
    pass


class Supervisor:
    """Wraps an engine factory. After a death the lost pages run in halving groups, one group at a time,
    until the page that kills the engine is alone; alone twice, it fails with a stub and the run goes on."""

    def __init__(self, factory: Callable[[], Engine], max_restarts: int, page_timeout: float,
                 on_event: Callable[..., None] = lambda *a, **k: None, stopping: Callable[[], bool] = lambda: False):
        self.factory = factory
        self.stopping = stopping          # the run is stopping (a signal): a dead engine is not rebuilt
        self.max_restarts = max_restarts
        self.page_timeout = page_timeout
        self.on_event = on_event
        self.restarts = 0
        self.seconds_lost = 0.0
        self.isolated: list[PageKey] = []
        self._kills: Counter[PageKey] = Counter()         # deaths alone, per page (any of its requests)
        self._refused: list[EngineOutput] = []            # answers for requests of isolated pages
        self._groups: deque[list[PageRequest]] = deque()
        self._group: list[PageRequest] | None = None     # the suspect group running now, if any
        self._last_progress = time.monotonic()
        self._dead: str | None = None                    # set when the engine died during submit
        self._orphans: list[PageRequest] = []            # requests that never made it in
        self.engine = factory()

    def accepting(self) -> bool:
        """New pages may go in only while no suspect group is waiting or running."""
        return not self._groups and self._group is None

    def submit(self, request: PageRequest) -> None:
        if request.key in self.isolated:      # a later pass of a page that kills the engine: not sent
            self._refused.append(request.answer("", 0, None, Failure.KILLS_ENGINE))
            return
        if self.engine.in_flight() == 0:
            self._last_progress = time.monotonic()
        if self._dead:
            self._orphans.append(request)
            return
        try:
            self.engine.submit(request)
        except EngineDead as exc:
            self._dead = _cause(exc)
            self._orphans.append(request)

    def in_flight(self) -> int:
        return (self.engine.in_flight() + len(self._orphans) + len(self._refused)
                + sum(len(g) for g in self._groups))

    def poll(self) -> list[EngineOutput]:
        if self._refused:
            refused, self._refused = self._refused, []
            return refused
        if self._group is None and self._groups and not self._dead:
            self._start_group(self._groups.popleft())
        if self._dead:
            return self._recover(self._dead)
        try:
            outputs = self._step()
        except EngineDead as exc:
            return self._recover(_cause(exc))
        if outputs:
            self._last_progress = time.monotonic()
        if self._group is not None and self.engine.in_flight() == 0:
            self._group = None                              # the group ran through: none of it kills
        return outputs

    def _start_group(self, group: list[PageRequest]) -> None:
        self._group = group
        for request in group:
            self.submit(request)

    def _step(self) -> list[EngineOutput]:
        """engine.poll() in a daemon thread, so a hung engine can block neither the run nor its exit."""
        future: Future = Future()

        def step() -> None:
            try:
                future.set_result(self.engine.poll())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=step, name="engine-step", daemon=True).start()
        deadline = self._last_progress + self.page_timeout
        while True:
            try:
                return future.result(timeout=min(LIVENESS_CHECK_S, max(0.0, deadline - time.monotonic())))
            except StepTimeout:
                if not self.engine.alive():
                    raise EngineDead("engine process exited") from None
                if time.monotonic() >= deadline:
                    raise EngineDead(f"engine hung: no page finished for {self.page_timeout:.0f} s") from None

    def _recover(self, cause: str) -> list[EngineOutput]:
        if self.stopping():
            # `timeout` and Ctrl-C signal the whole process group, so the engine core stops with the run;
            # its pages in flight are not journaled and the next run redoes them.
            log.info("engine stopped with the run (%s)", cause)
            self._orphans, self._groups, self._group = [], deque(), None
            self.engine.lost_requests()
            return []
        started = time.monotonic()
        lost = self.engine.lost_requests() + self._orphans
        self._orphans, self._dead = [], None
        log.error("engine died (%s) with %d pages in flight; restarting", cause, len(lost))
        self._close_engine()
        self.restarts += 1
        failed = self._requeue(lost)
        self.on_event("engine_restart", cause=cause, pages_in_flight=len(lost), restart=self.restarts)
        if self.restarts > self.max_restarts:
            raise TooManyRestarts(f"engine died {self.restarts} times (--max-engine-restarts "
                                  f"{self.max_restarts}); last cause: {cause}")
        self.engine = self.factory()
        self._last_progress = time.monotonic()
        self.seconds_lost += time.monotonic() - started
        return failed

    def _requeue(self, lost: list[PageRequest]) -> list[EngineOutput]:
        """Split the lost pages into halves to run one at a time; a lone page that killed twice fails."""
        self._group = None
        if len(lost) != 1:
            half = (len(lost) + 1) // 2
            self._groups.extendleft(g for g in (lost[half:], lost[:half]) if g)
            return []
        request = lost[0]
        self._kills[request.key] += 1
        if self._kills[request.key] < 2:
            self._groups.appendleft(lost)
            return []
        self.isolated.append(request.key)
        log.error("page %d of PDF #%d kills the engine: giving up on it", request.key.page, request.key.pdf)
        return [request.answer("", 0, None, Failure.KILLS_ENGINE)]

    def _close_engine(self) -> None:
        try:
            self.engine.close()
        except Exception as exc:  # a dead engine often fails its own shutdown
            log.debug("engine close after death: %s", exc)

    def close(self) -> None:
        self._close_engine()


def _cause(exc: EngineDead) -> str:
    return str(exc) or type(exc).__name__

