"""One engine load at a time on a GPU: vLLM sizes its KV cache from the memory it finds free while it loads, so
a second runner on the same GPU (launch_workers.py --workers-per-gpu) loads once the first has."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def engine_gpus(tensor_parallel_size: int) -> list[str]:
    """The GPUs an engine of this process will use: CUDA_VISIBLE_DEVICES's first ones, else 0..tp-1."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[:tensor_parallel_size] if visible else [str(i) for i in range(tensor_parallel_size)]


@contextmanager
def one_load_per_gpu(gpus: list[str], folder: Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock per GPU (in sorted order: two engines over overlapping GPUs cannot deadlock)
    for the engine's load; the locks go with the process, so a killed loader frees them."""
    folder = folder or Path(tempfile.gettempdir())
    with ExitStack() as stack:
        for gpu in sorted(set(gpus)):
            name = "".join(c if c.isalnum() or c in "-_" else "_" for c in gpu)
            fh = stack.enter_context(open(folder / f"ocr-engine-load-gpu-{name}.lock", "a+"))
            # lockf (a POSIX record lock), not flock: vLLM forks its engine core inside the load, and a forked
            # child keeps an flock for as long as it lives, so the second runner on a GPU waited for the
            # first one's whole run (session 14, H200). Record locks belong to the process, not its children.
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                log.warning("engine: another runner is loading an engine on GPU %s; this one loads after it "
                            "(vLLM sizes its KV cache from the GPU memory it finds free)", gpu)
                fcntl.lockf(fh, fcntl.LOCK_EX)
        yield
