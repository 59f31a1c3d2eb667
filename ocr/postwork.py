"""Post-processing and the runaway verdict beside the control loop, in worker processes with a time limit:
a slow or failing page never delays the next engine step, and never stops the run.

Processes, not threads: the work is `re` and Python code that holds the GIL (a quadratic regex holds it
for its whole call), so a thread would stall the control loop as long as the page takes, and a hung
thread cannot be stopped. bench/postprocess_bench.py --beside measures both. A process past its time
limit is killed and replaced; its page keeps the raw text with the meta tokens stripped (`fallback_page`).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from . import postprocess
from .finish import finish_page
from .helper_process import start_helper
from .grounding import GROUNDING_TAGS, is_layout_label
from .records import EngineOutput, PageResult, PageStatus
from .runaway import Judged, judge

FAILED_COUNTER = "postprocess_failed"     # the clean-up raised: raw text kept
TIMEOUT_COUNTER = "postprocess_timeout"   # the clean-up ran past its time limit: raw text kept
DEFAULT_TIMEOUT_S = 60.0                  # 200 KB of the worst input takes < 1 s (bench/postprocess_bench.py)
# Jobs sent ahead to each worker: it starts the next as soon as it is done, not when the control loop next
# looks (once per engine step, ~20-30 ms on an H200, where one job in flight kept the one worker "busy" 77%).
JOBS_AHEAD = 4
SLOW_S = 1.0                              # a job this long holds up the jobs sent behind it: they go elsewhere


@dataclass(frozen=True)
class Done:
    """A finished job: its `value`, or `error` (why it has none: the exception, a timeout, a dead worker)."""
    key: Hashable
    value: Any = None
    error: str | None = None
    timed_out: bool = False
    seconds: float = 0.0        # the worker's own time on it (for a timeout or a death: since it started)


@dataclass(frozen=True)
class _Job:
    seq: int                # this submission's own number (a key may be submitted again later)
    key: Hashable
    fn: Callable
    args: tuple


def _serve(conn: Connection, parent_pid: int) -> None:
    """A worker: run each (key, fn, args) it is sent and send back (key, ok, value or error text)."""
    start_helper(parent_pid)
    conn.send("ready")                     # the time limit starts with the job, not with the import
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        key, fn, args = job
        start = time.perf_counter()
        try:
            value = fn(*args)
        except Exception as exc:            # the job's failure is the page's, never the worker's
            conn.send((key, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - start))
        else:
            conn.send((key, True, value, time.perf_counter() - start))


class _Worker:
    def __init__(self, ctx: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, os.getpid()), daemon=True, name="postwork")
        self.process.start()
        child.close()
        self.jobs: deque[_Job] = deque()   # sent, in the order it runs them
        self.head_since = 0.0               # when the first of them started, at the latest
        self.ready = False
        # sends go through a thread: a 200 KB page fills the pipe, and the control loop must not wait
        # for the worker to be scheduled to read it (0.2 s measured on a loaded 2-core machine)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._send_all, daemon=True, name="postwork-send").start()

    def _send_all(self) -> None:
        while True:
            job = self._outbox.get()
            try:
                self.conn.send(job)             # None: the worker's signal to end
            except (OSError, ValueError):       # the worker was killed: its job is reported by _check
                return
            if job is None:
                return

    def send(self, job: tuple) -> None:
        self._outbox.put(job)

    def is_ready(self) -> bool:
        if not self.ready:
            try:
                self.ready = self.conn.poll() and self.conn.recv() == "ready"
            except (EOFError, OSError):
                return False
        return self.ready

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        self._outbox.put(None)                  # ends the sender thread, and the worker if alive
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class PostWorkers:
    """n worker processes; `submit` queues a job, `poll` returns the jobs done (or failed, or past
    timeout_s, their worker killed and replaced) without waiting, `close` ends the workers.

    Each worker is sent up to JOBS_AHEAD jobs; when the one it is on has run SLOW_S, the jobs sent behind
    it are given to the other workers as well (a job is a pure function: the first result wins, the
    other is dropped), so a hung page holds up no other page for its time limit."""

    def __init__(self, n: int, timeout_s: float = DEFAULT_TIMEOUT_S):
        self._ctx = multiprocessing.get_context("spawn")   # the parent may hold CUDA and vLLM threads
        self._timeout = timeout_s
        self._workers = [_Worker(self._ctx) for _ in range(max(1, n))]
        self._queue: deque[_Job] = deque()
        self._seq = itertools.count()
        self._drop: Counter[int] = Counter()   # copies still sent of jobs whose result is out: ignored
        self._copied: set[int] = set()         # jobs given to a second worker, their result not out yet

    def submit(self, key: Hashable, fn: Callable, *args: Any) -> None:
        """Queue fn(*args) (fn: a module-level function, args picklable) under key."""
        self._queue.append(_Job(next(self._seq), key, fn, args))
        self._dispatch()

    def pending(self) -> int:
        seqs = {job.seq for job in self._queue} | {job.seq for w in self._workers for job in w.jobs}
        return len(seqs - set(self._drop))

    def poll(self, wait_s: float = 0.0) -> list[Done]:
        """The jobs finished since the last poll; waits up to wait_s for the first one when none is."""
        deadline = time.monotonic() + wait_s
        while True:
            done = [d for i in range(len(self._workers)) for d in self._check(i)]
            self._dispatch()
            if done or time.monotonic() >= deadline or not self.pending():
                return done
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def _check(self, i: int) -> list[Done]:
        """The worker's finished jobs; the jobs behind a slow one handed to the others too; if the one it is
        on ran past the time limit or the worker died, that one fails, the worker is replaced, and the jobs
        sent behind it go back to the front of the queue."""
        worker, done = self._workers[i], []
        try:
            while worker.jobs and worker.conn.poll():
                seq, ok, value, seconds = worker.conn.recv()
                job = worker.jobs.popleft()
                assert job.seq == seq, (job.seq, seq)
                worker.head_since = time.monotonic()        # the next one starts now, at the latest
                if not self._dropped(seq):
                    self._finished(job)
                    done.append(Done(job.key, value, None, seconds=seconds) if ok else
                                Done(job.key, None, value, seconds=seconds))
        except (EOFError, OSError):
            pass
        if not worker.jobs:
            return done
        elapsed = time.monotonic() - worker.head_since
        if elapsed > SLOW_S and len(self._workers) > 1:
            self._give_away(list(worker.jobs)[1:])
        redundant = elapsed > SLOW_S and worker.jobs[0].seq in self._drop     # a slow copy of a job done
        if worker.process.is_alive() and elapsed <= self._timeout and not redundant:
            return done
        timed_out = worker.process.is_alive() and not redundant
        head, behind = worker.jobs.popleft(), list(worker.jobs)
        worker.stop(kill=True)
        self._workers[i] = _Worker(self._ctx)
        elsewhere = {j.seq for j in self._queue} | {j.seq for w in self._workers for j in w.jobs}
        again = [job for job in behind if not self._dropped(job.seq) and job.seq not in elsewhere]
        self._queue.extendleft(reversed(again))            # not theirs to fail: sent again, in order
        if self._dropped(head.seq):
            return done
        self._finished(head)
        why = f"post-processing ran past {self._timeout:g} s" if timed_out else "the post-processing process died"
        return [*done, Done(head.key, None, why, timed_out=timed_out, seconds=elapsed)]

    def _give_away(self, behind: list[_Job]) -> None:
        """Queue the jobs sent behind a slow one for the other workers as well (once each)."""
        more = [job for job in behind if job.seq not in self._copied and job.seq not in self._drop]
        self._copied.update(job.seq for job in more)
        self._queue.extendleft(reversed(more))

    def _dropped(self, seq: int) -> bool:
        """Whether this copy's result is to be ignored (another copy's came first); counts it off."""
        if not self._drop[seq]:
            self._drop.pop(seq, None)
            return False
        self._drop[seq] -= 1
        if not self._drop[seq]:
            del self._drop[seq]
        return True

    def _finished(self, job: _Job) -> None:
        """A job's one result is out: a copy still queued is dropped, each one still sent is ignored."""
        if job.seq not in self._copied:
            return
        self._copied.discard(job.seq)
        self._queue = deque(j for j in self._queue if j.seq != job.seq)
        copies = sum(j.seq == job.seq for w in self._workers for j in w.jobs)
        if copies:
            self._drop[job.seq] += copies

    def _dispatch(self) -> None:
        """Round by round, one job to each ready worker with room (the least loaded first)."""
        now = time.monotonic()
        while self._queue:
            room = [w for w in self._workers if len(w.jobs) < JOBS_AHEAD and w.is_ready()
                    and not (w.jobs and now - w.head_since > SLOW_S)]      # nothing behind a slow job
            if not room:
                return
            job = self._queue[0]
            room = [w for w in room if all(j.seq != job.seq for j in w.jobs)]     # never a job twice to one
            if not room:                # only the worker that holds it has room: it waits for another
                return
            worker = min(room, key=lambda w: len(w.jobs))
            self._queue.popleft()
            if not worker.jobs:
                worker.head_since = time.monotonic()
            worker.send((job.seq, job.fn, job.args))
            worker.jobs.append(job)

    def close(self) -> None:
        for worker in self._workers:
            worker.stop(kill=bool(worker.jobs))
        self._queue.clear()

    def __enter__(self) -> PostWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the jobs and the fallback -----------------------------------------------------------------------

