"""Locust traffic for the recommender: mostly recommendations for known users, some cold-start users,
event ingestion and catalog reads, with think times; responses are checked for content, not only status.
A recommendation refused by admission control (429 with Retry-After) is reported as "/recommend [shed]",
not as a failure, and the user waits as Retry-After asks before its next task.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000         # web UI
    python loadtests/run.py --run-time 60s                                   # headless, local service, reports

HATREC_REQUEST_LOG=path writes one CSV line per request (time, user count, name, ms, ok).
Known users and item ids come from the dataset the service was loaded with (HATREC_LOAD_DATA, default
data/ml-latest-small). HATREC_STEP_LOAD=1 replaces the constant user count by a step-load shape
(HATREC_STEP_USERS users more every HATREC_STEP_SECONDS, up to HATREC_STEP_MAX users).
"""

from __future__ import annotations

import os
import random
import time
import uuid

from locust import HttpUser, LoadTestShape, between, events, task

from hatllm.data import load_dataset
from loadtests.request_names import RECOMMEND_COLD_START, RECOMMEND_KNOWN, SHED

K = 10
MAX_BACKOFF_S = 5.0
_dataset = None


def dataset():
    global _dataset
    if _dataset is None:
        _dataset = load_dataset(os.environ.get("HATREC_LOAD_DATA", "data/ml-latest-small"))
    return _dataset


@events.init.add_listener
def load_ids(environment, **_):
    data = dataset()
    environment.known_users = sorted(data.sequences)
    environment.item_ids = sorted(data.catalog.titles)
    log_path = os.environ.get("HATREC_REQUEST_LOG")
    if log_path:  # every request with the user count at that moment: exact per-step percentiles in run.py
        log = open(log_path, "w", buffering=1)
        log.write("time,users,name,response_ms,ok\n")

        @events.request.add_listener
        def log_request(name, response_time, exception, **_):
            log.write(f"{time.time()},{environment.runner.user_count},{name},{response_time},{int(exception is None)}\n")


class RecommenderUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self):
        self.users = self.environment.known_users
        self.items = self.environment.item_ids
        self.item_set = set(self.items)

    def check_list(self, response, strategy: str) -> None:
        body = response.json()
        ids = [item["item_id"] for item in body["items"]]
        if body["strategy"] != strategy:
            response.failure(f"strategy {body['strategy']}, expected {strategy}")
        elif len(ids) != K and not body["exhausted"]:
            response.failure(f"{len(ids)} items for k={K}")
        elif len(set(ids)) != len(ids) or not set(ids) <= self.item_set:
            response.failure("duplicate or unknown item ids")
        elif [item["rank"] for item in body["items"]] != list(range(1, len(ids) + 1)):
            response.failure("ranks out of order")

    def recommend(self, user: str, name: str, strategy: str) -> None:
        with self.client.post("/recommend", json={"user_id": user, "k": K}, name=name, catch_response=True) as response:
            retry_after = response.headers.get("Retry-After") if response.status_code == 429 else None
            if retry_after:
                response.request_meta["name"] = SHED
                response.success()
            elif response.status_code == 200:
                self.check_list(response, strategy)
            else:  # a 429 without Retry-After included: the service promises one
                response.failure(f"status {response.status_code}: {response.text[:200]}")
        if retry_after:  # a well-behaved client waits as it is asked to
            time.sleep(min(float(retry_after), MAX_BACKOFF_S))

    @task(10)
    def recommend_known_user(self):
        self.recommend(random.choice(self.users), RECOMMEND_KNOWN, "model")

    @task(2)
    def recommend_cold_start(self):
        self.recommend(f"load-cold-{uuid.uuid4().hex}", RECOMMEND_COLD_START, "cold_start_popular")

    @task(3)
    def ingest_events(self):
        user = f"load-events-{random.randrange(1000)}"
        batch = [{"user_id": user, "item_id": random.choice(self.items)} for _ in range(random.randint(1, 5))]
        with self.client.post("/events", json={"events": batch}, name="/events", catch_response=True) as response:
            if response.status_code != 200 or response.json().get("accepted") != len(batch):
                response.failure(f"status {response.status_code}: {response.text[:200]}")

    @task(2)
    def read_catalog(self):
        item = random.choice(self.items)
        with self.client.get(f"/catalog/items/{item}", name="/catalog/items/[id]", catch_response=True) as response:
            if response.status_code != 200 or response.json().get("item_id") != item:
                response.failure(f"status {response.status_code}")


if os.environ.get("HATREC_STEP_LOAD") == "1":

    class StepLoad(LoadTestShape):
        """Add `step_users` users every `step_seconds` until `max_users`, then stop."""

        step_users = int(os.environ.get("HATREC_STEP_USERS", "4"))
        step_seconds = int(os.environ.get("HATREC_STEP_SECONDS", "30"))
        max_users = int(os.environ.get("HATREC_STEP_MAX", "32"))

        def tick(self):
            step = int(self.get_run_time() // self.step_seconds) + 1
            users = step * self.step_users
            if users > self.max_users:
                return None
            return users, self.step_users
