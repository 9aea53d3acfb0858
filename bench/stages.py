"""Issue #5's targets in one run: a memory cache hit, a Redis cache hit, a miss through every stage.

    uv run --frozen python bench/stages.py                 # about 3 minutes
    uv run --frozen python bench/stages.py --quick         # smoke run, under a minute
    uv run --frozen python bench/stages.py --repeat 5      # on a busy machine

1. **Memory cache hit**: the latency of the whole ``await pipe.complete(...)`` when the answer
   is in the memory cache (``[cache] backend = "memory"``), timed call by call with
   ``time.perf_counter_ns`` in this process, one call at a time, after a warm-up. Target: p50
   <= 50 µs.
2. **Redis cache hit vs a raw GET**: the p50 of ``pipe.complete`` answered from the redis cache
   backend, against the p50 of ``await redis.asyncio.Redis.get(key)`` of the very entry (so the
   same size), with a client built with the backend's own settings, in this process, the two
   interleaved in rounds (ABBA order) so that a slow moment of the machine hits both. Target:
   ratio <= 1.3x. Keys live under a fresh namespace and are deleted at the end.
3. **A cache miss through every stage** (cache memory, single_flight local, retry,
   circuit_breaker, a generous per-user rate limit, fallbacks for the model) with the real
   OpenAI plugin against bench/upstream.py: CPU per call against the raw-aiohttp floor, with
   bench/run.py's harness (its ``tollway_stages`` client, ``--vary`` so every call is a different
   prompt for every client). Target: <= 1.3x the floor at concurrency 16; 1 and 128 are reported.
4. **Breakdown** (not a target): the same miss at concurrency 16 with each stage alone, so that
   what each stage adds over tollway with no stages can be read off; the sum of the parts can
   differ from "every stage" (shared work, such as routing, is paid once).

Sections 1 and 2 run in this process, pinned to the clients' CPU(s); the upstream that fills the
cache is bench/upstream.py on the last CPU, as in bench/run.py. Results go to
bench/results/stages-<time>.json. See bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import client  # noqa: E402  (bench/ is not a package)
import run  # noqa: E402
import upstream  # noqa: E402

TARGET_MEMORY_P50_US = 50.0
TARGET_REDIS_RATIO = 1.3
TARGET_MISS_RATIO = run.TARGET_STAGES_RATIO
TARGET_MISS_CONCURRENCY = run.TARGET_STAGES_CONCURRENCY
MODEL = "openai/" + client.MODEL
REDIS_URL = "redis://127.0.0.1:6379/0"


# -- helpers -----------------------------------------------------------------------------------


def percentile(sorted_values: list[int], q: float) -> float:
    """The nearest-rank percentile of sorted values (as bench/client.py computes it)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def summary_us(ns: list[int]) -> dict[str, float]:
    """p50, p90, p99, mean and min of latencies given in ns, in µs."""
    values = sorted(ns)
    return {
        "p50_us": percentile(values, 0.50) / 1e3,
        "p90_us": percentile(values, 0.90) / 1e3,
        "p99_us": percentile(values, 0.99) / 1e3,
        "mean_us": statistics.fmean(values) / 1e3,
        "min_us": values[0] / 1e3,
        "n": len(values),
    }


def spread(values: list[float]) -> str:
    """``min-max (±x% around the median)`` of repeated figures: how noisy they were."""
    if len(values) < 2:
        return "one run"
    mid = statistics.median(values)
    half = (max(values) - min(values)) / 2 / mid * 100 if mid else 0.0
    return f"runs {min(values):.2f}-{max(values):.2f} (±{half:.0f}% around the median)"


def verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("ok  " if ok else "MISS")


def redis_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1.0):
            return True
    except OSError:
        return False


def redis_start_command() -> str:
    try:
        from tollway.testing.services import REDIS_START

        return REDIS_START
    except ImportError:
        return "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ''"


