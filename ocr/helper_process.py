"""What every helper process of the runner (render, post-processing) does first: leave the stop signals to
the runner, and end with it."""

from __future__ import annotations

import os
import signal
import threading
import time


def start_helper(parent_pid: int) -> None:
    """Ignore SIGINT and SIGTERM: Ctrl-C in a tmux pane and GNU `timeout` signal the whole process group,
    and a render process killed by that signal broke the pool while the runner was stopping (its exit then
    hung past `timeout -k` in 1 of 10 tries, tests/test_signals.py). The runner ends its helpers itself.

    End when the runner does, even when it is SIGKILLed (`timeout -s KILL`, the OOM killer): a pool worker
    would otherwise wait on its queue forever, holding ~200 MB."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
