"""Small pure functions of the service (no Redis, no engine)."""

import io
import logging
import os
import time
from pathlib import Path

import pytest

from service.engine import cpu_bind
from service.settings import Settings


def test_cpu_bind():
    cpus = sorted(os.sched_getaffinity(0))
    assert cpu_bind("all") in (f"{cpus[0]}-{cpus[-1]}", "auto")
    assert cpu_bind("auto") == "auto" and cpu_bind("0-3") == "0-3"


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("HATREC_MAX_IN_FLIGHT", "7")
    settings = Settings()
    assert settings.redis_url == "redis://example:6379/1" and settings.max_in_flight == 7
    monkeypatch.setenv("HATREC_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValueError, match="max_in_flight"):
        Settings()


def test_key_ring_scopes(tmp_path, monkeypatch):
    from service.api_keys import ALL_SCOPES, KeyRing, configured_keys, main

    main(["--out", str(tmp_path / "keys.json")])
    monkeypatch.setenv("HATREC_API_KEYS", '[{"name": "extra", "key": "xyzzy-secret", "scopes": ["read", "trusted"]}]')
    monkeypatch.setenv("HATREC_API_KEYS_FILE", str(tmp_path / "keys.json"))
    settings = Settings()
    keys = configured_keys(settings.api_keys, settings.api_keys_file, settings.api_key)
    assert [k.name for k in keys] == ["extra", "reader", "writer", "admin"] and "xyzzy" not in repr(keys)
    ring = KeyRing(keys)
    reader = next(k for k in keys if k.name == "reader").key.get_secret_value()
    assert ring.scopes(reader) == {"read"} and ring.scopes("xyzzy-secret") == {"read", "trusted"}
    assert ring.scopes("wrong") == ring.scopes(None) == ring.scopes("\u00e9") == frozenset()
    assert KeyRing([]).scopes(None) == ALL_SCOPES  # no keys: open
    assert oct((tmp_path / "keys.json").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("HATREC_API_KEYS", '[{"name": "x", "key": "k", "scopes": ["everything"]}]')
    with pytest.raises(ValueError, match="scopes"):
        Settings()


def test_open_routes_only_on_a_loopback_address(hat_checkpoint):
    from service.services import Services

    with pytest.raises(ValueError, match="not a loopback address"):
        Services(Settings(redis_url="redis://127.0.0.1:1/0", model_path=str(hat_checkpoint), host="0.0.0.0"))
    keyed = Services(Settings(redis_url="redis://127.0.0.1:1/0", model_path=str(hat_checkpoint), host="0.0.0.0",
                              api_key="k"))
    assert keyed.keys.scopes("k") and not keyed.keys.scopes("other")


def test_a_missing_model_is_named_as_the_setting(tmp_path):
    from service.services import Services

    with pytest.raises(ValueError, match=f"no model at HATREC_MODEL_PATH={tmp_path / 'none'}"):
        Services(Settings(redis_url="redis://127.0.0.1:1/0", model_path=str(tmp_path / "none")))


def test_main_job_that_cannot_start_says_why_and_exits_1(tmp_path, caplog):
    """Before an engine starts: the HTTP port taken, a dataset that is not there (with an empty Redis), no API keys
    on a network address, a keys file that cannot be read or holds a malformed key (not echoed)."""
    import socket

    from loadtests.local_service import free_port
    from service.__main__ import NOT_STARTED_EXIT_CODE, serve

    def settings(**changes) -> Settings:
        return Settings(**{"port": free_port(), "embedded_redis_port": free_port(),
                           "embedded_redis_dir": tmp_path / "redis", **changes})

    caplog.set_level(logging.ERROR)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert serve(settings(port=taken.getsockname()[1])) == NOT_STARTED_EXIT_CODE
    assert serve(settings(dataset=str(tmp_path / "none"))) == NOT_STARTED_EXIT_CODE
    assert serve(settings(host="0.0.0.0")) == NOT_STARTED_EXIT_CODE
    assert serve(settings(host="0.0.0.0", api_keys_file=tmp_path / "keys.json")) == NOT_STARTED_EXIT_CODE
    (tmp_path / "keys.json").write_text('[{"nam": "x", "key": "the-secret", "scopes": ["read"]}]')
    assert serve(settings(api_keys_file=tmp_path / "keys.json")) == NOT_STARTED_EXIT_CODE
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "cannot listen on 127.0.0.1", "cannot load HATREC_DATASET",
        "no API keys, and HATREC_HOST=0.0.0.0 is not a loopback address", "cannot read HATREC_API_KEYS_FILE",
        "bad HATREC_API_KEYS_FILE at 0.name"]
    assert not any("secret" in r.getMessage() for r in caplog.records)


def test_main_job_options_override_the_environment(monkeypatch, capsys):
    from service.__main__ import command_line_settings

    monkeypatch.setenv("HATREC_PORT", "8005")
    monkeypatch.setenv("HATREC_MAX_K", "7")
    settings = command_line_settings(["--port", "9001", "--no-fusion", "--dataset", "null"])
    assert (settings.port, settings.max_k, settings.fusion, settings.dataset) == (9001, 7, False, None)
    for args, code in (["--help"], 0), (["--bogus"], 2):
        with pytest.raises(SystemExit) as exited:
            command_line_settings(args)
        assert exited.value.code == code
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: python -m service") and "--max-in-flight" in help_text
    assert "HATREC_<SETTING>" in help_text


def test_main_job_with_refused_settings_names_them_and_exits_1(monkeypatch, caplog):
    from service import __main__ as main_job

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr("sys.argv", ["service", "--port", "http", "--max-k", "0", "--api-keys",
                                     '[{"name": "x", "key": "the-secret", "scopes": ["everything"]}]'])
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as exited:
        main_job.main()
    assert exited.value.code == main_job.NOT_STARTED_EXIT_CODE
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(":")[0] for line in lines] == [
        "bad setting --port or HATREC_PORT", "bad setting --max-k or HATREC_MAX_K",
        "bad setting --api-keys or HATREC_API_KEYS at 0.scopes.0"]
    assert not any("the-secret" in line for line in lines)
    assert main_job.setting_names("redis_url") == "--redis-url or REDIS_URL"


