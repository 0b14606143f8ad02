"""Reliability scenarios against a real local service (its own redis-server, the real engine).

    python -m loadtests.reliability first-start       # empty kernel cache: built before ready, first request fast
    python -m loadtests.reliability open-on-network   # no API keys on a network address: refuses to start
    python -m loadtests.reliability second-main-job   # its port, Redis port or Redis folder taken: exits 1, says which
    python -m loadtests.reliability interrupted-start # Ctrl-C while starting: exits 130 at once, nothing left
    python -m loadtests.reliability security          # key scopes, the history probe, a huge title
    python -m loadtests.reliability exclude-seen      # a 50-event user: none of their items comes back
    python -m loadtests.reliability two-replicas      # two service processes on one Redis see each other's writes
    python -m loadtests.reliability redis-kill        # the main job's own redis-server killed: restarted by it
    python -m loadtests.reliability redis-outage      # Redis killed and restarted under load
    python -m loadtests.reliability overload          # <= 1% refused at the sustainable rate, 3x it: p99 held
    python -m loadtests.reliability engine-failure    # the vLLM engine core killed under load (SIGKILL)
    python -m loadtests.reliability engine-stopped    # the same, SIGTERM: it aborts the requests it holds
    python -m loadtests.reliability main-job-killed   # the service killed outright: no process left behind
    python -m loadtests.reliability shutdown          # SIGTERM with requests in flight
    python -m loadtests.reliability bad-input         # schema fuzzing at a larger budget + hand-made bad bodies
    python -m loadtests.reliability all --out docs/results/reliability.json

Each scenario starts its own service, prints its figures as JSON, and fails (exit code 1) when a
promise is broken: a 500, an acknowledged event lost, a request hanging past its bound, memory
growing without bound, no recovery. Every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from loadtests.local_service import free_port, running_service, start_service, stop_service
from loadtests.run import MAX_SHED
from service.keys import Keys
from service.redis_server import EmbeddedRedis
from service.settings import Settings

KNOWN_USERS = [str(u) for u in range(1, 611)]  # ml-latest-small users
ITEM_IDS = ["1", "2", "3", "6", "50", "110", "260", "296", "318", "356", "480", "527", "589", "593", "2571"]
RECOMMEND_BOUND_S = 15.0  # no request may take longer than this (request timeout 10 s + slack)


class Broken(AssertionError):
    pass


def check(condition: bool, message: str, figures: dict | None = None) -> None:
    if not condition:
        raise Broken(message + (f" {json.dumps(figures)}" if figures else ""))


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`: pid -> command name."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        child, parent, name = line.split(None, 2)
        children.setdefault(int(parent), []).append((int(child), name))
    found, todo = {}, [pid]
    while todo:
        for child, name in children.get(todo.pop(), []):
            found[child] = name
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs: neither gone nor a zombie (an orphan's exit that nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def outliving(processes: dict[int, str], bound_s: float) -> dict[int, str]:
    """Those of `processes` still running `bound_s` from now, then SIGKILLed: nothing is left behind,
    whatever the verdict."""
    left, ends = dict(processes), time.monotonic() + bound_s
    while left and time.monotonic() < ends:
        time.sleep(0.1)
        left = {pid: name for pid, name in left.items() if alive(pid)}
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (gateway, engine core, redis-server)."""
    total = 0.0
    for current in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{current}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration):
            continue
    return total


async def recommend(client: httpx.AsyncClient, user: str | None = None) -> tuple[int, float, httpx.Response | None]:
    started = time.perf_counter()
    try:
        response = await client.post("/recommend", json={"user_id": user or random.choice(KNOWN_USERS), "k": 10},
                                     timeout=RECOMMEND_BOUND_S)
        return response.status_code, time.perf_counter() - started, response
    except httpx.TransportError:
        return -1, time.perf_counter() - started, None


async def open_loop(url: str, rate: float, seconds: float, make_request) -> list:
    """Requests at a fixed arrival rate (not waiting for answers), for `seconds`."""
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1000)) as client:
        tasks, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            tasks.append(asyncio.create_task(make_request(client)))
            await asyncio.sleep(random.expovariate(rate))
        return await asyncio.gather(*tasks)


# ---------------------------------------------------------------------------------------------
# Scenarios