def redis_server_cpus() -> str:
    """Where the Redis server may run (its affinity), for the record; '?' when unknown."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "redis-server":
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            continue
    return "?"


def cache_pipeline(url: str, cache: dict[str, Any]) -> Any:
    """A pipeline with the openai provider at ``url`` and only the cache stage on."""
    from tollway import Pipeline
    from tollway.config import load_config
    from tollway.plugins import build_plugin_manager

    data = {
        "providers": {"openai": {"type": "openai", "base_url": url + "/v1", "api_key": "sk-b"}},
        "cache": {"enabled": True, **cache},
    }
    config = load_config(data=data, plugins=build_plugin_manager(), environ={})
    return Pipeline.build(config=config)


def hits(pipe: Any, namespace: str) -> float:
    counter = pipe.metrics.get("cache_hits_total")
    return counter.get(namespace) if counter is not None else 0.0


async def time_complete(pipe: Any, calls: int) -> tuple[list[int], float]:
    """``calls`` sequential ``pipe.complete`` calls: per-call ns, and CPU µs per call."""
    complete = pipe.complete
    messages = client.MESSAGES
    max_tokens = client.MAX_TOKENS
    clock = time.perf_counter_ns
    out = [0] * calls
    cpu0 = time.process_time()
    for i in range(calls):
        t0 = clock()
        await complete(MODEL, messages, max_tokens=max_tokens)
        out[i] = clock() - t0
    return out, (time.process_time() - cpu0) / calls * 1e6


# -- 1. memory cache hit -----------------------------------------------------------------------


async def memory_hit(url: str, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench-stages-{uuid.uuid4().hex[:12]}"
    pipe = cache_pipeline(url, {"backend": "memory", "namespace": namespace})
    async with pipe:
        first = await pipe.complete(MODEL, client.MESSAGES, max_tokens=client.MAX_TOKENS)
        if len(first.text) != len(upstream.ANSWER):
            raise RuntimeError(f"the upstream's answer had {len(first.text)} characters")
        for _ in range(args.hit_warmup):
            await pipe.complete(MODEL, client.MESSAGES, max_tokens=client.MAX_TOKENS)
        blocks: list[dict[str, Any]] = []
        pooled: list[int] = []
        for _ in range(args.repeat):
            gc.collect()
            before = hits(pipe, namespace)
            ns, cpu_us = await time_complete(pipe, args.hit_calls)
            if hits(pipe, namespace) - before != args.hit_calls:
                raise RuntimeError("not every timed call was a cache hit")
            block = summary_us(ns)
            block["cpu_us_per_call"] = cpu_us
            blocks.append(block)
            pooled += ns
            print(
                f"  memory hit: p50 {block['p50_us']:6.1f} µs  p99 {block['p99_us']:6.1f} µs  "
                f"CPU {cpu_us:5.1f} µs/call  ({args.hit_calls} calls)",
                flush=True,
            )
    p50s = [b["p50_us"] for b in blocks]
    result: dict[str, Any] = {
        "p50_us": statistics.median(p50s),
        "p99_us": statistics.median(b["p99_us"] for b in blocks),
        "cpu_us_per_call": statistics.median(b["cpu_us_per_call"] for b in blocks),
        "pooled": summary_us(pooled),
        "runs": blocks,
        "p50_runs_us": p50s,
    }
    result["ok"] = result["p50_us"] <= TARGET_MEMORY_P50_US
    return result


# -- 2. redis cache hit vs a raw GET -----------------------------------------------------------


async def redis_hit(url: str, args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from tollway.cache.config import CacheConfig
    from tollway.cache.keys import request_key

    namespace = f"bench-stages-{uuid.uuid4().hex[:12]}"
    settings = CacheConfig(enabled=True, backend="redis", url=args.redis_url, namespace=namespace)
    pipe = cache_pipeline(url, {"backend": "redis", "url": args.redis_url, "namespace": namespace})
    # The backend's own client settings (tollway_redis.cache.RedisCacheBackend), for the raw GET.
    raw = redis.Redis.from_url(
        args.redis_url,
        socket_timeout=settings.timeout,
        socket_connect_timeout=settings.timeout,
        retry=Retry(NoBackoff(), 1),
    )
    try:
        async with pipe:
            first = await pipe.complete(MODEL, client.MESSAGES, max_tokens=client.MAX_TOKENS)
            if len(first.text) != len(upstream.ANSWER):
                raise RuntimeError(f"the upstream's answer had {len(first.text)} characters")
            key = request_key(
                pipe.request(MODEL, client.MESSAGES, max_tokens=client.MAX_TOKENS), namespace
            )
            value = await raw.get(key)
            if value is None:
                raise RuntimeError(f"the answer was not stored in Redis under {key}")
            get = raw.get
            for _ in range(args.hit_warmup // 4):
                await pipe.complete(MODEL, client.MESSAGES, max_tokens=client.MAX_TOKENS)
                await get(key)

            async def time_raw(calls: int) -> tuple[list[int], float]:
                clock = time.perf_counter_ns
                out = [0] * calls
                cpu0 = time.process_time()
                for i in range(calls):
                    t0 = clock()
                    await get(key)
                    out[i] = clock() - t0
                return out, (time.process_time() - cpu0) / calls * 1e6

            tollway_ns: list[int] = []
            raw_ns: list[int] = []
            round_ratios: list[float] = []
            cpu_t: list[float] = []
            cpu_r: list[float] = []
            n = args.redis_calls
            for r in range(args.redis_rounds):
                gc.collect()
                before = hits(pipe, namespace)
                if r % 2 == 0:  # ABBA: neither goes first every time
                    t, ct = await time_complete(pipe, n)
                    g, cg = await time_raw(n)
                else:
                    g, cg = await time_raw(n)
                    t, ct = await time_complete(pipe, n)
                if hits(pipe, namespace) - before != n:
                    raise RuntimeError("not every timed call was a cache hit")
                tollway_ns += t
                raw_ns += g
                cpu_t.append(ct)
                cpu_r.append(cg)
                ratio = percentile(sorted(t), 0.5) / percentile(sorted(g), 0.5)
                round_ratios.append(ratio)
            t_sum, g_sum = summary_us(tollway_ns), summary_us(raw_ns)
            ratio = t_sum["p50_us"] / g_sum["p50_us"]
            print(
                f"  redis hit: p50 {t_sum['p50_us']:6.1f} µs vs raw GET {g_sum['p50_us']:6.1f} µs"
                f" = {ratio:.2f}x  ({args.redis_rounds} rounds x {n} calls each; "
                f"per-round ratio {spread(round_ratios)})",
                flush=True,
            )
    finally:
        removed = 0
        with contextlib.suppress(Exception):
            keys = [k async for k in raw.scan_iter(match=f"{namespace}:*", count=500)]
            if keys:
                removed = await raw.delete(*keys)
        await raw.aclose()
    return {
        "ratio": ratio,
        "ok": ratio <= TARGET_REDIS_RATIO,
        "tollway": t_sum,
        "raw_get": g_sum,
        "added_p50_us": t_sum["p50_us"] - g_sum["p50_us"],
        "cpu_us_per_call": {"tollway": statistics.median(cpu_t), "raw": statistics.median(cpu_r)},
        "round_ratios": round_ratios,
        "value_bytes": len(value),
        "namespace": namespace,
        "keys_deleted": removed,
        "redis_server_cpus": redis_server_cpus(),
    }


# -- 3. a miss through every stage, with run.py's harness ---------------------------------------


def miss(args: argparse.Namespace, up_cpus: list[int], client_cpus: list[int]) -> dict[str, Any]:
    run_argv = [
        "--clients",
        args.clients,
        "--modes",
        args.modes,
        "--concurrency",
        args.concurrency,
        "--repeat",
        str(args.repeat),
        "--calls",
        str(args.calls),
        "--max-seconds",
        str(args.max_seconds),
        "--warmup-seconds",
        str(args.warmup_seconds),
        "--skip-imports",
    ]
    run_args = run.parse_args(run_argv)
    results = run.time_calls(run_args, up_cpus, client_cpus)
    run.print_tables(results, run_args.mode_list, run_args.concurrency_list, run_args.client_list)
    rows = []
    for r in results:
        if r["client"] != "tollway_stages":
            continue
        floor = next(
            (
                f
                for f in results
                if f["client"] == "floor"
                and f["mode"] == r["mode"]
                and f["concurrency"] == r["concurrency"]
            ),
            None,
        )
        row: dict[str, Any] = {"mode": r["mode"], "concurrency": r["concurrency"]}
        if r.get("cpu_us_per_call") and floor and floor.get("cpu_us_per_call"):
            row.update(
                cpu_us_per_call=r["cpu_us_per_call"],
                floor_cpu_us_per_call=floor["cpu_us_per_call"],
                ratio=r["cpu_us_per_call"] / floor["cpu_us_per_call"],
                runs=r.get("cpu_us_per_call_runs", [r["cpu_us_per_call"]]),
                floor_runs=floor.get("cpu_us_per_call_runs", [floor["cpu_us_per_call"]]),
            )
            row["ok"] = row["ratio"] <= TARGET_MISS_RATIO
        else:
            row["error"] = r.get("error") or (floor or {}).get("error") or "no result"
        rows.append(row)
    return {"rows": rows, "calls": results, "run_argv": run_argv, "vary": run_args.vary}


# -- 4. which stage costs what, on a miss -------------------------------------------------------


def breakdown(
    args: argparse.Namespace, up_cpus: list[int], client_cpus: list[int]
) -> dict[str, Any]:
    """CPU per missed call with each stage alone, at the target concurrency, json: what each
    stage adds over tollway with no stages. Runs interleaved, --repeat times, medians kept."""
    run_args = run.parse_args(
        [
            "--clients",
            "floor,tollway,tollway_stages",
            "--calls",
            str(args.calls),
            "--max-seconds",
            str(args.max_seconds),
            "--warmup-seconds",
            str(args.warmup_seconds),
            "--skip-imports",
        ]
    )
    conc = TARGET_MISS_CONCURRENCY
    variants: list[tuple[str, str, list[str] | None]] = [
        ("floor", "floor", None),
        ("tollway (no stage)", "tollway", None),
        *((f"+ {t} only", "tollway_stages", ["--stages", t]) for t in client.STAGE_TABLES),
        ("every stage", "tollway_stages", None),
    ]
    runs: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    up = run.Upstream(sys.executable, 1, 50, up_cpus, False)
    try:
        for _ in range(args.repeat):
            for label, name, extra in variants:
                result = run.run_client(
                    sys.executable, name, "json", conc, run_args, up, client_cpus, extra
                )
                if result.get("cpu_us_per_call"):
                    runs[label].append(result["cpu_us_per_call"])
                    print(f"  {label:<26} {result['cpu_us_per_call']:7.1f} µs CPU/call", flush=True)
                else:
                    print(f"  {label:<26} ERROR {result.get('error')}", flush=True)
    finally:
        up.close()
    medians = {label: statistics.median(v) for label, v in runs.items() if v}
    floor = medians.get("floor")
    base = medians.get("tollway (no stage)")
    print(f"\n  json c={conc}, medians of {args.repeat}; every call a cache miss")
    print(f"  {'what':<26} {'CPU µs/call':>11} {'x floor':>8} {'+µs vs no stage':>16}")
    rows = []
    for label, _, _ in variants:
        if label not in medians:
            continue
        value = medians[label]
        row = {
            "what": label,
            "cpu_us_per_call": value,
            "x_floor": value / floor if floor else None,
            "added_us": value - base if base is not None else None,
            "runs": sorted(runs[label]),
        }
        rows.append(row)
        added = "-" if row["added_us"] is None or label in ("floor",) else f"{row['added_us']:+.1f}"
        ratio = "-" if row["x_floor"] is None else f"{row['x_floor']:.2f}x"
        print(f"  {label:<26} {value:>11.1f} {ratio:>8} {added:>16}")
    return {"concurrency": conc, "mode": "json", "rows": rows}


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: fewer calls, concurrency 16")
    p.add_argument(
        "--repeat",
        type=int,
        help="memory-hit blocks, and runs of each miss client (medians kept) (default 3)",
    )
    p.add_argument("--hit-calls", type=int, help="timed memory hits per block (default 20000)")
    p.add_argument("--hit-warmup", type=int, help="warm-up hits (default 2000)")
    p.add_argument("--redis-url", default=REDIS_URL)
    p.add_argument("--redis-rounds", type=int, help="interleaved rounds (default 20)")
    p.add_argument(
        "--redis-calls", type=int, help="calls per round, each of tollway and raw (default 1000)"
    )
    p.add_argument(
        "--clients",
        default="floor,tollway,tollway_stages",
        help="bench/run.py clients for the miss section (default floor,tollway,tollway_stages)",
    )
    p.add_argument("--modes", default="json", help="json, stream or json,stream (default json)")
    p.add_argument("--concurrency", help="for the miss section (default 1,16,128; quick 16)")
    p.add_argument("--calls", type=int, help="timed calls per miss run, at most (default 10000)")
    p.add_argument("--max-seconds", type=float, help="per miss run (default 3; quick 1.5)")
    p.add_argument("--warmup-seconds", type=float, help="per miss run (default 2; quick 1)")
    p.add_argument(
        "--only",
        help="sections to run: memory, redis, miss, breakdown (default all; quick: no breakdown)",
    )
    p.add_argument("--no-pin", action="store_true", help="don't pin to separate CPUs")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    q = args.quick
    args.repeat = args.repeat or (1 if q else 3)
    args.hit_calls = args.hit_calls or (5000 if q else 20000)
    args.hit_warmup = args.hit_warmup or (500 if q else 2000)
    args.redis_rounds = args.redis_rounds or (4 if q else 20)
    args.redis_calls = args.redis_calls or (500 if q else 1000)
    args.concurrency = args.concurrency or ("16" if q else "1,16,128")
    args.calls = args.calls or (1000 if q else 10000)
    args.max_seconds = args.max_seconds or (1.5 if q else 3.0)
    args.warmup_seconds = args.warmup_seconds or (1.0 if q else 2.0)
    only = args.only or ("memory,redis,miss" if q else "memory,redis,miss,breakdown")
    args.sections = {s.strip() for s in only.split(",") if s.strip()}
    if "tollway_stages" not in args.clients.split(",") or "floor" not in args.clients.split(","):
        p.error("--clients must include floor and tollway_stages")
    return args


async def in_process(url: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "memory" in args.sections:
        print("\n== 1. memory cache hit: whole pipe.complete, one call at a time ==", flush=True)
        try:
            out["memory"] = await memory_hit(url, args)
        except Exception as exc:
            out["memory"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  memory hit: ERROR {out['memory']['error']}")
    if "redis" in args.sections:
        print("\n== 2. redis cache hit vs raw redis GET (interleaved rounds) ==", flush=True)
        if not redis_reachable(args.redis_url):
            out["redis"] = {"error": f"Redis is not reachable at {args.redis_url}"}
            print(f"  Redis is not reachable at {args.redis_url}; start it with:")
            print(f"    {redis_start_command()}")
        else:
            try:
                out["redis"] = await redis_hit(url, args)
            except Exception as exc:
                out["redis"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  redis hit: ERROR {out['redis']['error']}")
    return out


def print_targets(record: dict[str, Any]) -> None:
    print("\n== targets (issue #5) ==")
    mem = record.get("memory")
    if mem is not None:
        if "error" in mem:
            print(f"n/a  memory cache hit: {mem['error']}")
        else:
            print(
                f"{verdict(mem['ok'])} memory cache hit p50 {mem['p50_us']:.1f} µs "
                f"(p99 {mem['p99_us']:.1f} µs) (target p50 <= {TARGET_MEMORY_P50_US:g} µs); "
                f"p50 {spread(mem['p50_runs_us'])}"
            )
    red = record.get("redis")
    if red is not None:
        if "error" in red:
            print(f"n/a  redis cache hit vs raw GET: {red['error']}")
        else:
            print(
                f"{verdict(red['ok'])} redis cache hit p50 {red['tollway']['p50_us']:.1f} µs vs "
                f"raw GET {red['raw_get']['p50_us']:.1f} µs: {red['ratio']:.2f}x "
                f"(target <= {TARGET_REDIS_RATIO}x); per-round {spread(red['round_ratios'])}"
            )
    for row in (record.get("miss") or {}).get("rows", []):
        c = row["concurrency"]
        label = f"cache miss, every stage on, {row['mode']} c={c}"
        if "error" in row:
            print(f"n/a  {label}: {row['error']}")
            continue
        mark = verdict(row["ok"]) if c == TARGET_MISS_CONCURRENCY else "info"
        print(
            f"{mark} {label}: CPU/call {row['cpu_us_per_call']:.1f} µs vs floor "
            f"{row['floor_cpu_us_per_call']:.1f} µs = {row['ratio']:.2f}x (target <= "
            f"{TARGET_MISS_RATIO}x at c={TARGET_MISS_CONCURRENCY}); µs/call: stages "
            f"{spread(row['runs'])}, floor {spread(row['floor_runs'])}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    up_cpus, client_cpus = run.pinning(args.no_pin)
    info = run.machine_info()
    load0 = os.getloadavg()
    print(
        f"machine: {info['cpu']} ({info['cpus']} CPUs), Python {info['python']}, "
        f"commit {info['commit'] or '?'}, load average {load0[0]:.2f}"
    )
    if up_cpus:
        print(f"pinning: upstream on CPU {up_cpus}, this process and the clients on {client_cpus}")
    record: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "load_average_start": load0,
    }

    if args.sections & {"memory", "redis"}:
        up = run.Upstream(sys.executable, 1, 50, up_cpus, False)
        try:
            if client_cpus and hasattr(os, "sched_setaffinity"):
                previous = os.sched_getaffinity(0)
                os.sched_setaffinity(0, client_cpus)
            try:
                record.update(asyncio.run(in_process(up.url, args)))
            finally:
                if client_cpus and hasattr(os, "sched_setaffinity"):
                    os.sched_setaffinity(0, previous)
        finally:
            up.close()
    if "miss" in args.sections:
        print(
            "\n== 3. cache miss with every issue-5 stage on: CPU per call vs the floor "
            "(bench/run.py harness, --vary) ==",
            flush=True,
        )
        record["miss"] = miss(args, up_cpus, client_cpus)
    if "breakdown" in args.sections:
        print(
            "\n== 4. what each stage adds to a missed call (each alone; not a target) ==",
            flush=True,
        )
        record["breakdown"] = breakdown(args, up_cpus, client_cpus)

    print_targets(record)
    record["load_average_end"] = os.getloadavg()
    record["elapsed_s"] = time.monotonic() - started
    print(
        f"\n(took {record['elapsed_s']:.0f} s; load average {load0[0]:.2f} at the start, "
        f"{record['load_average_end'][0]:.2f} at the end)"
    )
    results_dir = BENCH / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = results_dir / f"stages-{stamp}{'-quick' if args.quick else ''}.json"
    text = json.dumps(record, indent=2, default=str)
    path.write_text(text)
    print(f"results: {path.relative_to(ROOT)}")
    if args.json:
        args.json.write_text(text)
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
