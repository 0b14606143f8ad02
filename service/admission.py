"""How many recommendations may be under way at once: optionally, a bound that follows the engine's latency.

A fixed bound cannot serve both normal load and overload on a small machine (docs/operations.md): the
bound that gives the most throughput (each request batched with several others) makes every admitted
request wait for the whole batch under overload, while one small enough to keep admitted requests
fast refuses requests at normal load. With a `tolerance`, the bound moves between 1 and `ceiling`, as
TCP Vegas and Netflix's concurrency-limits move theirs:
- it drops when a decode takes longer than `tolerance` times the 90th percentile of decodes that ran
  alone (nothing else admitted from start to end): the extra time is queueing behind other requests;
- it rises by one when requests were refused and a decode stayed within that: demand, and room.
Comparing with a percentile of lone decodes, not one fixed latency, keeps requests that are simply
longer (a longer history, no cached prefix) from reading as queueing. After a change the bound is judged
again only once the requests admitted under the old one have finished. This keeps the admitted tail
under overload at the price of a few refusals at normal load and some throughput (measured in
docs/operations.md); it is the default since session 14, `tolerance` 0 gives the fixed bound.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager

import numpy as np

from . import metrics

BASELINE_SAMPLES = 64  # lone decodes kept; the oldest drop out, so the baseline follows the model and catalog
MIN_BASELINE_SAMPLES = 8  # before these, the bound stays at its ceiling


class AdmissionLimit:
    def __init__(self, ceiling: int, tolerance: float):
        """`tolerance` 0: a fixed bound at `ceiling`."""
        self.ceiling, self.tolerance = ceiling, tolerance
        self.limit = ceiling
        self.in_flight = 0
        self._admitted = 0  # admissions so far: tells a lone decode from one that others joined
        self._alone: deque[float] = deque(maxlen=BASELINE_SAMPLES)
        self._since_change = 0  # decodes finished since the bound last moved
        self._settle = 0  # requests under way when it moved: admitted under the old bound
        self._refused = False  # since the bound last moved
        metrics.ADMISSION_LIMIT.set(self.limit)

    def admit(self) -> bool:
        if self.in_flight >= self.limit:
            self._refused = True
            return False
        self.in_flight += 1
        self._admitted += 1
        metrics.QUEUE_DEPTH.set(self.in_flight)
        return True

    def release(self) -> None:
        self.in_flight -= 1
        metrics.QUEUE_DEPTH.set(self.in_flight)

    @contextmanager
    def timed(self):
        """Time one admitted request's model decode; a decode that fails tells nothing and is not counted."""
        started, admitted = time.perf_counter(), self._admitted
        alone = self.in_flight == 1
        yield
        self.observe(time.perf_counter() - started, alone and self._admitted == admitted)

    def observe(self, seconds: float, alone: bool) -> None:
        if alone:
            self._alone.append(seconds)
        if not self.tolerance or len(self._alone) < MIN_BASELINE_SAMPLES:
            return
        self._since_change += 1
        if self._since_change <= self._settle:
            return
        target = self.tolerance * float(np.percentile(self._alone, 90))
        if seconds > target and self.limit > 1:
            self._move(max(1, min(self.limit - 1, int(self.limit * target / seconds))))
        elif seconds <= target and self._refused and self.limit < self.ceiling:
            self._move(self.limit + 1)

    def forget_latencies(self) -> None:
        """Drop the lone decodes seen so far (a cold engine's warm-up is not its baseline)."""
        self._alone.clear()

    def _move(self, limit: int) -> None:
        self.limit = limit
        self._since_change, self._settle, self._refused = 0, self.in_flight, False
        metrics.ADMISSION_LIMIT.set(limit)