def test_embedded_redis_is_restarted_after_a_crash(tmp_path):
    import signal
    import time

    import redis

    from loadtests.local_service import free_port
    from service.redis_server import EmbeddedRedis

    server = EmbeddedRedis(free_port(), tmp_path, restart=True).start()
    try:
        client = redis.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=0.2)
        client.rpush("history", "1", "2")
        server.process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            try:
                assert client.lrange("history", 0, -1) == [b"1", b"2"]  # the AOF had it
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server was not restarted"
                time.sleep(0.1)
        assert server.restarts == 1
    finally:
        server.stop()
    assert server.process is None and server.restarts == 1  # stopped on purpose: not restarted


def test_embedded_redis_will_not_use_another_ones_port_or_data(tmp_path):
    """A second main job must not take the first's Redis over: another Redis on the port, or another embedded
    one on the data folder, fails its start with an error that says so, and the other runs on untouched."""
    import redis

    from loadtests.local_service import free_port
    from service.redis_server import EmbeddedRedis

    first = EmbeddedRedis(free_port(), tmp_path / "first").start()
    try:
        with pytest.raises(RuntimeError, match=f"port {first.port}: .*Address already in use"):
            EmbeddedRedis(first.port, tmp_path / "second").start()
        with pytest.raises(RuntimeError, match="in use by another embedded redis-server"):
            EmbeddedRedis(free_port(), tmp_path / "first").start()
        assert redis.Redis(port=first.port).info("server")["process_id"] == first.process.pid
    finally:
        first.stop()
    EmbeddedRedis(free_port(), tmp_path / "first").start().stop()  # the folder is free once the first stopped


def test_a_watcher_stops_even_when_its_cancellation_is_lost():
    import asyncio

    from service.background import every

    async def scenario() -> tuple[bool, int]:
        stopping, rounds = asyncio.Event(), []

        async def step():
            rounds.append(time.monotonic())
            if len(rounds) == 3:
                try:
                    await asyncio.sleep(0.2)
                except asyncio.CancelledError:  # lost, as Python 3.11's asyncio.wait_for loses it in a Redis call
                    pass

        watcher = asyncio.create_task(every(0.01, step, stopping))
        while len(rounds) < 3:
            await asyncio.sleep(0.005)
        stopping.set()
        watcher.cancel()
        done, _ = await asyncio.wait([watcher], timeout=1)
        return bool(done), len(rounds)

    assert asyncio.run(scenario()) == (True, 3)  # ended after the round it was in, not one round more


def test_redis_password_from_a_file(tmp_path):
    (tmp_path / "pw").write_text("p@ss/word\n")
    settings = Settings(redis_url="redis://redis:6379/0", redis_password_file=tmp_path / "pw")
    assert settings.redis_connection_url() == "redis://:p%40ss%2Fword@redis:6379/0"
    assert "p@ss" not in repr(settings) and Settings(redis_url="redis://r:1/0").redis_connection_url() == "redis://r:1/0"


