"""The defaults that depend on the GPU: pages in flight and the vision encoder's CUDA graphs, settled once from
the GPU's memory (read through vLLM's platform, NVML, before CUDA starts) into the run's frozen Config."""

from __future__ import annotations

import dataclasses
import logging

from .config import SMALL_GPU_BATCH, Config

log = logging.getLogger(__name__)

# Measured on the H200 (NOTES.md, sessions 8-9, 784 pages): 256 pages in flight with encoder graphs made the
# runner 18.42 pages/s with the GPU busy 83%, the old defaults (128, eager encoder) 8.21 and 40%. The graphs
# took ~6% of its KV cache and the 256 pages ~10 GB of the host's RAM; on a 24 GB L4 (the reference box, 96 GB
# RAM for 4 workers) neither is measured, so below this size the defaults stay as they were.
BIG_GPU_GIB = 64
BIG_GPU_BATCH = 256


def gpu_memory_gib() -> float | None:
    """Total memory of the first GPU this process sees (CUDA_VISIBLE_DEVICES honoured), None without one."""
    try:
        from vllm.platforms import current_platform
        if not current_platform.is_cuda():
            return None
        return current_platform.get_device_total_memory(0) / 2**30
    except Exception as exc:       # no NVML, no driver, an older vLLM: keep the small-GPU defaults
        log.debug("GPU memory unknown (%s): small-GPU defaults", exc)
        return None


def settle(cfg: Config, memory_gib: float | None = None, probe: bool = True) -> Config:
    """cfg with --batch-pages and --mm-encoder-cudagraph decided where the user left them unset (None):
    256 and on for a GPU of BIG_GPU_GIB or more, 128 and off otherwise (or without a GPU)."""
    if cfg.batch_pages is not None and cfg.mm_encoder_cudagraph is not None:
        return cfg
    gib = memory_gib if memory_gib is not None or not probe else gpu_memory_gib()
    big = gib is not None and gib >= BIG_GPU_GIB
    batch = cfg.batch_pages if cfg.batch_pages is not None else BIG_GPU_BATCH if big else SMALL_GPU_BATCH
    graphs = cfg.mm_encoder_cudagraph if cfg.mm_encoder_cudagraph is not None else big
    settled = dataclasses.replace(cfg, batch_pages=batch, mm_encoder_cudagraph=graphs)
    if gib is not None:
        log.info("GPU of %.0f GiB: %d pages in flight (--batch-pages), vision encoder %s (--mm-encoder-cudagraph)",
                 gib, settled.batch_pages, "in CUDA graphs" if settled.mm_encoder_cudagraph else "eager")
    return settled
