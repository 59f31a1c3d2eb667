"""The defaults that depend on the GPU: pages in flight and the vision encoder's CUDA graphs, settled once from
the GPU's memory (read through vLLM's platform, NVML, before CUDA starts) into the run's frozen Config."""

from __future__ import annotations

import dataclasses
import logging
import math
import os

from .config import SMALL_GPU_BATCH, Config, UsageError

log = logging.getLogger(__name__)

# Measured on the H200 (NOTES.md, sessions 8-10): 256 pages in flight with encoder graphs made the runner 18.42
# pages/s with the GPU busy 83%, the old defaults (128, eager encoder) 8.21 and 40%. The graphs took ~6% of its
# KV cache; the runner's process tree held ~35 GB of RAM at 256 (bench.py's monitor, session 10). Below them
# the encoder stays eager: at a 24 GB L4's share of the H200 (session 16, 20.3 GiB) the weights (7.2 GiB), the
# encoder's graphs (7.5) and their profiling's activations (8.2) came to 22.8 GiB, the KV cache was 40% of the
# eager encoder's and the load peaked above an L4's 22.5 GiB; 128 in flight stays for the L4's KV cache and
# the reference box's 96 GB of RAM for 4 workers.
BIG_GPU_GIB = 64
RAM_PER_GPU_GIB = 40
BIG_GPU_BATCH = 256
# The most that workers sharing one GPU (launch_workers.py --workers-per-gpu, Ray's --gpus-per-worker below 1)
# may ask vLLM for together, as shares of its memory.
GPU_MEMORY_SHARED = 0.95


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


def host_ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def ram_per_gpu_gib() -> float | None:
    """The host's RAM over all its GPUs (the workers of one box share it), None if either is unknown."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        log.debug("RAM per GPU unknown (%s)", exc)
        return None
    ram = host_ram_gib()
    return ram / max(1, count) if ram is not None else None


def big_gpu(gpu_gib: float | None, ram_gib: float | None) -> bool:
    """256 pages and encoder graphs: a GPU of BIG_GPU_GIB or more, with RAM_PER_GPU_GIB of RAM (unknown: enough)."""
    return gpu_gib is not None and gpu_gib >= BIG_GPU_GIB and (ram_gib is None or ram_gib >= RAM_PER_GPU_GIB)


def settle(cfg: Config, memory_gib: float | None = None, probe: bool = True,
           ram_gib: float | None = None) -> Config:
    """cfg with --batch-pages and --mm-encoder-cudagraph decided where the user left them unset (None):
    256 and on for a big GPU (big_gpu), 128 and off otherwise (or without a GPU)."""
    if cfg.batch_pages is not None and cfg.mm_encoder_cudagraph is not None:
        return cfg
    gib = memory_gib if memory_gib is not None or not probe else gpu_memory_gib()
    ram = ram_gib if ram_gib is not None or not probe or gib is None else ram_per_gpu_gib()
    big = big_gpu(gib, ram)
    batch = cfg.batch_pages if cfg.batch_pages is not None else BIG_GPU_BATCH if big else SMALL_GPU_BATCH
    graphs = cfg.mm_encoder_cudagraph if cfg.mm_encoder_cudagraph is not None else big
    settled = dataclasses.replace(cfg, batch_pages=batch, mm_encoder_cudagraph=graphs)
    if gib is not None:
        ram_text = f", {ram:.0f} GiB of RAM per GPU" if ram is not None else ""
        log.info("GPU of %.0f GiB%s: %d pages in flight (--batch-pages), vision encoder %s "
                 "(--mm-encoder-cudagraph)", gib, ram_text, settled.batch_pages,
                 "in CUDA graphs" if settled.mm_encoder_cudagraph else "eager")
    return settled


def memory_share(utilization: float, was_set: bool, share: float, sharing: str) -> float:
    """The --gpu-memory-utilization of one of the workers sharing a GPU, each `share` of it (vLLM refuses to
    start when the memory it asks for is not free): the default scaled to its share, a set one kept where the
    workers' shares fit in GPU_MEMORY_SHARED together. `sharing` names the flag that shares the GPU."""
    if share >= 1:
        return utilization
    most = GPU_MEMORY_SHARED * share
    if not was_set:
        return round(utilization * share, 2)
    if utilization > most:
        # rounded down: 0.95 / 3 = 0.3167 printed as 0.32 would itself be refused
        raise UsageError(f"--gpu-memory-utilization {utilization} does not fit {sharing}: use at most "
                         f"{math.floor(most * 100) / 100:.2f}, or leave it out")
    return utilization