def test_in_flight_bound_is_sized_for_the_machine(hat_checkpoint):
    """A ceiling per core, under which the bound adapts to the decodes measured on this machine."""
    from service.services import Services
    from service.settings import IN_FLIGHT_PER_CORE

    services = Services(Settings(redis_url="redis://127.0.0.1:1/0", model_path=str(hat_checkpoint)))
    assert services.settings.max_in_flight == IN_FLIGHT_PER_CORE * len(os.sched_getaffinity(0))
    assert services.recommender.admission.tolerance > 0  # adaptive by default (docs/operations.md)
    assert Services(Settings(redis_url="redis://127.0.0.1:1/0", model_path=str(hat_checkpoint),
                             max_in_flight=5)).settings.max_in_flight == 5


def test_fixed_admission_bound():
    from service.admission import AdmissionLimit

    limit = AdmissionLimit(ceiling=2, tolerance=0, slack_s=0)
    assert limit.admit() and limit.admit() and not limit.admit()
    for _ in range(20):
        limit.observe(5.0, alone=False)  # slow decodes do not move a fixed bound
    limit.release()
    assert limit.limit == 2 and limit.admit()


def calibrated(ceiling: int, lone_seconds: float = 0.1, slack_s: float = 0.0):
    from service.admission import MIN_BASELINE_SAMPLES, AdmissionLimit

    limit = AdmissionLimit(ceiling, tolerance=2.0, slack_s=slack_s)
    limit.observe(9.0, alone=False)  # no baseline yet: the bound stays at its ceiling
    assert limit.limit == ceiling
    for _ in range(MIN_BASELINE_SAMPLES):
        limit.observe(lone_seconds, alone=True)
    return limit


def test_admission_bound_drops_when_decodes_queue():
    limit = calibrated(ceiling=6)
    assert limit.limit == 6
    for _ in range(6):
        assert limit.admit()
    limit.observe(0.19, alone=False)  # within 2x the lone decodes' 90th percentile: no queueing
    assert limit.limit == 6
    limit.observe(0.5, alone=False)  # 2.5x the target: the bound shrinks in proportion
    assert limit.limit == 2 and not limit.admit()
    for _ in range(limit.in_flight):  # requests admitted under the old bound are not held against the new one
        limit.observe(0.5, alone=False)
    assert limit.limit == 2
    limit.observe(0.5, alone=False)
    assert limit.limit == 1
    for _ in range(10):
        limit.observe(9.0, alone=False)
    assert limit.limit == 1  # never below one


def test_queueing_within_the_slack_leaves_the_bound():
    from prometheus_client import REGISTRY

    limit = calibrated(ceiling=6, lone_seconds=0.01, slack_s=0.1)  # 2x the lone decodes alone would be 0.02 s
    for _ in range(6):
        assert limit.admit()
    limit.observe(0.1, alone=False)  # 10x a lone decode, but only 90 ms of queueing
    assert limit.limit == 6
    assert REGISTRY.get_sample_value("hatrec_recommend_admission_target_seconds") == pytest.approx(0.11)
    limit.observe(0.22, alone=False)  # twice the target: halved
    assert limit.limit == 3


def test_admission_bound_rises_on_refusals_with_fast_decodes():
    limit = calibrated(ceiling=3)
    limit.admit(), limit.admit(), limit.admit()
    limit.observe(0.5, alone=False)
    assert limit.limit == 1
    for _ in range(4):
        limit.observe(0.1, alone=False)  # fast, but the lowered bound was not reached: no reason to admit more
    assert limit.limit == 1
    for expected in (2, 3, 3):
        while limit.admit():
            pass  # up to the bound, then one refused
        for _ in range(limit.in_flight):  # the first finishes were admitted under the old bound
            limit.observe(0.1, alone=False)
            limit.release()
        assert limit.limit == expected  # never above the ceiling


def test_admission_bound_rises_when_reached_before_anyone_is_refused():
    limit = calibrated(ceiling=4)
    for _ in range(4):
        limit.admit()
    limit.observe(0.5, alone=False)
    assert limit.limit == 1
    for _ in range(4):  # admitted under the old bound
        limit.observe(0.1, alone=False)
        limit.release()
    assert limit.admit()  # into the bound's last place: demand
    limit.observe(0.1, alone=False)  # and room
    assert limit.limit == 2
    limit.release()
    assert limit.admit()  # below the bound: no reason to admit more
    limit.observe(0.1, alone=False)
    assert limit.limit == 2


