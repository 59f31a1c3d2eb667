"""Large-mode retry: grounded pages that lack required layout labels (default `table`) are read again in
DeepSeek-OCR's 1280 "Large" vision mode (base_size 1280, image_size 1280, no crops). This module decides;
how the engine reads a Large request (one more request in the running engine) is in
ocr/engines/vision_modes.py.
"""

from __future__ import annotations

from typing import Iterable

from .grounding import parse_regions

DEFAULT_REQUIRED = ("table",)
# Counter names (PageResult.counters; the run report sums them).
COUNTERS = (
    "large_wanted",                # a grounded page lacked a required label
    "large_retried",               # ... and was read again in Large mode
    "large_capped",                # ... but the run's --retry-large-cap was used up
    "large_improved",              # the Large answer was kept (it found a missing label)
    "large_failed",                # the Large request came back with an engine error
)


# --- deciding ---------------------------------------------------------------------------------------

def parse_required(value: str | Iterable[str]) -> tuple[str, ...]:
    """`--required-labels table,image` -> ("table", "image"); blanks dropped, order kept, no repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        label = item.strip().lower()
        if label and label not in out:
            out.append(label)
    return tuple(out)


def found_labels(text: str) -> set[str]:
    """Layout labels of a grounded page's blocks (a block counts even if its boxes were cut off)."""
    return {r.label.strip().lower() for r in parse_regions(text) if r.label.strip()}


def missing_labels(text: str, required: Iterable[str]) -> set[str]:
    """The required labels that no grounding block of the page carries."""
    return set(parse_required(required)) - found_labels(text)


def keep_large(first_text: str, large_text: str, required: Iterable[str], *,
               large_finish_reason: str | None = "stop", max_tokens: int = 0) -> bool:
    """Keep the Large answer only when it carries more of the required labels than the first answer and
    is not a runaway itself (loop, empty, cut at --max-tokens); otherwise the Gundam answer (its crops
    read small print better) stays."""
    from .runaway import verdict

    if verdict(large_text, large_finish_reason, max_tokens) is not None:
        return False
    return len(missing_labels(large_text, required)) < len(missing_labels(first_text, required))


def counters(wanted: bool, retried: bool, kept_large: bool) -> dict[str, int]:
    """The page's Large-retry counters (names in COUNTERS), non-zero only."""
    out: dict[str, int] = {}
    if wanted:
        out["large_wanted"] = 1
        out["large_retried" if retried else "large_capped"] = 1
        if retried and kept_large:
            out["large_improved"] = 1
    return out
