"""vLLM's engine core exits when the process that started it dies.

AsyncLLM runs the engine core in a process of its own and stops it when the frontend shuts down, but not
when the frontend is killed (SIGKILL, the OOM killer): the engine core then waits for input forever,
holding the model and its KV cache (about 3 GB for the small model), and ignores SIGTERM. vLLM's
multiprocess executor guards its workers with a death pipe; nothing guards the engine core. The plugin
(`model_patch.register`, run by vLLM in each of its processes) starts this watch in every process that
multiprocessing started, i.e. the engine core and any workers, never in the frontend.

A thread that polls `os.getppid()`, rather than ``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal
when the *thread* that started the child exits, which would kill an engine started from a short-lived thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 0.5
_started = False


def exit_with_parent(interval_s: float = CHECK_INTERVAL_S) -> bool:
    """In a multiprocessing child: end this process once its parent has died. Idempotent; returns whether
    this process is watched (False in a process that multiprocessing did not start)."""
    global _started
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    if not _started:
        _started = True
        threading.Thread(target=_watch, args=(parent.pid, interval_s), name="exit-with-parent", daemon=True).start()
    return True


def _watch(parent_pid: int, interval_s: float) -> None:
    while os.getppid() == parent_pid:  # an orphan is adopted by init or a subreaper: its parent pid changes
        time.sleep(interval_s)
    log.error("parent process %d is gone: exiting", parent_pid)
    # Nothing to save (the model and the KV cache are in memory only), and the main thread may be blocked
    # waiting for input that will never come: end the process from here.
    os._exit(1)
