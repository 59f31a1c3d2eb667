"""Second chances for a page, in order: one retry of a runaway answer (ocr.runaway), a Large-mode re-read of a
grounded page that lacks required labels (ocr.large_mode), and the ROI re-read of its regions (ocr.roi).

A PageWork follows one page through them: each engine answer goes to `on_output`, which returns either the
next requests to send or the page's Final. No engine, file or report access here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from . import large_mode, roi, runaway
from .config import Config
from .engines.base import EngineCaps, Failure
from .engines.vision_modes import LARGE
from .records import EngineOutput, PageRequest

ATTEMPT_FIRST = 0       # the page as configured
ATTEMPT_AGAIN = 1       # the same request once more after an engine error
ATTEMPT_RUNAWAY = 2     # the runaway retry: other sampling, or Large mode for an empty answer
ATTEMPT_LARGE = 3       # the Large-mode re-read of a grounded page without its required labels
ATTEMPT_ROI = 4         # the crops of the ROI pass (part 1..n)


@dataclass(frozen=True)
class PassSettings:
    """The passes this run does, from its Config and its engine's caps (settings_for)."""
    mode: str
    max_tokens: int
    ngram_size: int
    ngram_window: int
    runaway_retry: bool
    retry_sampling: bool                  # the engine honours RetrySampling (vLLM does, transformers not)
    required_labels: tuple[str, ...]
    large: bool                           # the engine reads Large-mode requests (ocr.engines.vision_modes)
    roi_pass: bool
    roi_max_crops: int

    @property
    def grounded(self) -> bool:
        return self.mode == "grounded"


class LargeCap:
    """At most `cap` Large-mode re-reads in this run (per worker); 0 turns the pass off."""

    def __init__(self, cap: int):
        self.cap, self.used = max(0, cap), 0

    def take(self) -> bool:
        if self.used >= self.cap:
            return False
        self.used += 1
        return True


@dataclass(frozen=True)
class Final:
    """How a page's passes ended: the raw text to finish, or the reason it failed."""
    text: str
    tokens: int
    finish_reason: str | None
    counters: dict[str, int] = field(default_factory=dict)
    failure: Failure | None = None
    error: str | None = None              # the failure's message
    crops: tuple[roi.Crop, ...] = ()      # the ROI crops that were read again (for --save-crops)


