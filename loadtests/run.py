"""Run the Locust load test headless against a service started here, for a bounded time.

    python -m loadtests.run --run-time 60s --users 8                      # constant load
    python -m loadtests.run --step --step-users 4 --step-seconds 30 --max-users 32 --p99-ms 2000

Starts `python -m service` on 127.0.0.1 (free port) with its own embedded Redis in a temporary
folder (your var/redis is not touched), waits for /readyz, runs Locust, stops the service (SIGINT,
the same as Ctrl-C), and writes Locust's CSV and HTML reports under --out. With --step, a step-load
shape raises the user count; every request is logged with the user count at that moment, and the
report finds the highest step whose /recommend p99 stays under --p99-ms with no failed request and at
most --max-shed of its recommendations refused by admission control (table in --out/steps.md, plot in
--out/steps.png).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections import defaultdict
from pathlib import Path

from loadtests.local_service import ROOT, running_service
from loadtests.request_names import RECOMMEND_KNOWN, RECOMMENDATIONS, SHED

MAX_SHED = 0.01  # the share of recommendations a load the service holds may see refused (429)


def step_table(request_log: Path, p99_ms: float, step_users: int, step_seconds: int, max_users: int,
               max_shed: float = MAX_SHED) -> list[dict]:
    """Per step of the shape: /recommend [known] p50/p99, requests/s over all routes, failed requests, and the
    share of recommendations shed by admission control. A step is ok when the p99 is under `p99_ms`, nothing
    failed and at most `max_shed` of its recommendations were shed. A request belongs to the step in which it
    started (the shape changes users every step_seconds from the first request on); requests after the last
    step (shutdown) are left out."""
    rows = list(csv.DictReader(request_log.open()))
    start = min(float(r["time"]) - float(r["response_ms"]) / 1000 for r in rows)
    steps: dict[int, dict] = defaultdict(lambda: dict(count=0, recommend_ms=[], failures=0, recommendations=0, shed=0))
    for row in rows:
        began = float(row["time"]) - float(row["response_ms"]) / 1000
        users = (int((began - start) // step_seconds) + 1) * step_users
        if users > max_users:
            continue
        step = steps[users]
        step["count"] += 1
        step["failures"] += row["ok"] == "0"
        step["recommendations"] += row["name"] in RECOMMENDATIONS
        step["shed"] += row["name"] == SHED
        if row["name"] == RECOMMEND_KNOWN:
            step["recommend_ms"].append(float(row["response_ms"]))
    table = []
    for users in sorted(steps):
        step, ms = steps[users], sorted(steps[users]["recommend_ms"])
        if not ms:
            continue
        p99 = ms[int(0.99 * (len(ms) - 1))]
        shed = step["shed"] / step["recommendations"]
        table.append(dict(users=users, recommend_p50_ms=round(ms[len(ms) // 2]), recommend_p99_ms=round(p99),
                          requests_per_s=round(step["count"] / step_seconds, 2), failures=step["failures"],
                          shed_percent=round(100 * shed, 1),
                          ok=p99 < p99_ms and step["failures"] == 0 and shed <= max_shed))
    return table


def write_step_report(table: list[dict], out: Path, p99_ms: float, max_shed: float, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passing = [row for row in table if row["ok"]]
    best = passing[-1] if passing else None
    lines = [f"Command: `{command}`", "",
             f"Highest load with /recommend p99 < {p99_ms:.0f} ms, no failures and at most {100 * max_shed:g}% of "
             "recommendations shed: "
             + (f"**{best['users']} users, {best['requests_per_s']} requests/s**" if best else "none"), "",
             "| users | /recommend p50 ms | /recommend p99 ms | requests/s (all routes) | failures | shed | ok |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['users']} | {r['recommend_p50_ms']} | {r['recommend_p99_ms']} | {r['requests_per_s']} | "
              f"{r['failures']} | {r['shed_percent']}% | {'yes' if r['ok'] else 'no'} |" for r in table]
    (out / "steps.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    users = [r["users"] for r in table]
    ax.plot(users, [r["recommend_p99_ms"] for r in table], "o-", label="/recommend p99 (ms)")
    ax.axhline(p99_ms, color="grey", linestyle="--", label="p99 target")
    ax.set(xlabel="concurrent Locust users", ylabel="ms", title="latency vs load")
    ax2 = ax.twinx()
    ax2.plot(users, [r["requests_per_s"] for r in table], "s-", color="tab:green", label="requests/s")
    ax2.set_ylabel("requests/s")
    fig.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "steps.png", dpi=120)
    print("\n".join(lines))


def warm_up(url: str) -> None:
    """A few recommendations first: the first engine steps load kernels and allocate (seconds)."""
    for user in ("1", "2", "3"):
        request = urllib.request.Request(url + "/recommend", data=json.dumps({"user_id": user}).encode(),
                                         headers={"content-type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-time", default="60s", help="Locust --run-time (the test always stops by itself)")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--spawn-rate", type=float, default=4)
    p.add_argument("--step", action="store_true", help="step-load shape instead of a constant user count")
    p.add_argument("--step-users", type=int, default=4)
    p.add_argument("--step-seconds", type=int, default=30)
    p.add_argument("--max-users", type=int, default=32)
    p.add_argument("--p99-ms", type=float, default=2000)
    p.add_argument("--max-shed", type=float, default=MAX_SHED,
                   help="largest share of a step's recommendations refused with 429 for the step to count as held")
    p.add_argument("--out", default="loadtests/results")
    p.add_argument("--start-timeout", type=float, default=600)
    args = p.parse_args()

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hatrec-load-") as workdir, \
            running_service(Path(workdir), out / "service.log", start_timeout_s=args.start_timeout) as (url, service):
        warm_up(url)
        cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
               "--host", url, "--run-time", args.run_time, "--csv", str(out / "locust"), "--csv-full-history",
               "--html", str(out / "report.html"), "--only-summary", "--stop-timeout", "10"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HATREC_REQUEST_LOG": str(out / "requests.csv")}
        if args.step:
            env.update(HATREC_STEP_LOAD="1", HATREC_STEP_USERS=str(args.step_users),
                       HATREC_STEP_SECONDS=str(args.step_seconds), HATREC_STEP_MAX=str(args.max_users))
        else:
            cmd += ["--users", str(args.users), "--spawn-rate", str(args.spawn_rate)]
        locust_rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        # the service's own view of the run (server-side latencies, event-loop lag, admission), before it stops;
        # a service that died in the run has none, and the report of what Locust saw must still be written
        try:
            (out / "service_metrics.txt").write_bytes(urllib.request.urlopen(url + "/metrics", timeout=30).read())
        except OSError as exc:
            print(f"no /metrics after the run: {exc}")
    service_rc = service.returncode
    print(f"locust exit code {locust_rc} (1 = some requests failed); service exit code {service_rc}")
    if args.step:
        table = step_table(out / "requests.csv", args.p99_ms, args.step_users, args.step_seconds, args.max_users,
                           args.max_shed)
        write_step_report(table, out, args.p99_ms, args.max_shed, "python -m loadtests.run " + " ".join(sys.argv[1:]))
    return locust_rc


if __name__ == "__main__":
    sys.exit(main())
