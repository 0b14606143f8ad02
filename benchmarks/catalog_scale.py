"""How the service's costs grow with the catalog: synthetic catalogs of 10k, 100k and 1M items.

    python -m benchmarks.catalog_scale                       # 10k, 100k, 1M; writes docs/results/catalog_scale.*
    python -m benchmarks.catalog_scale --sizes 10000 --requests 20

Each catalog is the real ml-latest-small catalog (so the default model's users, histories and item codes
are real) plus synthetic items whose titles are drawn to match the real catalogs in ../shared/datasets
(ml-latest-small, ml-1m, amazon-games_llmrank, whichever are present): title length in words from their
length distribution, words from their word frequencies. Per size, on 127.0.0.1 only:
  loader      `python -m service.loader` into a fresh Redis (process start and CSV parsing included)
  snapshot    in a separate process: reading the catalog from Redis, the full build (tokenizing, item
              codes, trie), its resident memory (RSS growth), and the time until a change is in a new
              snapshot: one added item, one retitled, one removed, a batch of 1,000 added
  service     the real service (`python -m service`) on that Redis: start to ready, the answer time of
              PUT /admin/catalog/items (the writing replica answers once its snapshot has the change;
              other replicas within HATREC_CATALOG_POLL_S), /recommend p50/p99 at concurrency 1 and 8
              (ml-latest-small users, k=10, seen excluded), engine scoring rounds per recommendation
              (warm-up included), the mean time of each stage of a recommendation (redis, prompt =
              prompt and trie view, decode), the service's RSS (engine included)
Everything stops by itself. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from itertools import accumulate
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
REAL_CATALOGS = ["data/ml-latest-small", "../shared/datasets/ml-latest-small", "../shared/datasets/ml-1m",
                 "../shared/datasets/amazon-games_llmrank"]
BASE_DATA = ROOT / "data" / "ml-latest-small"
DEFAULT_MODEL = ROOT / "models" / "ml-latest-small-hat"
SYNTHETIC_IDS_FROM = 10_000_000
OUT = ROOT / "docs" / "results" / "catalog_scale"


def title_model(seed: int = 0):
    """A sampler of titles like the real catalogs': (length in words, words by frequency)."""
    from hatllm.data import load_dataset

    lengths, words, seen = [], Counter(), set()
    for folder in REAL_CATALOGS:
        path = (ROOT / folder).resolve()
        if not path.is_dir() or path in seen:
            continue
        seen.add(path)
        try:
            titles = load_dataset(path).catalog.titles.values()
        except Exception:  # a dataset this project cannot read is simply not sampled
            continue
        for title in titles:
            lengths.append(len(title.split()))
            words.update(title.split())
    vocabulary, cumulative = list(words), list(accumulate(words.values()))
    rng = random.Random(seed)
    return lambda: " ".join(rng.choices(vocabulary, cum_weights=cumulative, k=rng.choice(lengths)))


