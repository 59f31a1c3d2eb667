"""Small frozen records that flow one way between the stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .engines.base import Failure


@dataclass(frozen=True)
class PdfJob:
    """One input PDF and where its Markdown goes."""
    index: int          # position in this shard's job list; part of every page key
    path: Path
    rel: Path           # path relative to --input-dir, mirrored under --output-dir
    md_path: Path

    @property
    def name(self) -> str:
        return self.rel.as_posix()


@dataclass(frozen=True)
class PageKey:
    pdf: int
    page: int           # 1-based page number

    def request_id(self, attempt: int, part: int = 0) -> str:
        return f"{self.pdf}:{self.page}:{attempt}" + (f":{part}" if part else "")


class PageStatus(str, Enum):
    OK = "ok"
    BLANK = "blank"
    FAILED = "failed"


@dataclass(frozen=True)
class RenderedPage:
    """A page image ready for the engine, or why it could not be rendered."""
    key: PageKey
    image: Any = None   # PIL.Image.Image (RGB) when rendered
    blank: bool = False
    error: str | None = None
    seconds: float = 0.0
    blank_reason: str | None = None     # why it was called blank (ocr.blank.BlankReason)
    damage: str | None = None           # what is wrong with this page in the file (truncated, repaired)


@dataclass(frozen=True)
class PageRequest:
    """One thing to read: a page image, or a crop of it (part > 0), with how to read it."""
    key: PageKey
    image: Any
    prompt: str
    attempt: int = 0    # which pass asked for it (ocr.passes.ATTEMPT_*)
    vision: str = "gundam"      # DeepSeek-OCR resolution mode, a name in ocr.engines.vision_modes.MODES
    sampling: Any = None        # ocr.runaway.RetrySampling for a retry; None: the run's greedy settings
    part: int = 0               # 0: the whole page; n: its n-th ROI crop

    @property
    def request_id(self) -> str:
        return self.key.request_id(self.attempt, self.part)

    def answer(self, text: str, tokens: int, finish_reason: str | None, failure: Failure | None = None,
               detail: str | None = None) -> "EngineOutput":
        """The engine's answer to this request; with `failure`, its error reads "<failure>: <detail>"."""
        error = None if failure is None else failure.value + (f": {detail}" if detail else "")
        return EngineOutput(self.key, text, tokens, finish_reason, failure=failure, error=error,
                            attempt=self.attempt, part=self.part)


@dataclass(frozen=True)
class EngineOutput:
    key: PageKey
    text: str
    tokens: int
    finish_reason: str | None   # "stop", "length", ... as vLLM reports it
    failure: Failure | None = None
    error: str | None = None    # the failure's message (set with failure)
    attempt: int = 0
    part: int = 0

    @property
    def request_id(self) -> str:
        return self.key.request_id(self.attempt, self.part)


@dataclass(frozen=True)
class PageResult:
    """A finished page: what goes into the journal and the Markdown."""
    page: int
    status: PageStatus
    text: str
    tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None            # a failed page's message (its stub reads "[[Page N failed: ...]]")
    counters: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None      # why a failed page failed
    blank_reason: str | None = None     # why a blank page was called blank (ocr.blank.BlankReason)
    damage: str | None = None           # what the file lost on this page (truncated, repaired)

    def to_json(self) -> dict[str, Any]:
        return {"page": self.page, "status": self.status.value, "text": self.text, "tokens": self.tokens,
                "finish_reason": self.finish_reason, "error": self.error,
                "failure": self.failure.name if self.failure else None, "counters": self.counters,
                "stats": self.stats, "blank_reason": self.blank_reason, "damage": self.damage}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PageResult":
        return cls(page=int(d["page"]), status=PageStatus(d["status"]), text=d["text"],
                   tokens=int(d.get("tokens", 0)), finish_reason=d.get("finish_reason"),
                   error=d.get("error"), counters=dict(d.get("counters") or {}),
                   stats=dict(d.get("stats") or {}), failure=_failure(d.get("failure")),
                   blank_reason=d.get("blank_reason"), damage=d.get("damage"))


def _failure(name: str | None) -> Failure | None:
    """A journal line's failure kind; journals written before kinds existed (or by a newer runner) have none."""
    return Failure.__members__.get(name) if name else None
