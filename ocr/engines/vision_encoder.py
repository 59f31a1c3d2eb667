"""DeepSeek-OCR's vision encoder in vLLM 0.32 under encoder CUDA graphs: batch slicing without a host sync,
and the Gundam pages of a batch that holds a Large view replayed, the Large ones encoded eagerly. The eager
encoder's per-page steps without host syncs are here too, off by default: measured slower.

Why (measured, bench/results/2026-12-01-h200/README.md, session 7): at 256 pages in flight the engine core's
one thread spent 27% of its time on one line of `DeepseekOCRForCausalLM.select_encoder_cudagraph_items`,
`pixel_values[indices]`. Indexing a CUDA tensor with a Python list copies the index to the GPU with a
blocking copy, so the thread waits there for all the GPU work queued before it, and async scheduling's
overlap of CPU and GPU is lost on every step that encodes a page. Here the index goes up from pinned memory
without blocking (or is not needed at all when the batch is every item in order); the rest of vLLM's
method is unchanged (the tile grid, `images_spatial_crop`, is a CPU tensor there: `keep_on_cpu`).
Session 8, 784 pages at 256 in flight, both in one engine load, ours first (the order not reversed yet): 0.93
of vLLM's pages/s over the whole run, 1.02 in its steady part. No gain shown; it stays on until measured again.

The eager encoder (vLLM's default; Large views under graphs) waits twice per page the same way:
`pixel_values[[jdx]]` in `_pixel_values_to_embedding`, and `torch.sum(patches).item() == 0` in
`_encode_local_features`, which reads a sum back from the GPU only to learn whether the page has crops
(the graph path asks the tile grid, as this one now does: the crop count). Between the two waits the
thread queues one page's SAM and CLIP kernels, so the GPU runs a page only after its launches and the
thread launches the next only after the GPU is done. Both methods are vLLM's code with those two lines
changed: a slice for the list index, the crop count for the sum. Measured on the H200 (session 8, 784 pages,
128 in flight, both codes in one engine load, either order): the engine core did 0.80-0.86 of the pages/s
with these as with vLLM's, same texts, unexplained; so vLLM's stay unless OCR_ENCODER_EAGER_PATCH=1.
(vLLM's also drops the crops of a tiled page whose crop pixels sum to exactly 0, which ours does not.)

Mixed batches: a 1280 Large view cannot share the graphs captured for 1024 views, and `vision_modes` made the
graph manager decline such a batch, so every page in it was encoded eagerly (at 128 in flight with every 16th
page Large: the engine core 74% in the eager encoder). `execute` now splits the batch: its Gundam items go
through the graphs as one batch, the others through the model's eager encoder, and the outputs keep the
batch's order.
"""

from __future__ import annotations

import logging
import os
from itertools import accumulate
from typing import Any

log = logging.getLogger(__name__)

# What this module relies on in vLLM 0.32 (vllm/model_executor/models/deepseek_ocr.py and
# vllm/v1/worker/encoder_cudagraph.py).
NEEDED = ("DeepseekOCRForCausalLM.select_encoder_cudagraph_items",)
EAGER_NEEDED = ("DeepseekOCRForCausalLM._pixel_values_to_embedding", "DeepseekOCRForCausalLM._encode_local_features",
                "DeepseekOCRForCausalLM._encode_global_features", "DeepseekOCRForCausalLM._assemble_patch_grid")
# "0" keeps vLLM's own graph-batch slicing; "1" puts in our eager per-page steps (off: measured slower).
SLICE_ENV = "OCR_ENCODER_SLICE_PATCH"
EAGER_ENV = "OCR_ENCODER_EAGER_PATCH"
# Switched at run time by set_active (bench.py's core-vllmenc run: vLLM's code and ours in one engine load,
# free of the ±10% load-to-load noise); vLLM's methods run while it is False. The mixed-batch split in
# make_execute is not switched: the graphs are captured for Gundam views only.
_active = [True]
_original: dict[str, Any] = {}


def set_active(worker: Any = None, on: bool = True) -> bool:
    """Our slicing and eager steps on (or vLLM's own, off) in this process; True if they are installed
    here. The signature of a `collective_rpc` callable: vLLM passes the worker first."""
    _active[0] = bool(on)
    return bool(_original)


def _device_index(indices: list[int], device: Any):
    import torch
    if getattr(device, "type", "cpu") == "cpu":
        return torch.tensor(indices, dtype=torch.long)
    try:
        from vllm.utils.torch_utils import async_tensor_h2d
    except ImportError:             # another vLLM layout: pin here
        return torch.tensor(indices, dtype=torch.long).pin_memory().to(device, non_blocking=True)
    return async_tensor_h2d(indices, device, torch.long)    # pinned when it can be: no wait for the queue


# --- the eager encoder, a page at a time ---------------------------------------------------------------

def encode_local_features(self, patches, crop_shape):
    """vLLM 0.32's `_encode_local_features`; "no crops" is told by the crop count, not a sum read back."""
    import torch
    if not _active[0]:
        return _original["_encode_local_features"](self, patches, crop_shape)
    if patches.shape[0] == 0:
        return None
    local_features_1 = self.sam_model(patches)
    local_features_2 = self.vision_model(patches, local_features_1)
    features = torch.cat((local_features_2[:, 1:], local_features_1.flatten(2).permute(0, 2, 1)), dim=-1)
    features = self.projector(features)
    return self._assemble_patch_grid(features, crop_shape)


