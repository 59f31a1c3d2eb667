"""DeepSeek-OCR's vision modes (Gundam, Large, Base) per request in vLLM: the requests, and the vLLM general
plugin that makes non-Gundam requests work.

The plugin. vLLM 0.32 fixes DeepSeek-OCR to Gundam mode (1024 global view + 640 crops) through module constants
(`BASE_SIZE`, `IMAGE_SIZE`, `CROP_MODE` in `vllm/transformers_utils/processors/deepseek_ocr.py`, imported
by name into `vllm/model_executor/models/deepseek_ocr.py`). Per-request `mm_processor_kwargs` such as
`{"base_size": 1280, "image_size": 1280, "crop_mode": False}` already reach the HF processor, which then
produces a 1280x1280 view; only two things stop such a request from working:

1. the calling process counts the image's placeholder tokens with the constants, not from what the
   processor produced (a Large view gets Gundam's count, and the engine fails on the mismatch);
2. the engine-core worker batches the images of several requests; a 1280 view next to a 1024 one cannot
   be stacked, vLLM hands the model a list, and the model asserts a tensor. The empty crop tensors of
   crop-less views also differ in size (0x3x1280x1280 beside 0x3x640x640), and vLLM zero-pads such crop
   batches to the largest size, which would corrupt the Gundam crops beside them.

`install()` fixes both, in whichever process it runs:

- calling process: the placeholder count is computed from the tensors the processor produced (global
  view side, crop side and tile grid), so it always matches; an empty crop tensor is given Gundam's crop
  size so crop batches keep one shape;
- engine-core worker: a batch whose global views differ in size is encoded one image at a time;
  with vLLM's encoder CUDA graphs on (`compilation_config.cudagraph_mm_encoder`, sized for Gundam's 1024
  view and 640 crops), the graph manager replays a mixed batch's Gundam items and has the others encoded
  eagerly, and declines a batch of other views only (both model runners then encode it eagerly);
  `ocr/engines/vision_encoder.py` also takes a blocking copy out of vLLM's batch slicing.

Gundam requests are untouched (the same count, the same tensors). SAM and CLIP interpolate their position
embeddings to the input size (`get_abs_pos`, `get_rel_pos` in vllm/model_executor/models/deepencoder.py),
and the model's eager encoder derives every grid side from the tensor shapes, so 1280 inputs need no
change in the model.

The worker runs in the engine-core process; vLLM calls general plugins there (and in the calling process)
through the `vllm.general_plugins` entry point. Declare it in pyproject.toml

    [project.entry-points."vllm.general_plugins"]
    deepseek_ocr_vision_modes = "ocr.engines.vision_modes:register"

or call `activate(folder)` before building the engine, which writes an equivalent entry point into a
folder on sys.path (and PYTHONPATH, for spawned processes) at run time. `register()` is idempotent.

How the Large view is obtained (decision, evidence in the real-engine test tests/test_large_mode.py):
per request, on the engine that is already running. vLLM 0.32 builds the Large view when the request
carries `mm_processor_kwargs={"base_size": 1280, "image_size": 1280, "crop_mode": False}`; with the
plugin patch loaded in every vLLM process (entry point `vllm.general_plugins`, or
`activate()` at run time) the calling process counts that view's 421 placeholder tokens
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

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from . import vision_encoder

log = logging.getLogger(__name__)

PLUGIN_NAME = "deepseek_ocr_vision_modes"
ENTRY_POINT = "ocr.engines.vision_modes:register"
DIST_NAME = "ocr_deepseek_vision_modes"
PATCH_FLAG = "_ocr_vision_modes_patched"
# Set to "0" to load the plugin without patching anything (to compare against stock vLLM).
DISABLE_ENV = "OCR_VISION_MODES_PATCH"

PATCH_SIZE, DOWNSAMPLE = 16, 4          # DeepSeek-OCR's patch size and projector downsampling


def view_tokens(base_size: int, crop_size: int, tiles: tuple[int, int]) -> int:
    """Placeholder tokens of one image: global view (a newline per row), tiled crops if any, separator.

    The same count as vLLM's DeepseekOCRProcessingInfo.get_num_image_tokens and the processor's
    tokenize_with_images, but from sizes instead of module constants."""
    side = math.ceil(base_size // PATCH_SIZE / DOWNSAMPLE)
    tokens = side * (side + 1) + 1
    width_tiles, height_tiles = tiles
    if width_tiles > 1 or height_tiles > 1:
        local = math.ceil(crop_size // PATCH_SIZE / DOWNSAMPLE)
        tokens += (height_tiles * local) * (width_tiles * local + 1)
    return tokens


def register() -> None:
    """The `vllm.general_plugins` entry point: vLLM calls it in every process it starts."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        log.info("%s: loaded, patch disabled by %s=0", PLUGIN_NAME, DISABLE_ENV)
        return
    install()


