"""The step-load report of loadtests/run.py on a hand-made request log: which step held the load."""

import csv

from loadtests.request_names import RECOMMEND_COLD_START, RECOMMEND_KNOWN, SHED
from loadtests.run import step_table


def write_log(path, rows):
    """rows: (seconds the request began, users, name, ms, ok); the log records when each one ended."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", "users", "name", "response_ms", "ok"])
        writer.writerows((began + ms / 1000, users, name, ms, ok) for began, users, name, ms, ok in rows)


def test_steps_count_shed_recommendations_apart_from_latency_and_failures(tmp_path):
    log = tmp_path / "requests.csv"
    rows = []
    # Step 1 (4 users, seconds 0-10): 100 answered recommendations of 100 ms and one event.
    rows += [(i * 0.05, 4, RECOMMEND_KNOWN, 100, 1) for i in range(100)]
    rows += [(5, 4, "/events", 10, 1)]
    # Step 2 (8 users): 98 answered, 2 shed after 1 ms: 2% shed, over the 1% allowed.
    rows += [(11 + i * 0.05, 8, RECOMMEND_KNOWN, 120, 1) for i in range(98)]
    rows += [(16, 8, SHED, 1, 1), (17, 8, SHED, 1, 1)]
    # Step 3 (12 users): 99 answered and one cold start shed (1%, allowed), then a failed request.
    rows += [(21 + i * 0.05, 12, RECOMMEND_KNOWN, 150, 1) for i in range(99)]
    rows += [(26, 12, SHED, 1, 1)]
    rows += [(27, 12, RECOMMEND_COLD_START, 20, 0)]
    write_log(log, rows)

    table = step_table(log, p99_ms=1000, step_users=4, step_seconds=10, max_users=12)

    assert [row["users"] for row in table] == [4, 8, 12]
    first, second, third = table
    assert first["shed_percent"] == 0 and first["failures"] == 0 and first["ok"]
    assert first["requests_per_s"] == 10.1
    assert second["shed_percent"] == 2.0 and not second["ok"]
    assert second["recommend_p50_ms"] == second["recommend_p99_ms"] == 120  # shed answers are not latencies
    assert third["shed_percent"] == 1.0 and third["failures"] == 1 and not third["ok"]


def test_a_step_within_the_latency_target_and_shed_share_holds(tmp_path):
    log = tmp_path / "requests.csv"
    write_log(log, [(i * 0.05, 4, RECOMMEND_KNOWN, 100, 1) for i in range(99)] + [(9, 4, SHED, 1, 1)])
    assert step_table(log, p99_ms=1000, step_users=4, step_seconds=10, max_users=4)[0]["ok"]
    assert not step_table(log, p99_ms=1000, step_users=4, step_seconds=10, max_users=4, max_shed=0)[0]["ok"]
    assert not step_table(log, p99_ms=100, step_users=4, step_seconds=10, max_users=4)[0]["ok"]