def pixel_values_to_embedding(self, pixel_values, images_crop, images_spatial_crop):
    """vLLM 0.32's `_pixel_values_to_embedding`; each page's view is a slice, not a list index."""
    import torch
    if not _active[0]:
        return _original["_pixel_values_to_embedding"](self, pixel_values, images_crop, images_spatial_crop)
    images_in_this_batch = []
    is_tiled = (images_spatial_crop[:, 0] > 1) | (images_spatial_crop[:, 1] > 1)
    patches_per_image = torch.where(is_tiled, images_spatial_crop.prod(dim=-1), 0)
    images_crop = images_crop.split(patches_per_image.tolist())
    for jdx in range(images_spatial_crop.size(0)):
        patches = images_crop[jdx]
        crop_shape = images_spatial_crop[jdx]
        global_features = self._encode_global_features(pixel_values[jdx:jdx + 1])
        local_features = self._encode_local_features(patches, crop_shape)
        parts = [global_features, self.view_seperator[None, :]]
        if local_features is not None:
            parts.insert(0, local_features)
        images_in_this_batch.append(torch.cat(parts, dim=0))
    return images_in_this_batch


def crop_counts(tiles: list) -> list[int]:
    """Crops per image from its (width, height) tile grid: none for an untiled (1, 1) view."""
    return [int(w) * int(h) if (w > 1 or h > 1) else 0 for w, h in tiles]


def crop_starts(counts: list[int]) -> list[int]:
    """Where each image's crops begin in the batch's one crop tensor."""
    return [0, *accumulate(counts[:-1])] if counts else []


def select_encoder_cudagraph_items(self, mm_kwargs: dict[str, Any], indices: list[int]) -> dict[str, Any]:
    """vLLM 0.32's `select_encoder_cudagraph_items`, with the blocking list index taken out."""
    import torch
    if not _active[0]:
        return _original["select_encoder_cudagraph_items"](self, mm_kwargs, indices)
    pixel_values = mm_kwargs["pixel_values"]
    images_crop = mm_kwargs["images_crop"]
    grid = mm_kwargs["images_spatial_crop"]
    if len(indices) == 0:
        return {"pixel_values": pixel_values[:0], "images_crop": images_crop[:0], "images_spatial_crop": grid[:0]}
    counts = crop_counts(grid.tolist() if isinstance(grid, torch.Tensor) else list(grid))
    starts = crop_starts(counts)
    indices = list(indices)
    if indices == list(range(len(counts))) and sum(counts) == int(images_crop.shape[0]):
        return {"pixel_values": pixel_values, "images_crop": images_crop, "images_spatial_crop": grid}
    selected_pv = pixel_values.index_select(0, _device_index(indices, pixel_values.device))
    selected_ic = torch.cat([images_crop[starts[i]:starts[i] + counts[i]] for i in indices])
    selected_sp = grid.index_select(0, _device_index(indices, grid.device)) \
        if isinstance(grid, torch.Tensor) else [grid[i] for i in indices]
    return {"pixel_values": selected_pv, "images_crop": selected_ic, "images_spatial_crop": selected_sp}


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
    grid = grid.reshape(-1, 2)
    tiles = grid.tolist()
    if len(tiles) != len(views):
        return None
    counts = crop_counts(tiles)
    starts = crop_starts(counts)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, view in enumerate(views):
        groups.setdefault(tuple(int(s) for s in view.shape[-3:]), []).append(i)
    gundam_crops = crops is None or int(crops.shape[-1]) == crop_size
    parts = []
    for shape, idx in groups.items():
        part: dict[str, Any] = {"pixel_values": torch.stack([views[i].reshape(shape) for i in idx]),
                                "images_spatial_crop": grid[idx]}
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
                self.graph_misses = getattr(self, "graph_misses", 0) + len(idx)
            for i, tensor in zip(idx, encoded):
                out[i] = tensor
        return out
    return execute


def install_eager(m: Any, missing: list[str]) -> bool:
    """Patch the eager encoder's per-page steps when OCR_ENCODER_EAGER_PATCH=1; False (vLLM's own kept,
    with a warning) if `m` lacks any of EAGER_NEEDED (`missing`)."""
    if os.environ.get(EAGER_ENV, "0") != "1":
        return False
    if missing:
        log.warning("vision encoder: this vLLM's DeepSeek-OCR lacks %s; its eager encoder stays as it is",
                    ", ".join(missing))
        return False
    _replace(m.DeepseekOCRForCausalLM, "_pixel_values_to_embedding", pixel_values_to_embedding)
    _replace(m.DeepseekOCRForCausalLM, "_encode_local_features", encode_local_features)
    return True


def _replace(cls: Any, name: str, new: Any) -> None:
    """cls.name = new, vLLM's method kept as new.__wrapped__ (the tests compare against it)."""
    if getattr(cls, name) is not new:
        new.__wrapped__ = _original[name] = getattr(cls, name)
        setattr(cls, name, new)


def install(m: Any, graphs: Any, is_gundam_batch, flag: str, missing: list[str]) -> bool:
    """Patch the graph manager's execute and the model's batch slicing; False on a vLLM without encoder
    graphs (`missing`: the names of NEEDED the caller did not find in `m`; the slicing is then vLLM's)."""
    if graphs is None or getattr(graphs, flag, False):
        return False
    if missing:
        log.warning("encoder graphs: this vLLM's DeepSeek-OCR lacks %s; batches are sliced as vLLM does",
                    ", ".join(missing))
    elif os.environ.get(SLICE_ENV, "1") != "0":
        _replace(m.DeepseekOCRForCausalLM, "select_encoder_cudagraph_items", select_encoder_cudagraph_items)
    execute = make_execute(graphs.execute, m, is_gundam_batch)
    execute.__wrapped__ = graphs.execute
    graphs.execute = execute
    setattr(graphs, flag, True)
    return True

