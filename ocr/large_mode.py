"""Large-mode retry: grounded pages that lack required layout labels (default `table`) are read again in
DeepSeek-OCR's 1280 "Large" vision mode (base_size 1280, image_size 1280, no crops).

How the Large view is obtained (decision, evidence in the real-engine test tests/test_large_mode.py):
per request, on the engine that is already running. vLLM 0.32 builds the Large view when the request
carries `mm_processor_kwargs={"base_size": 1280, "image_size": 1280, "crop_mode": False}`; with the
`ocr.vllm_plugin` patch loaded in every vLLM process (entry point `vllm.general_plugins`, or
`vllm_plugin.activate()` at run time) the calling process counts that view's 421 placeholder tokens
(20 x 21 grid rows with newlines + 1 separator) instead of Gundam's, and the engine-core worker encodes
a batch of 1280 and 1024 views one image at a time. So no second engine is built, loaded or given GPU
memory: a Large request is one more request in the continuous batch.

Rejected: patching the module constants (BASE_SIZE, IMAGE_SIZE, CROP_MODE) in every process through the
plugin. It works for an engine alone in its process, but the input processor runs in the calling process,
whose constants then serve every engine there: the Gundam engine and a Large engine cannot live in one
runner. (It would also need a second engine with its own weights and KV cache: on a GPU already given
0.9 of its memory to the first one there is no room.)

Two details of the Large view, both in `engine_prompt`:
- vLLM's crop-less path stretches the page to 1280x1280; DeepSeek-OCR's own (HF) code pads it to a square
  in the mean grey and keeps the aspect ratio. `prepare_image` pads first, so vLLM's resize only scales.
  Boxes stay in the model's 0-999 space of the page (as with HF Large mode).
- Gundam requests are sent exactly as before (no kwargs, no padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, ImageOps

from .grounding import parse_regions

DEFAULT_REQUIRED = ("table",)
PAD_COLOR = (127, 127, 127)        # DeepSeek-OCR's image mean 0.5, as the processor pads
# Counter names (PageResult.counters; the run report sums them).
COUNTERS = (
    "large_wanted",                # a grounded page lacked a required label
    "large_retried",               # ... and was read again in Large mode
    "large_capped",                # ... but the run's --retry-large-cap was used up
    "large_improved",              # the Large answer was kept (it found a missing label)
    "large_failed",                # the Large request came back with an engine error
)


@dataclass(frozen=True)
class VisionMode:
    """One of DeepSeek-OCR's resolution modes."""
    name: str
    base_size: int                 # global view side
    image_size: int                # crop side (crop_mode) or resize side
    crop_mode: bool

    def processor_kwargs(self) -> dict[str, Any]:
        """Per-request mm_processor_kwargs; empty for Gundam, vLLM's built-in mode."""
        if self == GUNDAM:
            return {}
        return {"base_size": self.base_size, "image_size": self.image_size, "crop_mode": self.crop_mode}


GUNDAM = VisionMode("gundam", 1024, 640, True)
LARGE = VisionMode("large", 1280, 1280, False)
BASE = VisionMode("base", 1024, 1024, False)
MODES = {m.name: m for m in (GUNDAM, LARGE, BASE)}


def image_tokens(mode: VisionMode, width: int, height: int) -> int:
    """Placeholder tokens vLLM gives one page image in this mode (with the plugin for non-Gundam modes)."""
    from .vllm_plugin import view_tokens

    tiles = (1, 1)
    if mode.crop_mode and (width > mode.image_size or height > mode.image_size):
        from vllm.transformers_utils.processors.deepseek_ocr import count_tiles
        tiles = tuple(count_tiles(width, height, image_size=mode.image_size))
    return view_tokens(mode.base_size, mode.image_size, tiles)   # type: ignore[arg-type]


def prepare_image(image: Image.Image, mode: VisionMode) -> Image.Image:
    """The image to send: padded to a square for crop-less modes (HF parity), unchanged for Gundam."""
    if mode.crop_mode or image.width == image.height:
        return image
    side = max(image.size)
    return ImageOps.pad(image.convert("RGB"), (side, side), color=PAD_COLOR)


def engine_prompt(prompt: str, image: Image.Image, mode: VisionMode = GUNDAM) -> dict[str, Any]:
    """The vLLM prompt dict for one page in a vision mode (what VllmEngine.submit passes to add_request)."""
    out: dict[str, Any] = {"prompt": prompt, "multi_modal_data": {"image": prepare_image(image, mode)}}
    kwargs = mode.processor_kwargs()
    if kwargs:
        out["mm_processor_kwargs"] = kwargs
    return out


def enable(state_dir: Path) -> bool:
    """Make Large requests possible in the engine about to be built: register the vLLM plugin (before the
    engine starts, so its processes load it) and patch this process. False when vLLM is missing or its
    DeepSeek-OCR code is not the one the patch knows (then send no Large requests)."""
    try:
        from . import vllm_plugin
        vllm_plugin.activate(Path(state_dir) / "vllm-plugin")
        return vllm_plugin.is_installed()
    except ImportError:
        return False


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


def expected_large_tokens() -> int:
    """Placeholder tokens of any page in Large mode: (1280/16/4)^2 grid + one newline per row + separator."""
    side = math.ceil(LARGE.base_size // 16 / 4)
    return side * (side + 1) + 1
