"""The lease queue: small leases, fast workers take more, lost or silent workers give their PDFs back."""

from __future__ import annotations

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ocr.leases import ItemState, LeaseQueue

PDFS = [f"d{i}.pdf" for i in range(10)]


def test_leases_are_small_and_in_order():
    q = LeaseQueue(PDFS, lease_size=3, ttl=60)
    assert q.grant("a", 0).items == ("d0.pdf", "d1.pdf", "d2.pdf")
    assert q.grant("b", 0).items == ("d3.pdf", "d4.pdf", "d5.pdf")
    assert q.counts() == {"waiting": 4, "leased": 6, "done": 0, "failed": 0}


def test_a_fast_worker_takes_more():
    q = LeaseQueue(PDFS, lease_size=2, ttl=60)
    slow = q.grant("slow", 0)
    taken = []
    while (lease := q.grant("fast", 1)) is not None:
        for item in lease.items:
            assert q.finish("fast", item)
        taken += lease.items
    assert len(taken) == 8 and not set(taken) & set(slow.items)
    assert not q.finished                          # the slow worker still holds two
    for item in slow.items:
        q.finish("slow", item)
    assert q.finished and q.counts()["done"] == 10


@pytest.mark.parametrize("how", ["lost", "expired"])
def test_a_lost_or_silent_worker_gives_back_only_its_unfinished_pdfs_to_the_front(how):
    q = LeaseQueue(PDFS, lease_size=3, ttl=60)
    a = q.grant("a", 0)
    b = q.grant("b", 0)
    q.finish("a", a.items[0])
    q.heartbeat("b", 50)                           # b keeps beating, a does not
    if how == "lost":
        assert q.lose("a") == list(a.items[1:])
    else:
        assert q.reap(70) == list(a.items[1:])
    assert q.held_by("a") == [] and q.held_by("b") == sorted(b.items)
    assert q.state[a.items[0]] == ItemState.DONE
    assert q.grant("c", 70).items == (*a.items[1:], "d6.pdf")   # returned PDFs first


def test_heartbeat_keeps_a_lease_alive():
    q = LeaseQueue(PDFS, lease_size=1, ttl=10)
    lease = q.grant("a", 0)
    for t in range(5, 100, 5):
        assert q.heartbeat("a", t) == 1
    assert q.reap(100) == [] and q.held_by("a") == list(lease.items)
    assert q.reap(110) == list(lease.items)
    assert q.heartbeat("a", 111) == 0


def test_a_pdf_finished_twice_counts_once():
    q = LeaseQueue(PDFS[:1], lease_size=1, ttl=10)
    q.grant("a", 0)
    q.reap(20)                                     # a went silent: its PDF goes to b
    q.grant("b", 20)
    assert q.finish("a", "d0.pdf") is True         # a was only slow: its copy is taken
    assert q.finish("b", "d0.pdf") is False        # b's identical copy is a duplicate
    assert q.finished and q.held_by("b") == []


def test_a_pdf_that_kills_every_worker_is_failed_after_max_losses():
    q = LeaseQueue(["killer.pdf", "ok.pdf"], lease_size=1, ttl=60, max_losses=2)
    for worker in ("a", "b"):
        assert q.grant(worker, 0).items == ("killer.pdf",)
        q.lose(worker)
    assert q.state["killer.pdf"] == ItemState.FAILED
    assert q.why_failed["killer.pdf"] == "lost with its worker 2 times"
    assert q.grant("c", 0).items == ("ok.pdf",)
    q.finish("c", "ok.pdf")
    assert q.finished


def test_failed_pdfs_are_final_and_say_why():
    q = LeaseQueue(PDFS[:2], lease_size=2, ttl=60)
    q.grant("a", 0)
    q.finish("a", "d0.pdf", ok=False, why="not a PDF")
    q.lose("a")
    assert q.state["d0.pdf"] == ItemState.FAILED and q.why_failed == {"d0.pdf": "not a PDF"}
    assert q.grant("b", 1).items == ("d1.pdf",)


def test_resume_only_what_is_given_is_leased():
    """The driver builds the queue from the PDFs not yet complete: an empty queue is finished at once."""
    q = LeaseQueue([], lease_size=4, ttl=60)
    assert q.finished and q.grant("a", 0) is None
    q = LeaseQueue(["a.pdf", "a.pdf", "b.pdf"])
    assert q.counts()["waiting"] == 2


@pytest.mark.parametrize("kwargs", [{"lease_size": 0}, {"ttl": 0}, {"max_losses": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        LeaseQueue(PDFS, **kwargs)


class QueueMachine(RuleBasedStateMachine):
    """Workers take, finish, go silent, get lost, in any order: every PDF is finished at most once, never
    held twice, and once every worker drains the queue everything is done or failed."""

    def __init__(self):
        super().__init__()
        self.q = LeaseQueue(PDFS, lease_size=3, ttl=10, max_losses=2)
        self.now = 0.0
        self.finished_once: set[str] = set()

    @rule(worker=st.sampled_from("abc"))
    def take(self, worker):
        self.q.grant(worker, self.now)

    @rule(worker=st.sampled_from("abc"), ok=st.booleans())
    def finish_one(self, worker, ok):
        held = self.q.held_by(worker)
        if held:
            first = self.q.finish(worker, held[0], ok)
            assert first and held[0] not in self.finished_once
            self.finished_once.add(held[0])

    @rule(worker=st.sampled_from("abc"))
    def lose(self, worker):
        self.q.lose(worker)

    @rule(dt=st.floats(0, 15), beat=st.sampled_from("abc"))
    def time_passes(self, dt, beat):
        self.now += dt
        self.q.heartbeat(beat, self.now)

    @invariant()
    def each_pdf_has_one_state_and_one_holder(self):
        held = [i for w in "abc" for i in self.q.held_by(w)]
        assert len(held) == len(set(held))
        assert all(self.q.state[i] == ItemState.LEASED for i in held)
        assert sum(self.q.counts().values()) == len(PDFS)
        assert {i for i, s in self.q.state.items() if s in (ItemState.DONE, ItemState.FAILED)} >= \
            self.finished_once

    @rule()
    def drain(self):
        """A healthy worker finishes all that is left (after the others' leases expire)."""
        self.now += 100
        while (lease := self.q.grant("z", self.now)) is not None:
            for item in lease.items:
                assert self.q.finish("z", item)
        assert self.q.finished


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
