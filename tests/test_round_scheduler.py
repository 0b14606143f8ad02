"""The round scheduler's bookkeeping: a search round is queued whole, and never held for long.

vLLM's own scheduler is replaced by a recorder here (this tests `RoundScheduler`'s own methods only);
tests/test_engine_topk.py runs it inside the real engine.
"""

import time
from types import SimpleNamespace

import pytest

from tests.helpers import require

require("vllm")

from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402

from model_patch import round_scheduler  # noqa: E402
from model_patch.round_scheduler import RoundScheduler, round_args  # noqa: E402


@pytest.fixture
def scheduler(monkeypatch):
    """A `RoundScheduler` whose base records what reaches vLLM's queues and what it finishes."""
    queued, finished = [], []
    monkeypatch.setattr(Scheduler, "add_request", lambda self, request: queued.append(request.request_id))
    monkeypatch.setattr(Scheduler, "finish_requests", lambda self, ids, status: finished.append(ids) or [])
    monkeypatch.setattr(Scheduler, "schedule", lambda self, *args, **kwargs: "scheduled")
    monkeypatch.setattr(Scheduler, "has_requests", lambda self: bool(queued))
    sched = RoundScheduler.__new__(RoundScheduler)
    sched.held = {}
    return SimpleNamespace(s=sched, queued=queued, finished=finished)


def request(request_id, extra_args=None):
    return SimpleNamespace(request_id=request_id, sampling_params=SimpleNamespace(extra_args=extra_args))


def test_untagged_requests_are_queued_at_once(scheduler):
    scheduler.s.add_request(request("a"))
    scheduler.s.add_request(request("b", {"hat_allowed": b"\0\0\0\0"}))
    assert scheduler.queued == ["a", "b"] and not scheduler.s.held


def test_a_round_is_queued_when_its_last_request_arrives(scheduler):
    s = scheduler.s
    s.add_request(request("r1-a", round_args("r1", 3)))
    s.add_request(request("r2-a", round_args("r2", 2)))
    s.add_request(request("r1-b", round_args("r1", 3)))
    assert scheduler.queued == [] and not s.has_requests()  # the engine core waits for the rest of the round
    assert s.schedule() == "scheduled" and scheduler.queued == []  # not overdue yet
    s.add_request(request("r1-c", round_args("r1", 3)))
    assert scheduler.queued == ["r1-a", "r1-b", "r1-c"] and list(s.held) == ["r2"]
    s.add_request(request("r2-b", round_args("r2", 2)))
    assert scheduler.queued[3:] == ["r2-a", "r2-b"] and not s.held


def test_an_incomplete_round_is_released_when_overdue(scheduler, monkeypatch):
    s = scheduler.s
    s.add_request(request("a", round_args("r", 3)))
    s.add_request(request("b", round_args("r", 3)))
    assert not s.has_requests()
    now = time.monotonic()
    monkeypatch.setattr(round_scheduler.time, "monotonic", lambda: now + round_scheduler.MAX_HOLD_S + 0.01)
    assert s.has_requests()  # overdue: the engine core steps, and the step releases it
    s.schedule()
    assert scheduler.queued == ["a", "b"] and not s.held


def test_aborting_a_held_request_releases_its_round_for_vllm_to_finish(scheduler):
    s = scheduler.s
    for name, round_id in (("a", "r1"), ("b", "r1"), ("c", "r2")):
        s.add_request(request(name, round_args(round_id, 3)))
    s.finish_requests(iter(["b"]), RequestStatus.FINISHED_ABORTED)  # any iterable, as vLLM passes
    assert scheduler.queued == ["a", "b"] and scheduler.finished == [{"b"}] and list(s.held) == ["r2"]
    s.finish_requests("unrelated", RequestStatus.FINISHED_ABORTED)
    assert list(s.held) == ["r2"]
    s.finish_requests(None, RequestStatus.FINISHED_ABORTED)  # everything, as at shutdown
    assert scheduler.queued == ["a", "b", "c"] and not s.held


@pytest.mark.parametrize("round_id, size", [("r", 0), ("a:b", 2)])
def test_bad_round_tags_are_refused(round_id, size):
    with pytest.raises(ValueError):
        round_args(round_id, size)