class PageWork:
    """One page on its way through the passes."""

    def __init__(self, request: PageRequest, settings: PassSettings, cap: LargeCap):
        self.request, self.settings, self.cap = request, settings, cap
        self.tokens = 0
        self.counters: Counter = Counter()
        self.first_verdict: runaway.Runaway | None = None
        self.first: runaway.Attempt | None = None
        self.kept: runaway.Attempt | None = None
        self.retry_vision = request.vision
        self.kept_vision = request.vision     # the vision mode of the answer kept so far
        self.crops: list[roi.Crop] = []
        self.answers: dict[int, str | None] = {}

    @staticmethod
    def needs_judging(out: EngineOutput) -> bool:
        """An answer whose runaway verdict decides what comes next: judged beside the control loop
        (`runaway.judge` in ocr.postwork), then passed in as on_output's `judged`."""
        return not out.failure and out.attempt in (ATTEMPT_FIRST, ATTEMPT_AGAIN, ATTEMPT_RUNAWAY)

    def on_output(self, out: EngineOutput, judged: runaway.Judged | None = None) -> list[PageRequest] | Final:
        """The next requests for this page, or how it ended. `judged`: `runaway.judge` of out, when done
        already (judged here when not)."""
        self.tokens += out.tokens
        if out.attempt in (ATTEMPT_FIRST, ATTEMPT_AGAIN):
            return self._on_first(out, judged)
        if out.attempt == ATTEMPT_RUNAWAY:
            return self._on_runaway_retry(out, judged)
        if out.attempt == ATTEMPT_LARGE:
            return self._on_large(out)
        return self._on_crop(out)

    # --- runaway ------------------------------------------------------------------------------------
    def _on_first(self, out: EngineOutput, judged: runaway.Judged | None) -> list[PageRequest] | Final:
        if out.failure:
            if out.attempt == ATTEMPT_FIRST and out.failure.retryable:
                return [replace(self.request, attempt=ATTEMPT_AGAIN)]
            return self._fail(out.failure, out.error, out.finish_reason)
        s = self.settings
        judged = judged or runaway.judge(out.text, out.finish_reason, s.max_tokens)
        self.first = runaway.Attempt(out.text, out.finish_reason, out.tokens, judged)
        self.first_verdict = v = judged.verdict
        if v and s.runaway_retry:
            retry = self._runaway_request(v)
            if retry is not None:
                return [retry]
        return self._read(self.first, retried=False)

    def _runaway_request(self, v: runaway.Runaway) -> PageRequest | None:
        """The retry of a runaway answer, or None when the engine could only repeat the first reading."""
        s = self.settings
        vision = runaway.retry_vision(v, large_available=s.large)
        sampling = runaway.retry_sampling(v, ngram_size=s.ngram_size, ngram_window=s.ngram_window,
                                          large_available=s.large)
        sampling = sampling if sampling.temperature > 0 and s.retry_sampling else None
        if vision == self.request.vision and sampling is None:
            return None
        self.retry_vision = vision
        return replace(self.request, attempt=ATTEMPT_RUNAWAY, vision=vision, sampling=sampling)

    def _on_runaway_retry(self, out: EngineOutput, judged: runaway.Judged | None) -> list[PageRequest] | Final:
        assert self.first is not None
        kept = self.first
        if not out.failure:
            judged = judged or runaway.judge(out.text, out.finish_reason, self.settings.max_tokens)
            kept = runaway.better(self.first, runaway.Attempt(out.text, out.finish_reason, out.tokens, judged))
            if kept is not self.first:
                self.kept_vision = self.retry_vision
        return self._read(kept, retried=True)

    def _read(self, kept: runaway.Attempt, retried: bool) -> list[PageRequest] | Final:
        """The page's answer is settled: count the runaway outcome, then the grounded passes."""
        assert kept.judged is not None
        final_verdict = self.first_verdict and kept.judged.verdict
        self.counters.update(runaway.counters(self.first_verdict, retried, kept is not self.first, final_verdict))
        self.kept = kept
        if kept.judged.empty:                    # markup or tags alone count as no text too
            return self._fail(Failure.NO_TEXT, None, kept.finish_reason)
        return self._large()

    # --- Large mode ---------------------------------------------------------------------------------
    def _large(self) -> list[PageRequest] | Final:
        s = self.settings
        assert self.kept is not None
        if not (s.grounded and s.required_labels and s.large and self.cap.cap > 0
                and self.kept_vision != LARGE.name          # read in Large mode already
                and large_mode.missing_labels(self.kept.text, s.required_labels)):
            return self._roi()
        retried = self.cap.take()
        self.counters.update(large_mode.counters(True, retried, False))
        if not retried:
            return self._roi()
        return [replace(self.request, attempt=ATTEMPT_LARGE, vision=LARGE.name, sampling=None)]

    def _on_large(self, out: EngineOutput) -> list[PageRequest] | Final:
        assert self.kept is not None
        s = self.settings
        if out.failure:
            self.counters["large_failed"] += 1
        elif large_mode.keep_large(self.kept.text, out.text, s.required_labels,
                                   large_finish_reason=out.finish_reason, max_tokens=s.max_tokens):
            self.kept = runaway.Attempt(out.text, out.finish_reason, out.tokens)
            self.kept_vision = LARGE.name
            self.counters["large_improved"] += 1
        return self._roi()

    # --- ROI ----------------------------------------------------------------------------------------
    def _roi(self) -> list[PageRequest] | Final:
        assert self.kept is not None
        s = self.settings
        if not (s.grounded and s.roi_pass):
            return self._done()
        self.crops = roi.plan_crops(self.kept.text, self.request.image, max_crops=s.roi_max_crops)
        reread = [c for c in self.crops if c.reread]
        if not reread:
            self.counters.update(roi.counters([(c, None) for c in self.crops]))
            return self._done()
        return [PageRequest(self.request.key, c.image, c.prompt or roi.MARKDOWN, attempt=ATTEMPT_ROI, part=c.order + 1)
                for c in reread]

    def _on_crop(self, out: EngineOutput) -> list[PageRequest] | Final:
        # an error, or an answer cut at --max-tokens, leaves the region's original text
        self.answers[out.part - 1] = None if out.failure or out.finish_reason == "length" else out.text
        if len(self.answers) < sum(c.reread for c in self.crops):
            return []
        pairs = [(c, self.answers.get(c.order)) for c in self.crops]
        self.counters.update(roi.counters(pairs))
        assert self.kept is not None
        return Final(roi.merge(pairs), self.tokens, self.kept.finish_reason, self._counts(),
                     crops=tuple(c for c in self.crops if c.reread))

    # --- ends ---------------------------------------------------------------------------------------
    def _done(self) -> Final:
        assert self.kept is not None
        return Final(self.kept.text, self.tokens, self.kept.finish_reason, self._counts())

    def _fail(self, failure: Failure, error: str | None, finish_reason: str | None) -> Final:
        return Final("", self.tokens, finish_reason, self._counts(), failure=failure, error=error or failure.value)

    def _counts(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.counters.items()) if v}


def settings_for(cfg: Config, caps: EngineCaps) -> PassSettings:
    """The passes this run can do with this engine (its vision modes, guard and sampling support)."""
    size, window = caps.ngram
    return PassSettings(mode=cfg.mode, max_tokens=cfg.max_tokens, ngram_size=size, ngram_window=window,
                        runaway_retry=cfg.runaway_retry == "on", retry_sampling=caps.retry_sampling,
                        required_labels=large_mode.parse_required(cfg.required_labels),
                        large=LARGE.name in caps.vision_modes,
                        roi_pass=cfg.roi_pass, roi_max_crops=cfg.roi_max_crops)