def embedded_redis_kill(workdir: Path) -> dict:
    """The main job's own redis-server killed (SIGKILL): it is restarted, the service is ready again, and an
    event acknowledged before the kill is still there."""
    with running_service(workdir) as (url, process):
        with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
            check(client.post("/events", json={"user_id": "kill-test", "item_id": "1"}).status_code == 200, "event refused")
            pids = subprocess.run(["pgrep", "-P", str(process.pid), "redis-server"], capture_output=True,
                                  text=True).stdout.split()
            check(len(pids) == 1, f"expected one embedded redis-server, found {pids}")
            killed_at = time.monotonic()
            os.kill(int(pids[0]), signal.SIGKILL)
            ready_again = None
            while time.monotonic() - killed_at < 30:
                if client.get("/readyz").status_code == 200 and time.monotonic() - killed_at > 0.5:
                    ready_again = time.monotonic() - killed_at
                    break
                time.sleep(0.1)
            recommend_status = client.post("/recommend", json={"user_id": "kill-test", "k": 3}).json()
    figures = dict(ready_again_after_s=round(ready_again, 2) if ready_again else None,
                   history_after=recommend_status.get("history_length"))
    check(ready_again is not None, "the service did not become ready again after its Redis was killed", figures)
    check(figures["history_after"] == 1, "the acknowledged event was lost", figures)
    return figures


def two_replicas(workdir: Path, poll_s: float = 2.0) -> dict:
    """Two service processes on one Redis, as replicas behind a load balancer: an event written through one
    is used by the other's next recommendation, and a catalog change through one reaches the other
    within its poll interval. Nothing but Redis is shared."""
    server = EmbeddedRedis(free_port(), workdir / "redis-shared").start()
    try:
        with (running_service(workdir, workdir / "a.log", redis_url=server.url, hatrec_catalog_poll_s=poll_s) as (a, _),
              running_service(workdir, workdir / "b.log", redis_url=server.url, hatrec_catalog_poll_s=poll_s) as (b, _),
              httpx.Client(timeout=RECOMMEND_BOUND_S) as client):
            client.post(f"{a}/events", json={"events": [{"user_id": "replica-user", "item_id": i} for i in ("1", "50")]})
            seen_by_b = client.post(f"{b}/recommend", json={"user_id": "replica-user", "k": 5}).json()
            changes = {}
            for writer, reader, item in ((a, b, "replica-item"), (b, a, "replica-item-2")):
                client.put(f"{writer}/admin/catalog/items", json={"items": [{"item_id": item, "title": "Replica (2026)"}]})
                written = time.monotonic()
                while client.get(f"{reader}/catalog/items/{item}").status_code != 200 or \
                        client.get(f"{reader}/catalog").json()["version"] != client.get(f"{writer}/catalog").json()["version"]:
                    check(time.monotonic() - written < poll_s + 5, "a catalog change did not reach the other replica")
                    time.sleep(0.05)
                changes[f"{item}_visible_after_s"] = round(time.monotonic() - written, 2)
    finally:
        server.stop()
    figures = dict(history_length_at_other_replica=seen_by_b["history_length"], strategy=seen_by_b["strategy"],
                   catalog_poll_s=poll_s, **changes)
    check(seen_by_b["history_length"] == 2 and seen_by_b["strategy"] == "model",
          "the other replica did not use the event", figures)
    check(all(s <= poll_s + 1 for s in changes.values()), "a catalog change took longer than the poll interval", figures)
    return figures


