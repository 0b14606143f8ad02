"""One engine step per search round: a vLLM scheduler that admits a round's requests together.

A scoring round of a search sends every active beam as its own request (`model_patch.engine_topk`), one
after another. vLLM's engine core starts a step as soon as the first one is in, so the rest of the round
used to wait for a second step: 1.5 steps per round on a 1M-item catalog, where a search takes 3-4
rounds of up to 10 beams, and a step of a few tokens costs 12-14 ms on this CPU whatever its size
(docs/topk_decoding.md). Each request of a round carries the round's id and size in ``extra_args``
(`round_args`); `RoundScheduler` holds them until the last one is in, then queues them at once, so the
round is one step. A request without the tag is scheduled as by vLLM's own scheduler.

A round is never held for long: its requests leave the frontend within a few milliseconds; when one of
them is aborted (the frontend aborts the rest of a round when one fails) the round is released at once,
and a round whose last request never comes is released by the first step after `MAX_HOLD_S`.

While a round is held and nothing else runs, the engine core waits for input instead of stepping: an
empty step costs about a millisecond of Python and wakes the OpenMP threads, CPU that the frontend
needs on a small machine to send the rest of the round (on 2 cores, stepping while held made a round of
10 beams 7-27% slower). The price: an incomplete round on an otherwise idle engine waits for the next
input (any request or abort) once `MAX_HOLD_S` has passed. `model_patch.engine_topk` never leaves one:
it sends a round whole or aborts the part it sent.
"""

from __future__ import annotations

import time
from typing import Iterable

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

ROUND = "hat_round"  # extra_args key: "<round id>:<requests in the round>"
MAX_HOLD_S = 0.05
SCHEDULER = f"{__name__}.RoundScheduler"  # as vLLM's `scheduler_cls` engine argument names it


def round_args(round_id: str, size: int) -> dict[str, str]:
    """``extra_args`` for one of the `size` requests of round `round_id` (ids unique per engine)."""
    if size < 1 or ":" in round_id:
        raise ValueError(f"bad round {round_id!r} of {size}")
    return {ROUND: f"{round_id}:{size}"}


class RoundScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held: dict[str, tuple[float, int, list[Request]]] = {}  # round id -> (first arrival, size, requests in)

    def add_request(self, request: Request) -> None:
        tag = (request.sampling_params.extra_args or {}).get(ROUND) if request.sampling_params else None
        if tag is None:
            return super().add_request(request)
        round_id, size = tag.rsplit(":", 1)
        _, expected, members = self.held.setdefault(round_id, (time.monotonic(), int(size), []))
        members.append(request)
        if len(members) >= expected:
            self._release(round_id)

    def _release(self, round_id: str) -> None:
        for request in self.held.pop(round_id)[2]:
            super().add_request(request)

    def _overdue(self) -> list[str]:
        now = time.monotonic()
        return [round_id for round_id, (since, _, _) in self.held.items() if now - since > MAX_HOLD_S]

    def schedule(self, *args, **kwargs):
        for round_id in self._overdue():
            self._release(round_id)
        return super().schedule(*args, **kwargs)

    def finish_requests(self, request_ids: str | Iterable[str] | None, finished_status: RequestStatus) -> list[Request]:
        # A held request is unknown to vLLM's queues: release its round first, then vLLM finishes it as usual.
        if request_ids is not None:  # one id or any iterable (read once here): a set for both passes
            request_ids = {request_ids} if isinstance(request_ids, str) else set(request_ids)
        for round_id, (_, _, members) in list(self.held.items()):
            if request_ids is None or any(r.request_id in request_ids for r in members):
                self._release(round_id)
        return super().finish_requests(request_ids, finished_status)

    def has_requests(self) -> bool:
        # A held round does not keep the engine core stepping (module docstring); an overdue one does, until
        # `schedule` releases it.
        return bool(self._overdue()) or super().has_requests()