def test_lone_decodes_are_those_nobody_joined():
    from service.admission import AdmissionLimit

    limit = AdmissionLimit(ceiling=4, tolerance=2.0, slack_s=0)
    limit.admit()
    with limit.timed():
        pass
    limit.admit()
    with limit.timed():
        pass  # another request under way when it started
    limit.release()
    with limit.timed():
        limit.admit()  # one admitted while it ran
    assert len(limit._alone) == 1
    limit.forget_latencies()
    assert len(limit._alone) == 0


def test_catalog_read_in_chunks_is_one_version(tmp_path):
    import asyncio

    from redis.asyncio import Redis

    from loadtests.local_service import free_port
    from service.keys import Keys
    from service.redis_server import EmbeddedRedis
    from service.store import READ_CHUNK, Store

    async def scenario(url: str):
        redis = Redis.from_url(url, decode_responses=True)
        store = Store(redis, Keys("chunks"), history_cap=10)
        titles = {str(i): f"Title {i}" for i in range(2 * READ_CHUNK + 123)}  # more than one HSCAN chunk
        version = await store.replace_catalog(titles)
        await store.replace_popularity({item: int(item) % 7 for item in titles})
        read_version, read = await store.catalog()
        popularity = await store.popularity()
        await redis.aclose()
        return version, titles, read_version, read, popularity

    with EmbeddedRedis(free_port(), tmp_path) as server:
        version, titles, read_version, read, popularity = asyncio.run(scenario(server.url))
    assert (read_version, read) == (version, titles)
    assert len(popularity) == len(titles) and popularity["13"] == 13 % 7


def test_event_loop_lag_is_measured():
    import asyncio

    from prometheus_client import REGISTRY

    from service.metrics import watch_event_loop

    def lag_sum() -> float:
        return REGISTRY.get_sample_value("hatrec_event_loop_lag_seconds_sum") or 0.0

    async def scenario():
        watcher = asyncio.create_task(watch_event_loop(interval_s=0.01))
        await asyncio.sleep(0.05)
        before = lag_sum()
        time.sleep(0.3)  # a handler that blocks the loop: every timer and request behind it waits
        await asyncio.sleep(0.05)
        watcher.cancel()
        return lag_sum() - before

    assert asyncio.run(scenario()) > 0.25  # the blocked timer alone was late by about 0.3 s


def test_every_setting_and_metric_is_documented():
    from prometheus_client.metrics import MetricWrapperBase

    from service import metrics
    from service.settings import Settings

    readme = (Path(__file__).parents[1] / "service" / "README.md").read_text()
    assert [name for name in Settings.model_fields if f"`HATREC_{name.upper()}`" not in readme] == []
    names = [m.describe()[0].name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert names and [name for name in names if f"`{name}" not in readme] == []  # a counter's name has no _total


def test_a_search_the_engine_ended_is_503_not_500():
    """An engine core that stops aborts the searches it holds while the engine still reads as ready."""
    import asyncio

    from service.engine import EngineFailed
    from service.errors import ServiceError
    from service.recommender import Recommender

    class StoppingEngine:  # the seam of service.engine.Engine, as it is when its core aborts what it holds
        ready = True

        async def search(self, *args):
            raise EngineFailed("the engine ended topk-0 without scoring it (abort)")

    recommender = Recommender(Settings(redis_url="redis://127.0.0.1:1/0", max_in_flight=4), None, None,
                              StoppingEngine())
    with pytest.raises(ServiceError) as refused:
        asyncio.run(recommender._decode([1, 2], None, 3, None))
    assert (refused.value.status, refused.value.code) == (503, "engine_unavailable")


def test_an_unhandled_error_answers_and_logs_with_the_request_id():
    """The 500 answer is sent outside every middleware: it still names the request, as its log line does."""
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.request_ids import log_handler

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))  # its lifespan (Redis, engine) is not run

    @app.get("/fails")
    async def fails():
        raise RuntimeError("a bug")

    lines = io.StringIO()
    handler = log_handler(lines)
    logging.getLogger("service.errors").addHandler(handler)
    try:
        answer = TestClient(app, raise_server_exceptions=False).get("/fails", headers={"X-Request-ID": "report-42"})
    finally:
        logging.getLogger("service.errors").removeHandler(handler)
    assert answer.status_code == 500 and answer.headers["X-Request-ID"] == "report-42"
    assert answer.json()["error"] == {"code": "internal_error", "details": {"request_id": "report-42"},
                                      "message": "unexpected error (logged with the request id)"}
    assert "ERROR service.errors [report-42]: unhandled error" in lines.getvalue()
    assert "RuntimeError: a bug" in lines.getvalue()