def redis_outage(workdir: Path) -> dict:
    """Load + events while Redis is killed (SIGKILL) for a few seconds and started again."""
    server = EmbeddedRedis(free_port(), workdir / "redis-own").start()
    acked: list[tuple[str, str]] = []
    try:
        with running_service(workdir, redis_url=server.url) as (url, _process):
            outage = {}

            async def traffic():
                async with httpx.AsyncClient(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
                    results, n = [], 0
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        n += 1
                        user, item = f"outage-{n % 50}", random.choice(ITEM_IDS)
                        started = time.perf_counter()
                        try:
                            response = await client.post("/events", json={"user_id": user, "item_id": item})
                            status = response.status_code
                        except httpx.TransportError:
                            status = -1
                        if status == 200:
                            acked.append((user, item))
                        code, _, _ = await recommend(client)
                        results.append((time.monotonic(), status, code, time.perf_counter() - started))
                        await asyncio.sleep(0.05)
                    return results

            async def chaos():
                await asyncio.sleep(8)
                outage["start"] = time.monotonic()
                server.process.kill()
                server.process.wait()
                await asyncio.sleep(5)
                server.start()
                outage["end"] = time.monotonic()

            async def both():
                return await asyncio.gather(traffic(), chaos())

            results, _ = asyncio.run(both())
        client = redis.Redis(port=server.port, decode_responses=True)
        keys = Keys(Settings().redis_prefix)
        stored = {user: client.lrange(keys.history(user), 0, -1) for user in {u for u, _ in acked}}
        expected: dict[str, list[str]] = {}
        for user, item in acked:
            expected.setdefault(user, []).append(item)
        lost = sum(max(0, len(items) - len(stored.get(user, []))) for user, items in expected.items())
        mismatched = sum(stored.get(user, [])[-len(items):] != items for user, items in expected.items())
    finally:
        server.stop()
    during = [r for r in results if outage["start"] <= r[0] <= outage["end"]]
    after = [r for r in results if r[0] > outage["end"] + 1]
    recovered_at = next((r[0] for r in results if r[0] > outage["end"] and r[2] == 200), None)
    figures = dict(events_acknowledged=len(acked), events_lost=lost, histories_out_of_order=mismatched,
                   requests_during_outage=len(during),
                   outage_statuses=sorted({r[2] for r in during} | {r[1] for r in during}),
                   slowest_call_during_outage_s=round(max((r[3] for r in during), default=0), 3),
                   recovered_after_s=round(recovered_at - outage["end"], 2) if recovered_at else None,
                   errors_after_recovery=sum(r[2] != 200 or r[1] != 200 for r in after),
                   server_errors=sum(r[1] >= 500 and r[1] != 503 or r[2] >= 500 and r[2] != 503 for r in results))
    check(lost == 0 and mismatched == 0, "acknowledged events were lost")
    check(set(figures["outage_statuses"]) <= {200, 503}, "during the outage: only 503 (or 200 before it bit)")
    check(figures["slowest_call_during_outage_s"] < 3, "outage answers were not fast")
    check(recovered_at is not None and figures["recovered_after_s"] < 10, "no recovery within 10 s")
    check(figures["server_errors"] == 0, "5xx other than 503")
    return figures


def overload(workdir: Path, sustainable_rps: float, max_in_flight: int, admission_tolerance: float,
             admission_slack_ms: float, engine_cpu_bind: str | None, max_shed: float) -> dict:
    """At the sustainable arrival rate at most `max_shed` refused; at 3x it, the excess shed with 429 +
    Retry-After and the rest keep their p99. `max_in_flight` caps the admission bound; `admission_tolerance`
    0 holds it there, `admission_slack_ms` is the queueing it lets pass (service/admission.py)."""
    settings = dict(hatrec_max_in_flight=max_in_flight, hatrec_admission_tolerance=admission_tolerance,
                    hatrec_admission_slack_ms=admission_slack_ms, hatrec_request_timeout_s=10)
    if engine_cpu_bind:
        settings["hatrec_engine_cpu_bind"] = engine_cpu_bind
    with running_service(workdir, **settings) as (url, process):
        asyncio.run(open_loop(url, 2, 5, recommend))  # warm-up: first engine steps allocate and load
        baseline = asyncio.run(open_loop(url, sustainable_rps, 40, recommend))  # 400 at 10/s: a p99 of 200 is noise
        limit_at_sustainable = admission_limit(url)
        rss_before = rss_mib(process.pid)
        results = asyncio.run(open_loop(url, 3 * sustainable_rps, 40, recommend))
        limit_at_3x = admission_limit(url)
        rss_after = rss_mib(process.pid)
    ok_base = [s for code, s, _ in baseline if code == 200]
    ok = [s for code, s, _ in results if code == 200]
    shed = [r for code, _, r in results if code == 429]
    p99 = lambda xs: sorted(xs)[int(0.99 * (len(xs) - 1))] if xs else None  # noqa: E731
    other = Counter(code for code, _, _ in results if code not in (200, 429))
    figures = dict(sustainable_rps=sustainable_rps, offered_rps=3 * sustainable_rps, max_in_flight=max_in_flight,
                   admission_tolerance=admission_tolerance, admission_slack_ms=admission_slack_ms,
                   admission_limit_after_sustainable=limit_at_sustainable,
                   admission_limit_after_3x=limit_at_3x, engine_cpu_bind=engine_cpu_bind or "default",
                   requests=len(results), answered_200=len(ok), shed_429=len(shed), other=dict(other),
                   shed_at_sustainable=sum(code == 429 for code, _, _ in baseline), requests_at_sustainable=len(baseline),
                   p99_at_sustainable_s=round(p99(ok_base), 3), p99_admitted_at_3x_s=round(p99(ok), 3),
                   slowest_s=round(max(s for _, s, _ in results), 3),
                   retry_after_on_every_429=all(r.headers.get("Retry-After") for r in shed),
                   rss_mib_before=round(rss_before), rss_mib_after=round(rss_after))
    check(figures["shed_at_sustainable"] <= max_shed * len(baseline), "refused at the sustainable rate", figures)
    check(figures["shed_429"] > 0 and figures["retry_after_on_every_429"], "no shedding with Retry-After", figures)
    check(figures["p99_admitted_at_3x_s"] <= 1.5 * figures["p99_at_sustainable_s"] + 0.5,
          "admitted requests lost their p99", figures)
    check(set(other) <= {503}, f"unexpected statuses {dict(other)} (-1: no answer)", figures)
    check(figures["slowest_s"] < RECOMMEND_BOUND_S, "a request hung", figures)
    check(rss_after < rss_before * 1.2 + 200, "memory grew without bound", figures)
    return figures


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text exposition, keyed by name and label set."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def admission_limit(url: str) -> float:
    """The service's admission bound now, from its /metrics."""
    limit = metric_samples(httpx.get(f"{url}/metrics").text).get(("hatrec_recommend_admission_limit", frozenset()))
    if limit is None:
        raise Broken("no hatrec_recommend_admission_limit in /metrics")
    return limit


def first_start(workdir: Path, first_request_bound_s: float | None = 1.0) -> dict:
    """A first start with an empty kernel cache (a new pod): the kernel is built before /readyz turns 200,
    and the first recommendation after ready answers within a second (the bound is checked on a quiet
    machine: CI runs this with other jobs and leaves it out)."""
    kernels = workdir / "torch_extensions"
    started = time.monotonic()
    with running_service(workdir, torch_extensions_dir=kernels) as (url, _process):
        ready_after = time.monotonic() - started
        built = any(kernels.rglob("*.so"))
        with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
            sent = time.monotonic()
            first = client.post("/recommend", json={"user_id": "1", "k": 10})
            first_s = time.monotonic() - sent
            second_s = time.monotonic()
            client.post("/recommend", json={"user_id": "2", "k": 10})
            second_s = time.monotonic() - second_s
        says_where = f"serving on {url} " in (workdir / "service.log").read_text()
    figures = dict(ready_after_s=round(ready_after, 1), kernel_built_before_ready=built, first_status=first.status_code,
                   first_request_s=round(first_s, 3), second_request_s=round(second_s, 3), says_where=says_where)
    check(built, "/readyz turned 200 before the kernel was built", figures)
    check(says_where, "the log does not say where the service answers", figures)
    check(first.status_code == 200 and first.json()["strategy"] == "model", "the first recommendation failed", figures)
    if first_request_bound_s is not None:
        check(first_s <= first_request_bound_s, f"the first recommendation after ready took more than "
                                                f"{first_request_bound_s} s", figures)
    return figures


def engine_failure(workdir: Path, stop_signal: int = signal.SIGKILL, users: int = 4) -> dict:
    """The engine core killed (SIGKILL, a crash) or stopped (SIGTERM: it aborts the requests it holds) under
    load: every recommendation answers 200, 503, or 429 (admission sheds the load that waits on a dying engine),
    never 500; unready at once; then the service exits with code 3 for its supervisor."""
    with running_service(workdir) as (url, process):
        engine_pids = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "EngineCore"], capture_output=True,
                                     text=True).stdout.split()
        check(bool(engine_pids), "no engine core process found")
        answers: list[tuple[float, int]] = []  # (answered at, status) of every recommendation

        def recommend_until_gone() -> None:
            with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
                while process.poll() is None:
                    try:
                        status = client.post("/recommend", json={"user_id": "1"}).status_code
                    except httpx.TransportError:
                        return
                    answers.append((time.monotonic(), status))

        load = [threading.Thread(target=recommend_until_gone) for _ in range(users)]
        for thread in load:
            thread.start()
        time.sleep(2)
        killed_at = time.monotonic()
        for pid in engine_pids:
            os.kill(int(pid), stop_signal)
        unready_after = None
        with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
            while unready_after is None and process.poll() is None and time.monotonic() - killed_at < 60:
                try:
                    if client.get("/readyz").status_code == 503:
                        unready_after = time.monotonic() - killed_at
                except httpx.TransportError:
                    break
                time.sleep(0.05)
        exit_code = process.wait(timeout=60)
        exited_after = time.monotonic() - killed_at
        for thread in load:
            thread.join()
    before = [status for answered, status in answers if answered < killed_at]
    after = Counter(status for answered, status in answers if answered >= killed_at)  # in flight at the kill too
    figures = dict(signal=signal.Signals(stop_signal).name, answered_200_before=before.count(200),
                   unready_after_s=round(unready_after, 2) if unready_after else None,
                   statuses_from_the_kill=dict(after), statuses_before=dict(Counter(before)),
                   exit_code=exit_code, exited_after_s=round(exited_after, 1))
    check(200 in before and set(before) <= {200, 429}, "not serving before", figures)  # 429: the bound adapting
    check(unready_after is not None and unready_after < 5, "/readyz did not turn unready", figures)
    check(set(after) <= {200, 429, 503} and 503 in after, "recommendations did not get 200, 429 or 503", figures)
    check(exit_code == 3, f"the service exited with {exit_code}, not 3", figures)
    return figures