def install() -> bool:
    """Patch vLLM's DeepSeek-OCR processor and model in this process; True if patched now."""
    from vllm.model_executor.models import deepseek_ocr as m

    missing = [name for name in NEEDED if not _has(m, name)]
    if missing:
        log.warning("%s: this vLLM's DeepSeek-OCR lacks %s; Large mode stays off", PLUGIN_NAME,
                    ", ".join(missing))
        return False
    proc_cls, model_cls = m.DeepseekOCRMultiModalProcessor, m.DeepseekOCRForCausalLM
    if getattr(proc_cls, PATCH_FLAG, False):
        return False
    proc_cls._get_prompt_updates = _make_prompt_updates(m)
    proc_cls._call_hf_processor = _make_call_hf_processor(proc_cls._call_hf_processor, m)
    model_cls.embed_multimodal = _make_embed_multimodal(model_cls.embed_multimodal)
    vision_encoder.install_eager(m, [name for name in vision_encoder.EAGER_NEEDED if not _has(m, name)])
    vision_encoder.install(m, _graph_manager(), is_gundam_batch, PATCH_FLAG,
                           [name for name in vision_encoder.NEEDED if not _has(m, name)])
    setattr(proc_cls, PATCH_FLAG, True)
    setattr(model_cls, PATCH_FLAG, True)
    log.info("%s: DeepSeek-OCR vision modes per request enabled (pid %d)", PLUGIN_NAME, os.getpid())
    return True


# What the patch relies on in vllm/model_executor/models/deepseek_ocr.py (vLLM 0.32).
NEEDED = ("DeepseekOCRMultiModalProcessor._get_prompt_updates", "DeepseekOCRMultiModalProcessor._call_hf_processor",
          "DeepseekOCRForCausalLM.embed_multimodal", "PromptReplacement", "ImageEmbeddingItems",
          "ImageProcessorItems", "BASE_SIZE", "IMAGE_SIZE", "CROP_MODE")


