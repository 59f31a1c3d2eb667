"""A scripted engine double with the whole Engine contract (ocr.engines.base): deterministic text, and deaths or
hangs on cue. No vLLM import: pipeline tests run where vLLM is not installed."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Callable

from ocr.engines.base import EngineCaps, EngineDead
from ocr.records import EngineOutput, PageRequest

SPECIAL_TOKENS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>",
                  "<|grounding|>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>")


def page_text(request: PageRequest) -> str:
    """Text that depends on the rendered image, so a wrong or missing render shows in the output."""
    digest = hashlib.sha256(request.image.tobytes()).hexdigest()[:12]
    return f"# Page {request.key.page}\n\nText of page {request.key.page} (image {digest}).\n"


class ScriptedEngine:
    """The Engine contract, scripted."""

    def __init__(self, script: Callable[[PageRequest], str | tuple[str, str | None]] = page_text,
                 kills: set[tuple[int, int]] = frozenset(), hangs: set[tuple[int, int]] = frozenset(),
                 per_poll: int = 4, log: list | None = None, step_s: float = 0.0,
                 silent_kills: set[tuple[int, int]] = frozenset(),
                 vision_modes: tuple[str, ...] = ("gundam", "large"), retry_sampling: bool = True,
                 kill_if: Callable[[PageRequest], bool] | None = None):
        self.script, self.kills, self.hangs, self.per_poll = script, kills, hangs, per_poll
        self.step_s = step_s                           # seconds an engine step takes, as on a GPU
        self.silent_kills = silent_kills               # the process dies and poll blocks (vLLM 0.32's sync client)
        self.dead = False
        # what VllmEngine offers, without a repetition guard
        self.caps = EngineCaps(special_tokens=SPECIAL_TOKENS, vision_modes=vision_modes, ngram=(0, 0),
                               retry_sampling=retry_sampling, load_seconds=0.0)
        self.kill_if = kill_if                         # requests that kill the engine (e.g. a pass's crops)
        self.log = log if log is not None else []    # every (pdf, page, attempt) submitted, across engines
        self._in: dict[str, PageRequest] = {}
        self.requests: list[PageRequest] = []          # every request submitted to this engine
        self.closed = False
        self._released = threading.Event()

    def submit(self, request: PageRequest) -> None:
        self.log.append((request.key.pdf, request.key.page, request.attempt))
        self.requests.append(request)
        self._in[request.request_id] = request

    def poll(self) -> list[EngineOutput]:
        time.sleep(self.step_s)
        keys = {(r.key.pdf, r.key.page) for r in self._in.values()}
        due = {(r.key.pdf, r.key.page) for r in list(self._in.values())[: self.per_poll]}   # what this step finishes
        if due & self.silent_kills:
            self.dead = True
            self._released.wait(3600)
            return []
        killing = self.kill_if is not None and any(self.kill_if(r) for r in list(self._in.values())[: self.per_poll])
        if due & self.kills or killing:
            raise EngineDead("EngineDeadError: the engine core died")   # what VllmEngine turns vLLM's into
        if keys & self.hangs:
            self._released.wait(3600)          # like a stuck GPU: returns only when the engine is torn down
            return []
        done = []
        for rid in list(self._in)[: self.per_poll]:
            req = self._in.pop(rid)
            result = self.script(req)
            text, finish = result if isinstance(result, tuple) else (result, "stop")
            done.append(req.answer(text, len(text.split()), finish))
        return done

    def in_flight(self) -> int:
        return len(self._in)

    def alive(self) -> bool:
        return not self.dead

    def lost_requests(self) -> list[PageRequest]:
        lost = list(self._in.values())
        self._in.clear()
        return lost

    def close(self) -> None:
        self.closed = True
        self._released.set()


def failing_finisher(out, mode, special_tokens, greek_repair):
    """A post-processing job (ocr.postwork.finish_job) that raises on page 2 and hangs on page 3 of a PDF."""
    from ocr.postwork import finish_job
    if out.key.page == 2:
        raise ValueError("a clean-up bug")
    if out.key.page == 3:
        time.sleep(600)
    return finish_job(out, mode, special_tokens, greek_repair)