def main_job_killed(workdir: Path, bound_s: float = 10.0) -> dict:
    """The main job killed outright (SIGKILL, as the OOM killer does): its engine core, redis-server and
    every other process it started exit within `bound_s`, none left holding memory, the port or the data;
    a new main job on the same Redis port and data starts and has the event acknowledged before."""
    redis_port = free_port()
    with running_service(workdir, hatrec_embedded_redis_port=redis_port) as (url, process):
        with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
            check(client.post("/events", json={"user_id": "kill-test", "item_id": "1"}).status_code == 200, "event refused")
        started = descendants(process.pid)
        process.kill()
        process.wait()
        killed_at = time.monotonic()
        left = outliving(started, bound_s)
        gone_after = time.monotonic() - killed_at
    figures = dict(processes_started=sorted(started.values()), left_after_bound=sorted(left.values()),
                   all_gone_after_s=round(gone_after, 2) if not left else None)
    check(any(name.startswith("VLLM::EngineCor") for name in started.values())  # ps cuts names at 15 characters
          and "redis-server" in started.values(),
          "the service did not start an engine core and a redis-server", figures)
    check(not left, f"processes outlived the killed main job by {bound_s} s", figures)
    with running_service(workdir, hatrec_embedded_redis_port=redis_port) as (url, process):
        with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
            figures["history_after_restart"] = client.post("/recommend", json={"user_id": "kill-test", "k": 3}).json().get("history_length")
    check(figures["history_after_restart"] == 1, "the acknowledged event was lost", figures)
    return figures