def synthetic_dataset(size: int, folder: Path) -> Path:
    """ml-latest-small with synthetic items added up to `size` (same ratings, so the same users)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BASE_DATA / "ratings.csv", folder / "ratings.csv")
    with open(BASE_DATA / "movies.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(folder / "movies.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows(rows)
        writer.writerows([item, title, "(no genres listed)"] for item, title in synthetic_items(max(0, size - len(rows) + 1)))
    return folder


def synthetic_items(count: int) -> Iterator[tuple[str, str]]:
    """(item id, title) of `count` synthetic items: the same items at every call."""
    sample = title_model()
    return ((str(SYNTHETIC_IDS_FROM + i), sample()) for i in range(count))


# ---------------------------------------------------------------------------------------------
# The snapshot, measured in its own process


def snapshot_figures(redis_url: str, model: str) -> dict:
    """Run in a child process: full build, its memory, and the time until changes are in a snapshot."""
    import gc
    import resource

    from hatllm.core.item_codes import ItemCodes
    from hatllm.core.prompt import PromptBuilder
    from service.catalog import CatalogCache
    from service.keys import Keys
    from service.store import Store, connect

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    async def main():
        client = connect(redis_url, decode_responses=True)
        store = Store(client, Keys(), history_cap=200)
        cache = CatalogCache(store, PromptBuilder.from_checkpoint(model), ItemCodes.load(model))
        gc.collect()
        before = rss_mib()
        started = time.perf_counter()
        version, titles = await store.catalog()
        popularity = await store.popularity()
        read_s = time.perf_counter() - started
        del titles, popularity
        started = time.perf_counter()
        snapshot = await cache.refresh()
        full_s = time.perf_counter() - started
        gc.collect()
        figures = dict(items_in_snapshot=len(snapshot.titles), read_s=round(read_s, 2), build_s=round(full_s - read_s, 2),
                       refresh_whole_s=round(full_s, 2), trie_nodes=snapshot.trie.num_nodes,
                       snapshot_rss_mib=round(rss_mib() - before, 1),
                       peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        sample = next(iter(snapshot.titles))
        changes = {"add_1": lambda: store.put_items({"bench-new": "Benchmark Item (2026)"}),
                   "retitle_1": lambda: store.put_items({sample: "Benchmark Retitled (2026)"}),
                   "remove_1": lambda: store.remove_items(["bench-new"]),
                   "add_1000": lambda: store.put_items({f"bench-{i}": f"Benchmark Batch Item {i}" for i in range(1000)})}
        for name, change in changes.items():
            await change()
            started = time.perf_counter()
            snapshot = await cache.refresh()
            figures[f"visible_{name}_s"] = round(time.perf_counter() - started, 3)
        figures["patch_size_after"] = snapshot.model.patch_size
        await client.aclose()
        return figures

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# The service


async def latencies(url: str, users: list[str], concurrency: int, requests: int) -> dict:
    import httpx

    times, failures = [], Counter()

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def worker(k: int):
            for i in range(k, requests, concurrency):
                started = time.perf_counter()
                response = await client.post("/recommend", json={"user_id": users[i % len(users)], "k": 10})
                if response.status_code == 200 and response.json()["strategy"] == "model":
                    times.append(time.perf_counter() - started)
                else:
                    failures[response.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    times.sort()
    return dict(p50_ms=round(1000 * statistics.median(times), 1) if times else None,
                p99_ms=round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 1) if times else None,
                recs_per_s=round(len(times) / elapsed, 2), failures=dict(failures))


def service_figures(workdir: Path, redis_url: str, requests: int) -> dict:
    import httpx

    from hatllm.data import load_dataset
    from loadtests.local_service import running_service
    from loadtests.reliability import rss_mib

    users = sorted(load_dataset(BASE_DATA).sequences)
    random.Random(0).shuffle(users)
    started = time.monotonic()
    # A fixed in-flight bound above the concurrency measured: latency, not shedding (that is loadtests.reliability
    # overload). The default adaptive bound would refuse most of a closed loop's attempts at concurrency 8.
    with running_service(workdir, redis_url=redis_url, start_timeout_s=900, hatrec_max_in_flight=16,
                         hatrec_admission_tolerance=0) as (url, process):
        figures = dict(start_to_ready_s=round(time.monotonic() - started, 1))
        with httpx.Client(base_url=url, timeout=120) as client:
            for name, items in (("put_1", {"svc-new": "Service Benchmark (2026)"}),
                                ("put_1000", {f"svc-{i}": f"Service Batch {i}" for i in range(1000)})):
                started = time.perf_counter()
                response = client.put("/admin/catalog/items", json={"items": [{"item_id": i, "title": t} for i, t in items.items()]})
                figures[f"{name}_answer_s"] = round(time.perf_counter() - started, 3)
                assert response.status_code == 200, response.text
                assert client.get(f"/catalog/items/{next(iter(items))}").status_code == 200
        for concurrency in (1, 8):
            figures[f"c{concurrency}"] = asyncio.run(latencies(url, users, concurrency, requests * concurrency))
        metrics = {line.split()[0]: float(line.split()[1]) for line in httpx.get(f"{url}/metrics").text.splitlines()
                   if line.startswith(("hatrec_recommend_engine_steps_", "hatrec_recommend_stage_duration_seconds_"))}
        mean = lambda name, labels="": metrics[f"{name}_sum{labels}"] / metrics[f"{name}_count{labels}"]  # noqa: E731
        figures["engine_steps_mean"] = round(mean("hatrec_recommend_engine_steps"), 2)
        for stage in ("redis", "prompt", "decode"):  # the catalog's share: "prompt" (prompt and trie view)
            figures[f"{stage}_ms_mean"] = round(1000 * mean("hatrec_recommend_stage_duration_seconds", f'{{stage="{stage}"}}'), 2)
        figures["service_rss_mib"] = round(rss_mib(process.pid), 1)
    return figures


def run_size(size: int, workdir: Path, model: str, requests: int) -> dict:
    from loadtests.local_service import free_port
    from service.redis_server import EmbeddedRedis

    data = synthetic_dataset(size, workdir / "data")
    server = EmbeddedRedis(free_port(), workdir / "redis").start()
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "service.loader", "--data", str(data), "--redis-url", server.url],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        figures = dict(size=size, loader_s=round(time.perf_counter() - started, 1))
        figures |= service_figures(workdir, server.url, requests)
        snapshot = subprocess.run([sys.executable, "-m", "benchmarks.catalog_scale", "--snapshot-of", server.url,
                                   "--model", model], cwd=ROOT, check=True, capture_output=True, text=True)
        figures |= json.loads(snapshot.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    return figures


def report(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    rows = ["| items | loader s | service start to ready s | snapshot build s | snapshot RSS MiB | visible: add 1 / retitle 1 / remove 1 / add 1,000 s "
            "| PUT answer: 1 / 1,000 s | p50 / p99 ms c=1 | p50 / p99 ms c=8 | engine steps | prompt + view ms | service RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['size']:,} | {r['loader_s']} | {r['start_to_ready_s']} | {r['build_s']} | {r['snapshot_rss_mib']} | "
                    f"{r['visible_add_1_s']} / {r['visible_retitle_1_s']} / {r['visible_remove_1_s']} / {r['visible_add_1000_s']} | "
                    f"{r['put_1_answer_s']} / {r['put_1000_answer_s']} | {r['c1']['p50_ms']} / {r['c1']['p99_ms']} | "
                    f"{r['c8']['p50_ms']} / {r['c8']['p99_ms']} | {r['engine_steps_mean']} | {r['prompt_ms_mean']} | {r['service_rss_mib']} |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    sizes = [r["size"] for r in results]
    panels = [("snapshot build (s)", {"full build": "build_s", "loader": "loader_s"}),
              ("memory (MiB)", {"snapshot": "snapshot_rss_mib", "service (engine included)": "service_rss_mib"}),
              ("change visible (s)", {"add 1": "visible_add_1_s", "retitle 1": "visible_retitle_1_s",
                                      "add 1,000": "visible_add_1000_s"}),
              ("/recommend (ms)", {"p50 c=1": ("c1", "p50_ms"), "p99 c=1": ("c1", "p99_ms"),
                                   "p50 c=8": ("c8", "p50_ms"), "p99 c=8": ("c8", "p99_ms")})]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, series) in zip(axes, panels):
        for label, key in series.items():
            ax.plot(sizes, [r[key[0]][key[1]] if isinstance(key, tuple) else r[key] for r in results], "o-", label=label)
        ax.set(xscale="log", xlabel="catalog items", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--requests", type=int, default=40, help="recommendations per concurrency slot")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--snapshot-of", help=argparse.SUPPRESS)  # the child process of the snapshot measurement
    args = p.parse_args()
    if args.snapshot_of:
        print(json.dumps(snapshot_figures(args.snapshot_of, args.model)))
        return
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"catalog-{size}-") as workdir:
            results.append(run_size(size, Path(workdir), args.model, args.requests))
        print(json.dumps(results[-1]), flush=True)
    report(results, args.out)


if __name__ == "__main__":
    main()
