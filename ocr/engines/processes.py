"""Engine processes: who they are, reaping them on close, and killing those a SIGKILLed runner left behind."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def child_pids() -> set[int]:
    import psutil
    return {p.pid for p in psutil.Process().children(recursive=True)}


def reap(procs: list, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, each process still running."""
    import psutil
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def vllm_titled(proc: Any) -> bool:
    """Whether vLLM named this process (setproctitle: "VLLM::EngineCore", VLLM_PROCESS_NAME_PREFIX)."""
    import os

    import psutil
    try:
        return " ".join(proc.cmdline()).startswith(os.environ.get("VLLM_PROCESS_NAME_PREFIX", "VLLM") + "::")
    except psutil.Error:
        return False


class EngineProcesses:
    """The processes one engine start left running. Only vLLM's engine core (the direct children vLLM
    named, or every new direct child where it named none) says whether the engine lives: the core's own
    children come and go (with cold compile caches, Inductor and Triton compile workers exit minutes after
    the load), and so does any short-lived child another thread of the runner's process had running at
    that moment (the bench's nvidia-smi sample read as a dead engine on an H200 in session 13). The whole
    tree is reaped on close."""

    def __init__(self, before: set[int]):
        import psutil
        me = psutil.Process()
        new = [p for p in me.children() if p.pid not in before]
        self.roots = [p for p in new if vllm_titled(p)] or new
        self.tree = [p for p in me.children(recursive=True) if p.pid not in before]

    def alive(self) -> bool:
        return all_running(self.roots)

    def current(self) -> list:
        """The roots, their children now, and the processes recorded at the start: what close must reap."""
        import psutil
        procs = {p.pid: p for p in self.tree}
        for root in self.roots:
            try:
                procs.update((c.pid, c) for c in root.children(recursive=True))
            except psutil.Error:
                pass
        return list(procs.values())


def all_running(procs: list) -> bool:
    """False once any of them exited (a zombie counts as exited)."""
    return all(p.is_running() and p.status() != "zombie" for p in procs)


def write_pid_file(path: Path, procs: list) -> None:
    """Who owns which engine processes, so the next run can reap them if this runner is SIGKILLed."""
    import psutil
    path.parent.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    path.write_text(json.dumps({"runner": [me.pid, me.create_time()],
                                "engine": [[p.pid, p.create_time()] for p in procs]}))


def reap_stale_engine(path: Path) -> None:
    """Kill engine processes left behind by a runner that was SIGKILLed (they hold GPU memory)."""
    import psutil
    try:
        record: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if _same_process(*record["runner"]):
        return                                   # its runner is alive: another worker's engine
    stale = [psutil.Process(pid) for pid, created in record["engine"] if _same_process(pid, created)]
    if stale:
        log.warning("engine: killing %d engine processes left by a killed run (pids %s)", len(stale),
                    [p.pid for p in stale])
        reap(stale, grace_s=5.0)
    path.unlink(missing_ok=True)


def _same_process(pid: int, created: float) -> bool:
    import psutil
    try:
        return abs(psutil.Process(pid).create_time() - created) < 1e-3
    except psutil.Error:
        return False