def open_on_network(workdir: Path) -> dict:
    """No API keys on a non-loopback address: the service refuses to start (every route would be open)."""
    log = workdir / "service.log"
    process = start_service(free_port(), str(workdir / "redis"), log, {"HATREC_HOST": "0.0.0.0"})
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop_service(process)
        code = None
    figures = dict(exit_code=code, says_why="not a loopback address" in log.read_text())
    check(code not in (None, 0) and figures["says_why"], "the service started open on a network address", figures)
    return figures


def second_main_job(workdir: Path, bound_s: float = 60.0) -> dict:
    """A second `python -m service` on this machine finds the first's HTTP port, its embedded Redis's port or
    that Redis's data folder taken: it exits with code 1 before starting an engine, saying which, and
    touches nothing of the first's (it used to serve from the first's Redis, or wait forever)."""
    first_redis = EmbeddedRedis(free_port(), workdir / "first-redis").start()
    first_http = socket.create_server(("127.0.0.1", free_port()))
    taken = {"http_port": ({"HATREC_PORT": str(first_http.getsockname()[1])}, "cannot listen on"),
             "redis_port": ({"HATREC_EMBEDDED_REDIS_PORT": str(first_redis.port)}, "Address already in use"),
             "redis_folder": ({"HATREC_EMBEDDED_REDIS_DIR": str(first_redis.data_dir)}, "in use by another embedded")}
    figures = {}
    try:
        for name, (env, why) in taken.items():
            log = workdir / f"{name}.log"
            started = time.monotonic()
            process = start_service(free_port(), str(workdir / "second-redis"), log, env)
            try:
                code = process.wait(timeout=bound_s)
            except subprocess.TimeoutExpired:
                stop_service(process)
                code = None
            figures[name] = dict(exit_code=code, says_why=why in log.read_text(),
                                 exited_after_s=round(time.monotonic() - started, 1))
        figures["keys_written_to_the_first_redis"] = redis.Redis(port=first_redis.port).dbsize()
    finally:
        first_http.close()
        first_redis.stop()
    check(all(figures[name]["exit_code"] == 1 and figures[name]["says_why"] for name in taken),
          "a second main job did not exit with code 1 saying what is taken", figures)
    check(figures["keys_written_to_the_first_redis"] == 0, "a second main job wrote to the first's Redis", figures)
    return figures


