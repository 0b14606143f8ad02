"""Start and stop the real service on 127.0.0.1 for load and reliability tests (`python -m service`,
its own embedded Redis in a folder of the caller's choosing)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("the service did not become ready")


def start_service(port: int, redis_dir: str, log_path: Path, extra_env: dict, redis_url: str | None = None) -> subprocess.Popen:
    """The service on `port`; with its own embedded Redis in `redis_dir`, or on `redis_url`."""
    env = {**os.environ, "HATREC_PORT": str(port), "HATREC_HOST": "127.0.0.1",
           "HATREC_EMBEDDED_REDIS_PORT": str(free_port()), "HATREC_EMBEDDED_REDIS_DIR": redis_dir, **extra_env}
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def stop_service(process: subprocess.Popen, timeout_s: float = 60) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@contextmanager
def running_service(workdir: Path, log_path: Path | None = None, redis_url: str | None = None,
                    start_timeout_s: float = 600, **env):
    """The service on a free port, ready; its embedded Redis (unless `redis_url`) and log in `workdir`
    (the log at `log_path` if given); stopped like Ctrl-C on exit. `env`: settings, e.g.
    hatrec_max_in_flight=6. Yields (url, process); `process.returncode` is set after the block."""
    port = free_port()
    process = start_service(port, str(workdir / "redis"), log_path or workdir / "service.log",
                            {k.upper(): str(v) for k, v in env.items()}, redis_url)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, start_timeout_s)
        yield url, process
    finally:
        if process.poll() is None:
            stop_service(process)
