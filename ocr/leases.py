"""A lease queue of PDFs: handed out a few at a time with an expiry that heartbeats extend, so fast workers
take more and a lost worker loses only its leases, which go back to the front of the queue (olmocr's work
queue, held in one place instead of lock files). Pure: the caller passes the time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Iterable


class ItemState(str, Enum):
    WAITING = "waiting"     # in the queue
    LEASED = "leased"       # a worker holds it
    DONE = "done"           # finished (complete, partial or skipped: not handed out again in this run)
    FAILED = "failed"       # the worker could not OCR it, or it was lost with its worker too often


@dataclass(frozen=True)
class Lease:
    id: int
    worker: str
    items: tuple[str, ...]


@dataclass
class _Held:
    lease: Lease
    expires: float
    open: set[str]          # items of the lease not yet finished


class LeaseQueue:
    """Items (PDF names) in the order given; each is finished once. `max_losses`: an item whose worker was
    lost this many times while holding it is failed instead of handed out again (a PDF that kills its
    worker must not kill them all)."""

    def __init__(self, items: Iterable[str], lease_size: int = 4, ttl: float = 300.0, max_losses: int = 3):
        if lease_size < 1 or ttl <= 0 or max_losses < 1:
            raise ValueError("lease_size and max_losses must be >= 1 and ttl > 0")
        self.lease_size, self.ttl, self.max_losses = lease_size, ttl, max_losses
        self._waiting: deque[str] = deque(dict.fromkeys(items))
        self.state: dict[str, ItemState] = {item: ItemState.WAITING for item in self._waiting}
        self.losses: dict[str, int] = {}
        self.why_failed: dict[str, str] = {}
        self._held: dict[int, _Held] = {}
        self._holder: dict[str, int] = {}          # leased item -> lease id
        self._next_id = 0
        self._open = len(self.state)                # items neither done nor failed

    # --- workers ask ------------------------------------------------------------------------------
    def grant(self, worker: str, now: float) -> Lease | None:
        """Up to lease_size waiting items for this worker; None when nothing is waiting right now."""
        self.reap(now)
        items = []
        while self._waiting and len(items) < self.lease_size:
            item = self._waiting.popleft()
            if self.state[item] == ItemState.WAITING:
                items.append(item)
        if not items:
            return None
        lease = Lease(self._next_id, worker, tuple(items))
        self._next_id += 1
        self._held[lease.id] = _Held(lease, now + self.ttl, set(items))
        for item in items:
            self.state[item] = ItemState.LEASED
            self._holder[item] = lease.id
        return lease

    def heartbeat(self, worker: str, now: float) -> int:
        """Extends every lease of this worker; returns how many items it still holds."""
        held = [h for h in self._held.values() if h.lease.worker == worker]
        for h in held:
            h.expires = now + self.ttl
        return sum(len(h.open) for h in held)

    def finish(self, worker: str, item: str, ok: bool = True, why: str = "") -> bool:
        """Records an item as done (or failed); False if it was already finished (a second copy of it, from
        a worker whose lease had expired: the caller should count it, not count it twice)."""
        if self.state.get(item) in (ItemState.DONE, ItemState.FAILED, None):
            return False
        self._drop(item)
        self._open -= 1
        self.state[item] = ItemState.DONE if ok else ItemState.FAILED
        if not ok:
            self.why_failed[item] = why
        return True

    # --- workers lost -----------------------------------------------------------------------------
    def lose(self, worker: str) -> list[str]:
        """The worker is gone: its unfinished items go back to the front of the queue; returns them."""
        returned: list[str] = []
        for lease_id in [i for i, h in self._held.items() if h.lease.worker == worker]:
            returned += self._return(lease_id)
        return returned

    def reap(self, now: float) -> list[str]:
        """Leases whose worker stopped heart-beating go back to the queue; returns their items."""
        returned: list[str] = []
        for lease_id in [i for i, h in self._held.items() if h.expires <= now]:
            returned += self._return(lease_id)
        return returned

    def _return(self, lease_id: int) -> list[str]:
        held = self._held.pop(lease_id)
        back = []
        for item in sorted(held.open, key=held.lease.items.index):
            del self._holder[item]
            self.losses[item] = self.losses.get(item, 0) + 1
            if self.losses[item] >= self.max_losses:
                self.state[item] = ItemState.FAILED
                self._open -= 1
                self.why_failed[item] = f"lost with its worker {self.losses[item]} times"
            else:
                self.state[item] = ItemState.WAITING
                back.append(item)
        self._waiting.extendleft(reversed(back))
        return back

    def _drop(self, item: str) -> None:
        lease_id = self._holder.pop(item, None)
        if lease_id is None:
            return
        held = self._held[lease_id]
        held.open.discard(item)
        if not held.open:
            del self._held[lease_id]

    # --- what the driver reads --------------------------------------------------------------------
    def held_by(self, worker: str) -> list[str]:
        return [item for h in self._held.values() if h.lease.worker == worker for item in sorted(h.open)]

    @property
    def finished(self) -> bool:
        """Nothing waiting and nothing leased: every item is done or failed."""
        return self._open == 0

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in ItemState}
        for state in self.state.values():
            counts[state.value] += 1
        return counts