def interrupted_start(workdir: Path, bound_s: float = 60.0) -> dict:
    """Ctrl-C while starting: the terminal signals the main job and the engine core alike. Once when the engine
    core has just started, once during the warm-up recommendations. Each time it exits with 130 (it used to say
    'did not start' and exit 1), leaves no process behind, and gives a warm-up up rather than waiting it out
    (vLLM may not fail a request its stopping engine core held until the request's timeout)."""
    figures = {}
    for moment in ("engine_started", "warming_up"):
        log = workdir / f"{moment}.log"
        process = start_service(free_port(), str(workdir / moment), log, {})
        deadline = time.monotonic() + 120
        started = {}
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            started = descendants(process.pid)
            engine_up = any(name.startswith("VLLM::EngineCor") for name in started.values())
            if engine_up and (moment == "engine_started" or "warming up" in log.read_text()):
                break
        group = os.getpgid(process.pid)
        for pid in [process.pid, *started]:  # as a terminal signals its foreground process group
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == group:
                    os.kill(pid, signal.SIGINT)
        interrupted = time.monotonic()
        try:
            code = process.wait(timeout=bound_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = None
        exited_after = time.monotonic() - interrupted
        left = outliving(started, 5)  # multiprocessing's tracker exits just after its parent
        text = log.read_text()
        figures[moment] = dict(processes_started=sorted(started.values()), exit_code=code,
                               exited_after_s=round(exited_after, 1), left_behind=len(left),
                               warm_up_given_up="the warm-up is given up" in text,
                               warm_up_finished="warm-up recommendations through the engine:" in text)
        check(any(name.startswith("VLLM::EngineCor") for name in started.values()), "no engine core started", figures)
        check(code == 128 + signal.SIGINT and not left, "an interrupted start did not end as Ctrl-C should", figures)
    check(figures["warming_up"]["warm_up_given_up"], "a warm-up under way was waited out, not given up", figures)
    return figures


def security(workdir: Path) -> dict:
    """Scoped keys: reads, writes and admin each need their scope; an allow-list with exclude_seen needs a
    trusted key; a huge title is refused and never blocks anyone's recommendations."""
    keys = [{"name": "reader", "key": "r", "scopes": ["read"]}, {"name": "writer", "key": "w", "scopes": ["write"]},
            {"name": "admin", "key": "a", "scopes": ["admin"]}, {"name": "backend", "key": "t", "scopes": ["read", "trusted"]}]
    with running_service(workdir, hatrec_api_keys=json.dumps(keys)) as (url, _process):
        with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
            as_ = lambda key: {"X-API-Key": key}  # noqa: E731
            probe = {"user_id": "7", "k": 40, "filters": {"allow": ITEM_IDS}}
            statuses = {
                "recommend_without_key": client.post("/recommend", json={"user_id": "1"}).status_code,
                "recommend_as_writer": client.post("/recommend", json={"user_id": "1"}, headers=as_("w")).status_code,
                "recommend_as_reader": client.post("/recommend", json={"user_id": "1"}, headers=as_("r")).status_code,
                "events_as_reader": client.post("/events", json={"user_id": "1", "item_id": "1"}, headers=as_("r")).status_code,
                "events_as_writer": client.post("/events", json={"user_id": "1", "item_id": "1"}, headers=as_("w")).status_code,
                "delete_as_writer": client.delete("/admin/catalog/items/1", headers=as_("w")).status_code,
                "history_probe_as_reader": client.post("/recommend", json=probe, headers=as_("r")).status_code,
                "history_probe_as_trusted": client.post("/recommend", json=probe, headers=as_("t")).status_code,
                "huge_title_as_admin": client.put("/admin/catalog/items", headers=as_("a"), json={
                    "items": [{"item_id": "huge", "title": "\U0001f600" * 1000}]}).status_code,
                "recommend_after": client.post("/recommend", json={"user_id": "1"}, headers=as_("r")).status_code,
            }
    expected = dict(recommend_without_key=401, recommend_as_writer=403, recommend_as_reader=200, events_as_reader=403,
                    events_as_writer=200, delete_as_writer=403, history_probe_as_reader=403,
                    history_probe_as_trusted=200, huge_title_as_admin=422, recommend_after=200)
    check(statuses == expected, "a route answered a caller it should not have", dict(statuses=statuses))
    return statuses


def exclude_seen(workdir: Path) -> dict:
    """A user with 50 events (more than the prompt's history): none of their items is recommended."""
    with running_service(workdir) as (url, _process):
        with httpx.Client(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
            items = ["1", "2", "3", "6", "50", "110", "260", "296", "318", "356"] * 5  # 10 popular items, 50 events
            client.post("/events", json={"events": [{"user_id": "fifty", "item_id": i} for i in items]})
            answer = client.post("/recommend", json={"user_id": "fifty", "k": 100}).json()
            unfiltered = client.post("/recommend", json={"user_id": "fifty", "k": 100, "exclude_seen": False}).json()
    shown = {i["item_id"] for i in answer["items"]}
    figures = dict(history_length=answer["history_length"], seen_recommended=sorted(shown & set(items)),
                   seen_in_top100_without_exclusion=len({i["item_id"] for i in unfiltered["items"]} & set(items)))
    check(not figures["seen_recommended"], "seen items were recommended", figures)
    return figures


def shutdown(workdir: Path) -> dict:
    """SIGTERM with 16 requests in flight: they finish, new connections are refused, exit in bound."""
    with running_service(workdir, hatrec_max_in_flight=16, hatrec_admission_tolerance=0) as (url, process):  # all 16 admitted
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=RECOMMEND_BOUND_S) as client:
                in_flight = [asyncio.create_task(recommend(client, str(u))) for u in range(1, 17)]
                await asyncio.sleep(0.3)
                process.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                await asyncio.sleep(0.5)
                async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
                    late = await recommend(fresh)
                finished = await asyncio.gather(*in_flight)
                return finished, late, sent

        finished, late, sent = asyncio.run(scenario())
        exit_code = process.wait(timeout=60)
        exited_after = time.monotonic() - sent
    figures = dict(in_flight=len(finished), in_flight_answered_200=sum(code == 200 for code, _, _ in finished),
                   new_request_after_sigterm=late[0], exit_code=exit_code, exited_after_s=round(exited_after, 1))
    check(figures["in_flight_answered_200"] == len(finished), "in-flight requests were dropped",
          dict(figures, statuses=sorted(code for code, _, _ in finished)))
    check(late[0] in (-1, 503), "a new request was accepted after SIGTERM")
    check(exited_after < 45, "shutdown took too long")
    return figures


def fuzz_schema(url: str, examples: int) -> dict[int, int]:
    """Schemathesis over every operation of the service's OpenAPI schema: status -> count. A response
    that is not JSON (or text, for /metrics) counts as status 0."""
    import hypothesis
    import schemathesis

    statuses: dict[int, int] = {}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def call(case):
            response = case.call()
            content_type = (response.headers.get("content-type") or [""])[0]  # header -> list of values
            status = response.status_code if content_type.startswith(("application/json", "text/plain")) else 0
            statuses[status] = statuses.get(status, 0) + 1

        call()
    return statuses


def bad_input(workdir: Path, examples: int) -> dict:
    """Schema fuzzing at a larger budget, plus oversized, malformed and odd bodies."""
    with running_service(workdir) as (url, _process):
        statuses = fuzz_schema(url, examples)
        tried = sum(statuses.values())
        hand_made = [
            ("POST", "/recommend", b'{"user_id": "1", "k": 1000000000000}'),
            ("POST", "/recommend", b'{"user_id": "1", "k": -1}'),
            ("POST", "/recommend", b'{"user_id": "\\u00e9\\u6f22\\ud83d\\ude00", "k": 3}'),
            ("POST", "/recommend", b'{"user_id": "1", "history": ["\\u0000"]}'),
            ("POST", "/recommend", b"\xff\xfe not utf-8"),
            ("POST", "/recommend", b'{"user_id": "1"' * 10),
            ("POST", "/recommend", b"[" * 100000 + b"]" * 100000),
            ("POST", "/recommend", b'{"user_id": "' + b"x" * 3_000_000 + b'"}'),
            ("POST", "/events", b'{"events": []}'),
            ("POST", "/events", json.dumps({"events": [{"user_id": "u", "item_id": "1"}] * 5000}).encode()),
            ("PUT", "/admin/catalog/items", json.dumps({"items": [{"item_id": "z1", "title": "\u00e9\u6f22 \U0001f600 (2026)"}]}).encode()),
            ("PUT", "/admin/catalog/items", json.dumps({"items": [{"item_id": "z2", "title": "   "}]}).encode()),
            ("GET", "/catalog/items/%00%ff", b""),
            # Non-finite numbers, lone surrogates in every text field, coercible values, odd timestamps (#13).
            *[("POST", "/recommend", b'{"user_id": "1", "k": ' + k + b"}") for k in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"true", b'"5"')],
            ("POST", "/recommend", b'{"user_id": "\\ud800", "k": 3}'),
            ("POST", "/recommend", b'{"user_id": "1", "history": ["\\ud800"]}'),
            ("POST", "/events", b'{"user_id": "1", "item_id": "\\ud800"}'),
            ("PUT", "/admin/catalog/items", b'{"items": [{"item_id": "z3", "title": "\\ud800 (2026)"}]}'),
            *[("POST", "/events", b'{"user_id": "u", "item_id": "1", "timestamp": ' + t + b"}") for t in (b"NaN", b"1e12", b"-1e12")],
        ]
        with httpx.Client(base_url=url, timeout=30) as client:
            for method, path, body in hand_made:
                tried += 1
                status = client.request(method, path, content=body, headers={"content-type": "application/json"}).status_code
                statuses[status] = statuses.get(status, 0) + 1
            for headers in ({"content-type": "text/plain"}, {"content-type": "application/json", "X-API-Key": "\u00e9".encode()}):
                tried += 1
                status = client.post("/recommend" if "X-API-Key" not in headers else "/events",
                                     content=b"\xff\xfe not utf-8", headers=headers).status_code
                statuses[status] = statuses.get(status, 0) + 1
    figures = dict(inputs_tried=tried, statuses=dict(sorted(statuses.items())),
                   server_errors=sum(n for s, n in statuses.items() if s >= 500 and s != 503))
    check(figures["server_errors"] == 0, "some input got a 5xx")
    check(0 not in statuses, "some answer was not JSON")
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["first-start", "open-on-network", "second-main-job", "interrupted-start",
                                        "security", "exclude-seen", "two-replicas",
                                        "redis-kill",
                                        "redis-outage", "overload", "engine-failure", "engine-stopped", "main-job-killed", "shutdown", "bad-input",
                                        "all"])
    p.add_argument("--sustainable-rps", type=float, default=10.0,
                   help="recommendations/s the service holds; 3x this is offered (docs/operations.md)")
    p.add_argument("--max-in-flight", type=int, default=6, help="HATREC_MAX_IN_FLIGHT for the overload run")
    p.add_argument("--admission-tolerance", type=float, default=Settings.model_fields["admission_tolerance"].default,
                   help="HATREC_ADMISSION_TOLERANCE for the overload run (default: the service's, adaptive; "
                        "0: a fixed bound at --max-in-flight)")
    p.add_argument("--admission-slack-ms", type=float, default=Settings.model_fields["admission_slack_ms"].default,
                   help="HATREC_ADMISSION_SLACK_MS for the overload run (default: the service's)")
    p.add_argument("--max-shed", type=float, default=MAX_SHED,
                   help="the largest share the overload run may refuse at the sustainable rate")
    p.add_argument("--engine-cpu-bind", help="HATREC_ENGINE_CPU_BIND for the overload run (default: the service's)")
    p.add_argument("--fuzz-examples", type=int, default=200)
    p.add_argument("--out", help="write the figures here (JSON)")
    args = p.parse_args()
    scenarios = {
        "first-start": first_start,
        "open-on-network": open_on_network,
        "second-main-job": second_main_job,
        "interrupted-start": interrupted_start,
        "security": security,
        "exclude-seen": exclude_seen,
        "two-replicas": two_replicas,
        "redis-kill": embedded_redis_kill,
        "redis-outage": redis_outage,
        "overload": lambda d: overload(d, args.sustainable_rps, args.max_in_flight, args.admission_tolerance,
                                      args.admission_slack_ms, args.engine_cpu_bind, args.max_shed),
        "engine-failure": engine_failure,
        "engine-stopped": lambda d: engine_failure(d, signal.SIGTERM),
        "main-job-killed": main_job_killed,
        "shutdown": shutdown,
        "bad-input": lambda d: bad_input(d, args.fuzz_examples),
    }
    chosen = list(scenarios) if args.scenario == "all" else [args.scenario]
    results, failed = {}, False
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"hatrec-{name}-") as workdir:
            started = time.monotonic()
            try:
                results[name] = dict(ok=True, **scenarios[name](Path(workdir)))
            except Broken as exc:
                failed = True
                results[name] = dict(ok=False, broken=str(exc))
                print(f"{name}: service log in {workdir}/service.log:", (Path(workdir) / "service.log").read_text()[-3000:])
            results[name]["seconds"] = round(time.monotonic() - started, 1)
            print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        settings = {name: value for name, value in os.environ.items()  # the services' settings, secrets left out
                    if name.startswith("HATREC_") and "KEY" not in name and "PASSWORD" not in name}
        command = " ".join([*(f"{name}={shlex.quote(value)}" for name, value in sorted(settings.items())),
                            "python -m loadtests.reliability", *sys.argv[1:]])
        Path(args.out).write_text(json.dumps(dict(command=command, results=results), indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