def _has(module: Any, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def is_installed() -> bool:
    """True once this process's DeepSeek-OCR classes carry the patch."""
    from vllm.model_executor.models import deepseek_ocr as m
    return bool(getattr(m.DeepseekOCRMultiModalProcessor, PATCH_FLAG, False))


# --- calling process: placeholder count and crop shape ----------------------------------------------

def _item_tokens(item: Any) -> int | None:
    """Placeholder count from one processed image (a MultiModalKwargsItem), or None if its data is gone."""
    try:
        pixel_values = item["pixel_values"].data
        crops = item["images_crop"].data
        tiles = item["images_spatial_crop"].data
    except (KeyError, TypeError, AttributeError):
        return None
    if pixel_values is None or tiles is None:
        return None
    crop_size = int(crops.shape[-1]) if crops is not None else 0
    return view_tokens(int(pixel_values.shape[-1]), crop_size, (int(tiles[0]), int(tiles[1])))


def _kwargs_tokens(kwargs: dict[str, Any], width: int, height: int, m: Any) -> int:
    """Placeholder count from the processor settings, mirroring tokenize_with_images (fallback)."""
    from vllm.transformers_utils.processors import deepseek_ocr as p

    base = int(kwargs.get("base_size", m.BASE_SIZE))
    size = int(kwargs.get("image_size", m.IMAGE_SIZE))
    crop = bool(kwargs.get("crop_mode", m.CROP_MODE))
    max_crops = int(kwargs.get("max_crops", p.MAX_CROPS))
    if (width <= size and height <= size) or not crop:
        tiles = (1, 1)
    else:
        tiles = tuple(p.count_tiles(width, height, max_num=max_crops, image_size=size))
    return view_tokens(base, size, tiles)   # type: ignore[arg-type]


def _make_prompt_updates(m: Any):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        hf_processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        image_token_id = hf_processor.image_token_id
        assert isinstance(image_token_id, int)
        merge = getattr(self.info.ctx, "get_merged_mm_kwargs", None)     # engine-level + request kwargs
        merged = merge(hf_processor_mm_kwargs) if merge else dict(hf_processor_mm_kwargs)
        try:
            produced = list(out_mm_kwargs.get("image", []) or [])
        except AttributeError:
            produced = []

        def replacement(item_idx: int):
            images = mm_items.get_items("image", (m.ImageEmbeddingItems, m.ImageProcessorItems))
            if isinstance(images, m.ImageEmbeddingItems):
                return [image_token_id] * images.get_feature_size(item_idx)
            count = _item_tokens(produced[item_idx]) if item_idx < len(produced) else None
            if count is None:
                size = images.get_image_size(item_idx)
                count = _kwargs_tokens(merged, size.width, size.height, m)
            return [image_token_id] * count

        return [m.PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]
    return _get_prompt_updates


def _make_call_hf_processor(original, m: Any):
    def _call_hf_processor(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        crops = out.get("images_crop") if hasattr(out, "get") else None
        size = m.IMAGE_SIZE
        if crops is not None and crops.shape[0] == 0 and tuple(crops.shape[-2:]) != (size, size):
            out["images_crop"] = crops.new_zeros((0, *crops.shape[1:-2], size, size))
        return out
    return _call_hf_processor


# --- engine-core worker: mixed view sizes in one encoder batch ---------------------------------------

def _make_embed_multimodal(original):
    def embed_multimodal(self, **kwargs):
        pixel_values = kwargs.get("pixel_values")
        if not isinstance(pixel_values, (list, tuple)):
            return original(self, **kwargs)
        import torch

        spatial = kwargs["images_spatial_crop"]
        crops = kwargs.get("images_crop")
        outputs, offset = [], 0
        for i, view in enumerate(pixel_values):
            tiles = spatial[i] if isinstance(spatial, torch.Tensor) else torch.as_tensor(spatial[i])
            tiles = tiles.reshape(-1)
            count = vision_encoder.crop_counts([tiles.tolist()])[0]
            if isinstance(crops, (list, tuple)):
                own = crops[i]
            else:
                own = crops[offset:offset + count]
            offset += count
            outputs.extend(original(self, pixel_values=view.reshape(1, *view.shape[-3:]), images_crop=own,
                                    images_spatial_crop=tiles.reshape(1, 2)))
        return outputs
    return embed_multimodal


def _graph_manager() -> Any:
    """vLLM's encoder CUDA graph manager class (vLLM 0.32), or None on a vLLM without one."""
    try:
        from vllm.v1.worker.encoder_cudagraph import EncoderCudaGraphManager
    except ImportError:
        return None
    return EncoderCudaGraphManager if callable(getattr(EncoderCudaGraphManager, "execute", None)) else None


def is_gundam_batch(mm_kwargs: dict[str, Any], base_size: int, crop_size: int) -> bool:
    """Every view of this encoder batch has the sizes the graphs were captured for: one stacked tensor of
    base_size global views, and crops (if any) of crop_size."""
    views, crops = mm_kwargs.get("pixel_values"), mm_kwargs.get("images_crop")
    if views is None or isinstance(views, (list, tuple)) or int(views.shape[-1]) != base_size:
        return False
    return crops is None or (not isinstance(crops, (list, tuple)) and int(crops.shape[-1]) == crop_size)


# --- registering the entry point at run time ----------------------------------------------------------

def activate(folder: Path) -> Path:
    """Make vLLM load this plugin in every process it starts, without installing the project.

    Writes `<folder>/ocr_deepseek_vision_modes-1.0.dist-info` with the entry point, puts `folder` and the
    project root on sys.path and PYTHONPATH (spawned engine processes read both), adds the plugin to
    VLLM_PLUGINS if that allow-list is set, and patches this process now (vLLM may have loaded its plugins
    here already). Call it before building the engine. Returns the dist-info folder."""
    folder = Path(folder).resolve()
    dist = folder / f"{DIST_NAME}-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: 1.0\n",
                                   encoding="utf-8")
    (dist / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{PLUGIN_NAME} = {ENTRY_POINT}\n",
                                           encoding="utf-8")
    root = str(Path(__file__).resolve().parents[2])
    for entry in (str(folder), root):
        if entry not in sys.path:
            sys.path.insert(0, entry)
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if entry not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([entry, *parts])
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        os.environ["VLLM_PLUGINS"] = ",".join(p for p in (allowed, PLUGIN_NAME) if p)
    import importlib
    importlib.invalidate_caches()
    install()
    return dist


# --- the modes and their requests -------------------------------------------------------------------

PAD_COLOR = (127, 127, 127)        # DeepSeek-OCR's image mean 0.5, as the processor pads


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
        activate(Path(state_dir) / "vllm-plugin")
        return is_installed()
    except ImportError:
        return False


def expected_large_tokens() -> int:
    """Placeholder tokens of any page in Large mode: (1280/16/4)^2 grid + one newline per row + separator."""
    side = math.ceil(LARGE.base_size // 16 / 4)
    return side * (side + 1) + 1
