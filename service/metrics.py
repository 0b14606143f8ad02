"""Prometheus metrics of the gateway (prefix hatrec_, base units, no user ids in labels).

vLLM's own engine metrics (vllm:*) register in the same default registry when the engine logs stats,
so /metrics exposes both.
"""

import asyncio
import time

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("hatrec_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("hatrec_http_request_duration_seconds", "Whole-request latency", ["method", "route"],
                            buckets=LATENCY_BUCKETS)
STAGE_SECONDS = Histogram("hatrec_recommend_stage_duration_seconds", "Latency of each recommendation stage",
                          ["stage"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("hatrec_http_requests_in_flight", "HTTP requests being served")
QUEUE_DEPTH = Gauge("hatrec_recommend_queue_depth", "Recommendations admitted and not finished")
ADMISSION_LIMIT = Gauge("hatrec_recommend_admission_limit", "Recommendations that may be under way at once now")
ADMISSION_TARGET = Gauge("hatrec_recommend_admission_target_seconds",
                         "Decodes slower than this lower the admission bound (0 until measured)")
SHED = Counter("hatrec_recommend_rejected_total", "Recommendations refused or abandoned", ["reason"])
COLD_START = Counter("hatrec_recommend_cold_start_total", "Answers from the cold-start fallback")
ENGINE_STEPS = Histogram("hatrec_recommend_engine_steps", "Engine scoring rounds per recommendation",
                         buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30))
CATALOG_VERSION = Gauge("hatrec_catalog_version", "Catalog version being served")
CATALOG_ITEMS = Gauge("hatrec_catalog_items", "Items in the catalog being served")
EVENTS = Counter("hatrec_events_ingested_total", "Interactions appended to histories")
DEPENDENCY_UP = Gauge("hatrec_dependency_up", "1 when a dependency answers (checked every few seconds)",
                      ["dependency"])
EVENT_LOOP_LAG = Histogram("hatrec_event_loop_lag_seconds", "How late the event loop ran a timer: what every "
                           "request waits before its handler runs", buckets=LATENCY_BUCKETS)


async def record_request(request, call_next):
    """HTTP middleware: requests in flight, and each request's route, status and latency."""
    IN_FLIGHT.inc()
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        IN_FLIGHT.dec()
        route = request.scope.get("route")
        path = route.path if route is not None else "unmatched"
        REQUESTS.labels(request.method, path, str(status)).inc()
        REQUEST_SECONDS.labels(request.method, path).observe(time.perf_counter() - started)


async def watch_event_loop(interval_s: float = 0.1) -> None:
    """Observe how late a timer fires, every `interval_s`. One process serves every route on one event loop:
    when the engine's output handling or CPU contention keeps it busy, every request waits, a refusal too."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - due))
