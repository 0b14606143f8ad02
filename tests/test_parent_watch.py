"""A process that multiprocessing started (vLLM's engine core) exits when its parent dies; the frontend never
watches itself. The service-level check (the main job SIGKILLed: its engine core and redis-server exit) is
tests/test_reliability.py's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loadtests.reliability import alive
from model_patch.parent_watch import exit_with_parent

PARENT = """
import multiprocessing, time
from model_patch.parent_watch import exit_with_parent

def child(interval):
    exit_with_parent(interval)
    time.sleep(60)

if __name__ == "__main__":
    process = multiprocessing.get_context("spawn").Process(target=child, args=(0.05,))
    process.start()
    print(process.pid, flush=True)
    time.sleep(60)
"""
ROOT = Path(__file__).resolve().parent.parent


def test_a_watched_child_exits_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)
        assert alive(child)  # watching does not end a child whose parent lives
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_process_multiprocessing_did_not_start_is_not_watched():
    assert exit_with_parent() is False
