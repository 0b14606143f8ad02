"""How many recommendations may be under way at once: optionally, a bound that follows the engine's latency.

A fixed bound cannot serve both normal load and overload on a small machine (docs/operations.md): the
bound that gives the most throughput (each request batched with several others) makes every admitted
request wait for the whole batch under overload, while one small enough to keep admitted requests
fast refuses requests at normal load. With a `tolerance`, the bound moves between 1 and `ceiling`, as
TCP Vegas and Netflix's concurrency-limits move theirs:
- it drops when a decode takes longer than `tolerance` times the 90th percentile of decodes that ran
  alone (nothing else admitted from start to end): the extra time is queueing behind other requests.
  Queueing shorter than `slack_s` never counts: where lone decodes take 30 ms, two of them sharing the
  engine already take twice that, and refusing for tens of milliseconds refused 1-5% at normal load;
- it rises by one when the bound was reached (a request admitted into its last place, or refused) and a
  decode stayed within that: demand, and room. Rising before anyone is refused keeps a bound that a burst
  lowered from refusing the next burst at normal load.
Comparing with a percentile of lone decodes, not one fixed latency, keeps requests that are simply
longer (a longer history, no cached prefix) from reading as queueing. After a change the bound is judged
again only once the requests admitted under the old one have finished. This keeps the admitted tail
under overload at the price of some throughput and, near the sustainable rate, up to about 1% refused
(measured in docs/operations.md); it is the default since session 14, `tolerance` 0 gives the fixed bound.
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
    def __init__(self, ceiling: int, tolerance: float, slack_s: float):
        """`tolerance` 0: a fixed bound at `ceiling`."""
        self.ceiling, self.tolerance, self.slack_s = ceiling, tolerance, slack_s
        self.limit = ceiling
        self.in_flight = 0
        self._admitted = 0  # admissions so far: tells a lone decode from one that others joined
        self._alone: deque[float] = deque(maxlen=BASELINE_SAMPLES)
        self._since_change = 0  # decodes finished since the bound last moved
        self._settle = 0  # requests under way when it moved: admitted under the old bound
        self._reached = False  # the bound, since it last moved: a request refused or admitted into the last place
        metrics.ADMISSION_LIMIT.set(self.limit)

    def admit(self) -> bool:
        if self.in_flight >= self.limit:
            self._reached = True
            return False
        self.in_flight += 1
        self._reached |= self.in_flight == self.limit
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
        lone = float(np.percentile(self._alone, 90))
        target = max(self.tolerance * lone, lone + self.slack_s)
        metrics.ADMISSION_TARGET.set(target)
        if seconds > target and self.limit > 1:
            self._move(max(1, min(self.limit - 1, int(self.limit * target / seconds))))
        elif seconds <= target and self._reached and self.limit < self.ceiling:
            self._move(self.limit + 1)

    def forget_latencies(self) -> None:
        """Drop the lone decodes seen so far (a cold engine's warm-up is not its baseline)."""
        self._alone.clear()

    def _move(self, limit: int) -> None:
        self.limit = limit
        self._since_change, self._settle, self._reached = 0, self.in_flight, False
        metrics.ADMISSION_LIMIT.set(limit)
