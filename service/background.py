"""Background loops that stop when asked, even when their cancellation is lost."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable


async def every(interval_s: float, step: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
    """`await step()` every `interval_s` until `stopping` is set.

    The loop ends on the event, not on `Task.cancel` alone: on Python 3.11 a cancellation that arrives as a
    Redis command's write completes is lost (`asyncio.wait_for`, which redis-py wraps every write in with a
    socket timeout; CPython gh-86296), and a loop that lost it ran on, keeping `asyncio.run` waiting for it
    at shutdown forever."""
    while not stopping.is_set():
        await step()
        try:
            async with asyncio.timeout(interval_s):
                await stopping.wait()
        except TimeoutError:
            pass
