"""DeepSeek-OCR under vLLM 0.32's encoder CUDA graphs: no host sync when a batch is sliced, and the Gundam
pages of a batch that holds a Large view still replayed, the Large ones encoded eagerly beside them.

Why (measured, bench/results/2026-12-01-h200/README.md, session 7): at 256 pages in flight the engine core's
one thread spent 27% of its time on one line of `DeepseekOCRForCausalLM.select_encoder_cudagraph_items`,
`pixel_values[indices]`. Indexing a CUDA tensor with a Python list copies the index to the GPU with a
blocking copy, so the thread waits there for all the GPU work queued before it, and async scheduling's
overlap of CPU and GPU is lost on every step that encodes a page. Here the index goes up from pinned memory
without blocking (or is not needed at all when the batch is every item in order); the rest of vLLM's
method is unchanged (the tile grid, `images_spatial_crop`, is a CPU tensor there: `keep_on_cpu`).

Mixed batches: a 1280 Large view cannot share the graphs captured for 1024 views, and `vision_modes` made the
graph manager decline such a batch, so every page in it was encoded eagerly (at 128 in flight with every 16th
page Large: the engine core 74% in the eager encoder). `execute` now splits the batch: its Gundam items go
through the graphs as one batch, the others through the model's eager encoder, and the outputs keep the
batch's order.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# What this module relies on in vLLM 0.32 (vllm/model_executor/models/deepseek_ocr.py and
# vllm/v1/worker/encoder_cudagraph.py).
NEEDED = ("DeepseekOCRForCausalLM.select_encoder_cudagraph_items",)
# Set to "0" to keep vLLM's own batch slicing (to measure the blocking copy against this one).
SLICE_ENV = "OCR_ENCODER_SLICE_PATCH"


def _device_index(indices: list[int], device: Any):
    import torch
    index = torch.tensor(indices, dtype=torch.long)
    if getattr(device, "type", "cpu") == "cpu":
        return index
    return index.pin_memory().to(device, non_blocking=True)    # no wait for the GPU's queue


def crop_counts(tiles: list) -> list[int]:
    """Crops per image from its (width, height) tile grid: none for an untiled (1, 1) view."""
    return [int(w) * int(h) if (w > 1 or h > 1) else 0 for w, h in tiles]


def make_select(m: Any):
    """`select_encoder_cudagraph_items` as in vLLM 0.32, with the blocking list index taken out."""
    def select_encoder_cudagraph_items(self, mm_kwargs: dict[str, Any], indices: list[int]) -> dict[str, Any]:
        import torch
        pixel_values = mm_kwargs["pixel_values"]
        images_crop = mm_kwargs["images_crop"]
        grid = mm_kwargs["images_spatial_crop"]
        if len(indices) == 0:
            return {"pixel_values": pixel_values[:0], "images_crop": images_crop[:0],
                    "images_spatial_crop": grid[:0]}
        counts = crop_counts(grid.tolist() if isinstance(grid, torch.Tensor) else list(grid))
        starts = [0]
        for count in counts[:-1]:
            starts.append(starts[-1] + count)
        indices = list(indices)
        if indices == list(range(len(counts))) and sum(counts) == int(images_crop.shape[0]):
            return {"pixel_values": pixel_values, "images_crop": images_crop, "images_spatial_crop": grid}
        selected_pv = pixel_values.index_select(0, _device_index(indices, pixel_values.device))
        selected_ic = torch.cat([images_crop[starts[i]:starts[i] + counts[i]] for i in indices])
        selected_sp = grid.index_select(0, _device_index(indices, grid.device)) \
            if isinstance(grid, torch.Tensor) else [grid[i] for i in indices]
        return {"pixel_values": selected_pv, "images_crop": selected_ic, "images_spatial_crop": selected_sp}
    return select_encoder_cudagraph_items


# --- mixed view sizes: the Gundam items through the graphs, the others eagerly ---------------------------

def split_batch(mm_kwargs: dict[str, Any], base_size: int, crop_size: int) -> list[tuple[bool, list[int], dict]] | None:
    """An encoder batch whose global views differ in size (vLLM hands them over as a list) as batches of
    one view size each, stacked: (replayable, indices, batch), Gundam first. None when it cannot be split
    (crops or grids not one tensor each)."""
    import torch
    views, crops, grid = mm_kwargs.get("pixel_values"), mm_kwargs.get("images_crop"), \
        mm_kwargs.get("images_spatial_crop")
    if not isinstance(views, (list, tuple)) or not isinstance(grid, torch.Tensor) or \
            (crops is not None and not isinstance(crops, torch.Tensor)):
        return None
    tiles = grid.reshape(-1, 2).tolist()
    if len(tiles) != len(views):
        return None
    counts = crop_counts(tiles)
    starts = [0]
    for count in counts[:-1]:
        starts.append(starts[-1] + count)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, view in enumerate(views):
        groups.setdefault(tuple(int(s) for s in view.shape[-3:]), []).append(i)
    gundam_crops = crops is None or int(crops.shape[-1]) == crop_size
    parts = []
    for shape, idx in groups.items():
        part: dict[str, Any] = {"pixel_values": torch.stack([views[i].reshape(shape) for i in idx]),
                                "images_spatial_crop": grid.reshape(-1, 2)[idx]}
        if crops is not None:
            part["images_crop"] = torch.cat([crops[starts[i]:starts[i] + counts[i]] for i in idx])
        parts.append((gundam_crops and shape[-2:] == (base_size, base_size), idx, part))
    return sorted(parts, key=lambda p: not p[0])


def make_execute(original, m: Any, is_gundam_batch):
    """EncoderCudaGraphManager.execute: Gundam batches replayed as before; a batch of other views declined
    (None: the model runner encodes it eagerly); a mixed batch split by view size, its Gundam part
    replayed, the rest encoded eagerly a view size at a time."""
    def execute(self, mm_kwargs):
        if not isinstance(self.model, m.DeepseekOCRForCausalLM) or \
                is_gundam_batch(mm_kwargs, m.BASE_SIZE, m.IMAGE_SIZE):
            return original(self, mm_kwargs)
        parts = split_batch(mm_kwargs, m.BASE_SIZE, m.IMAGE_SIZE)
        if parts is None or not parts[0][0]:
            return None               # nothing to replay (no Gundam view), or not splittable: all eagerly
        out: list[Any] = [None] * len(mm_kwargs["pixel_values"])
        for replayable, idx, part in parts:
            encoded = original(self, part) if replayable else None
            if encoded is None:
                encoded = self.model.embed_multimodal(**part)
            for i, tensor in zip(idx, encoded):
                out[i] = tensor
        return out
    return execute


def install(m: Any, graphs: Any, is_gundam_batch, flag: str, missing: list[str]) -> bool:
    """Patch the graph manager's execute and the model's batch slicing; False on a vLLM without encoder
    graphs (`missing`: the names of NEEDED the caller did not find in `m`; the slicing is then vLLM's)."""
    if graphs is None or getattr(graphs, flag, False):
        return False
    if missing:
        log.warning("encoder graphs: this vLLM's DeepSeek-OCR lacks %s; batches are sliced as vLLM does",
                    ", ".join(missing))
    elif os.environ.get(SLICE_ENV, "1") != "0":
        select = make_select(m)
        select.__wrapped__ = m.DeepseekOCRForCausalLM.select_encoder_cudagraph_items     # vLLM's, for tests
        m.DeepseekOCRForCausalLM.select_encoder_cudagraph_items = select
    execute = make_execute(graphs.execute, m, is_gundam_batch)
    execute.__wrapped__ = graphs.execute
    graphs.execute = execute
    setattr(graphs, flag, True)
    return True

