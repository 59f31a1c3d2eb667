"""The engine contract: what the runner calls on an engine, what it may read from it, and how pages fail."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..records import EngineOutput, PageRequest


class EngineDead(RuntimeError):
    """The engine died or hung: every request in flight is lost and the engine must be rebuilt.
    The only exception an engine raises from submit/poll for that (vLLM's own is translated)."""


class Failure(str, Enum):
    """Why a page (or one request of it) has no text; the value is the message its stub starts with."""
    ENGINE_ERROR = "engine error"                    # the engine raised for this request: retried once
    INPUT_REJECTED = "input processing failed"       # vLLM's input processor refused the image: retried once
    KILLS_ENGINE = "engine crashed on this page"     # isolated by the supervisor: never retried
    ENGINE_CLOSED = "engine closed"                  # the engine was torn down while the request ran
    NO_TEXT = "the model returned no text"           # empty or markup-only answer, after the retries
    RENDER = "render failed"                         # the page could not be rendered (bad PDF page)

    @property
    def retryable(self) -> bool:
        """A first reading that failed this way is sent once more, unchanged."""
        return self in (Failure.ENGINE_ERROR, Failure.INPUT_REJECTED)


@dataclass(frozen=True)
class EngineCaps:
    """What an engine offers the runner, declared once when it is built (no attribute probing)."""
    special_tokens: tuple[str, ...]        # the tokenizer's special tokens, stripped from the Markdown
    vision_modes: tuple[str, ...]          # ocr.engines.vision_modes.MODES names it reads ("gundam", "large")
    ngram: tuple[int, int]                 # (size, window) of the repetition guard in force; (0, 0): none
    retry_sampling: bool                   # honours PageRequest.sampling (ocr.runaway.RetrySampling)
    load_seconds: float = 0.0              # time to build and load the engine
    guard_active: bool | None = None       # the guard was checked to work (None: no guard, or not checked)


class Engine(Protocol):
    """Everything the pipeline and the supervisor call on an engine (vLLM, transformers, test doubles)."""

    caps: EngineCaps

    def submit(self, request: PageRequest) -> None:
        """Queue a request; raises EngineDead if the engine is gone."""

    def poll(self) -> list[EngineOutput]:
        """Advance the engine and return the requests that finished (may block for one step);
        raises EngineDead if the engine died."""

    def in_flight(self) -> int:
        """Requests submitted and not yet returned."""

    def alive(self) -> bool:
        """False once the engine's processes are gone (a poll could then block forever)."""

    def lost_requests(self) -> list[PageRequest]:
        """After a death: the requests in flight, for requeueing; the engine forgets them."""

    def close(self) -> None:
        """Shut down and free the engine's memory and processes; safe on a dead engine."""