def finish_job(out: EngineOutput, mode: str, special_tokens: Sequence[str], greek_repair: str) -> PageResult:
    """`finish.finish_page` in a worker."""
    return finish_page(out, mode=mode, special_tokens=special_tokens, greek_repair=greek_repair)


def judge_job(text: str, finish_reason: str | None, max_tokens: int) -> Judged:
    """`runaway.judge` in a worker: the verdict, and what choosing between two attempts needs."""
    return judge(text, finish_reason, max_tokens)


# bounded repeats: one linear pass each, whatever the text
_FALLBACK_REF_RE = re.compile(r"<\|ref\|>((?:(?!<\|).){0,300})<\|/ref\|>", re.DOTALL)
_FALLBACK_DET_RE = re.compile(r"<\|det\|>[\d\s,\[\]]{0,4000}(?:<\|/det\|>)?")


def fallback_text(raw: str, mode: str, special_tokens: Sequence[str] = ()) -> str:
    """The raw text with meta tokens stripped, writable (surrogates, controls), grounding tags gone in
    clean mode: only steps that are one linear pass each, so this never hangs."""
    text, _ = postprocess.strip_special_tokens(raw, special_tokens)
    text, _ = postprocess.replace_surrogates(text)
    text, _ = postprocess.remove_controls(text)
    if mode == "clean":
        text = _FALLBACK_REF_RE.sub(lambda m: "" if is_layout_label(m.group(1)) else m.group(1), text)
        text = _FALLBACK_DET_RE.sub("", text)
        for tag in GROUNDING_TAGS:
            text = text.replace(tag, "")
    return text.strip()


def fallback_page(out: EngineOutput, done: Done, mode: str, special_tokens: Sequence[str] = ()) -> PageResult:
    """The page when its post-processing failed or timed out: the raw text, meta tokens stripped; a
    counter says why (`done.error` is for the log). The page counts as read: the run goes on."""
    counter = TIMEOUT_COUNTER if done.timed_out else FAILED_COUNTER
    return PageResult(page=out.key.page, status=PageStatus.OK, text=fallback_text(out.text, mode, special_tokens),
                      tokens=out.tokens, finish_reason=out.finish_reason, counters={counter: 1})
