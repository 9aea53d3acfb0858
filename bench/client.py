"""One benchmark client in its own process: warm up, then time N calls at a given concurrency.

``python bench/client.py --client floor --mode json --concurrency 16 --calls 2000 --url URL``
prints one line ``BENCH_RESULT {json}`` on stdout (libraries may print other lines around it).
If the client's library cannot be imported the result is ``{"unavailable": "ImportError: ..."}``.

Every client sends the same request (same messages, ``max_tokens``, and for streams
``stream_options.include_usage``) and does the same small amount of work with the answer: it
takes the text out (the message content, or each delta's content) and counts its characters,
so that a call is only counted when its whole answer arrived. A wrong length is an error.

CPU is ``time.process_time()`` (every thread of this process, user + system) over the timed
calls only; the warm-up and the imports are outside it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

MODEL = "gpt-4o-mini"
PROMPT = (
    "In two short paragraphs, explain why an HTTP client should pool its connections to an "
    "API, and what can go wrong when it does not."
)
MESSAGES = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 128

Call = Callable[[], Awaitable[int]]
Close = Callable[[], Awaitable[None]]


def _versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- the clients -------------------------------------------------------------------------------
# Each returns (call_json, call_stream, close, versions). Imports happen here, before timing.


async def setup_floor(url: str) -> tuple[Call, Call, Close, dict[str, str]]:
    """Raw aiohttp: the least any aiohttp-based client can do for the same call."""
    import aiohttp

    session = aiohttp.ClientSession()  # default connector: limit=100, as tollway's pool
    endpoint = url + "/v1/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    loads = json.loads

    async def call_json() -> int:
        async with session.post(endpoint, json=body, headers=headers) as resp:
            data = loads(await resp.read())
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        return len(data["choices"][0]["message"]["content"])

    async def call_stream() -> int:
        n = 0
        async with session.post(endpoint, json=stream_body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            async for line in resp.content:
                if line[:6] != b"data: ":
                    continue
                data = line[6:].rstrip()
                if data == b"[DONE]":
                    break
                for choice in loads(data)["choices"]:
                    text = choice["delta"].get("content")
                    if text:
                        n += len(text)
        return n

    return call_json, call_stream, session.close, _versions("aiohttp")


async def setup_floor_any(url: str) -> tuple[Call, Call, Close, dict[str, str]]:
    """The floor, but a stream is read with ``iter_any()`` and split into lines here (what
    tollway's SSE reader does) instead of aiohttp's line-by-line ``readline``: a lower floor
    for streams when several events arrive in one read. json is the same as the floor's."""
    call_json, _, close, versions = await setup_floor(url)
    import aiohttp

    session = aiohttp.ClientSession()
    endpoint = url + "/v1/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}
    stream_body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    loads = json.loads

    async def call_stream() -> int:
        n = 0
        rest = b""
        async with session.post(endpoint, json=stream_body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            async for block in resp.content.iter_any():
                *lines, rest = (rest + block).split(b"\n")
                for line in lines:
                    if line[:6] != b"data: ":
                        continue
                    data = line[6:]
                    if data == b"[DONE]":
                        return n
                    for choice in loads(data)["choices"]:
                        text = choice["delta"].get("content")
                        if text:
                            n += len(text)
        return n

    async def close_both() -> None:
        await close()
        await session.close()

    return call_json, call_stream, close_both, versions


async def setup_tollway(url: str) -> tuple[Call, Call, Close, dict[str, str]]:
    """tollway with no stages: Pipeline -> openai provider plugin -> pooled aiohttp session."""
    from tollway import Pipeline

    pipe = Pipeline.build(
        providers={"openai": {"type": "openai", "base_url": url + "/v1", "api_key": "sk-bench"}}
    )
    await pipe.__aenter__()
    model = "openai/" + MODEL

    async def call_json() -> int:
        response = await pipe.complete(model, MESSAGES, max_tokens=MAX_TOKENS)
        return len(response.text)

    async def call_stream() -> int:
        n = 0
        async for chunk in pipe.stream(model, MESSAGES, max_tokens=MAX_TOKENS):
            if chunk.text:
                n += len(chunk.text)
        return n

    async def close() -> None:
        await pipe.__aexit__(None, None, None)

    return call_json, call_stream, close, _versions("tollway", "tollway-openai", "aiohttp")


async def setup_openai(url: str) -> tuple[Call, Call, Close, dict[str, str]]:
    """The official OpenAI SDK (httpx underneath), retries off."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=0)
    create = client.chat.completions.create

    async def call_json() -> int:
        response = await create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS)
        return len(response.choices[0].message.content or "")

    async def call_stream() -> int:
        n = 0
        stream = await create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            for choice in chunk.choices:
                text = choice.delta.content
                if text:
                    n += len(text)
        return n

    return call_json, call_stream, client.close, _versions("openai", "httpx")


async def setup_litellm(url: str) -> tuple[Call, Call, Close, dict[str, str]]:
    """LiteLLM's acompletion with its defaults, minus anything that would leave loopback."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    api_base = url + "/v1"
    model = "openai/" + MODEL

    async def call_json() -> int:
        response = await litellm.acompletion(
            model=model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            api_base=api_base,
            api_key="sk-bench",
        )
        return len(response.choices[0].message.content or "")

    async def call_stream() -> int:
        n = 0
        stream = await litellm.acompletion(
            model=model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            api_base=api_base,
            api_key="sk-bench",
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            for choice in chunk.choices:
                text = choice.delta.content
                if text:
                    n += len(text)
        return n

    async def close() -> None:
        # Let LiteLLM's fire-and-forget logging tasks finish before the loop goes away.
        await asyncio.sleep(0.05)
        closer = getattr(litellm, "close_litellm_async_clients", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                pass

    return call_json, call_stream, close, _versions("litellm", "openai", "httpx", "aiohttp")


CLIENTS = {
    "floor": setup_floor,
    "floor_any": setup_floor_any,
    "tollway": setup_tollway,
    "openai": setup_openai,
    "litellm": setup_litellm,
}


# -- timing ------------------------------------------------------------------------------------


async def run_calls(
    call: Call, calls: int, concurrency: int, expected: int, deadline: float
) -> tuple[list[float], int, str | None]:
    """``calls`` calls, ``concurrency`` at a time, starting no new call after ``deadline``.

    Each worker makes its first call whatever the deadline, so every connection gets opened.
    """
    latencies: list[float] = []
    started = 0
    errors = 0
    first_error: str | None = None
    perf = time.perf_counter

    async def worker() -> None:
        nonlocal started, errors, first_error
        first = True
        while started < calls and (first or perf() < deadline):
            first = False
            started += 1
            t0 = perf()
            try:
                got = await call()
            except Exception as exc:
                errors += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"[:500]
                continue
            latencies.append(perf() - t0)
            if got != expected:
                errors += 1
                if first_error is None:
                    first_error = f"answer had {got} characters, expected {expected}"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, first_error


def proc_cpu_seconds(pids: list[int]) -> float:
    """user + system CPU of other processes (the upstream), from /proc; 0 where unreadable."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    setup = CLIENTS[args.client]
    try:
        call_json, call_stream, close, versions = await setup(args.url)
    except ImportError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    call = call_json if args.mode == "json" else call_stream
    try:
        _, errors, first_error = await run_calls(
            call,
            args.warmup,
            args.concurrency,
            args.expected,
            time.perf_counter() + args.warmup_seconds,
        )
        if errors:
            return {"error": f"warm-up: {errors} failed calls; first: {first_error}"}
        gc.collect()
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        upstream0 = proc_cpu_seconds(args.upstream_pids)
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        latencies, errors, first_error = await run_calls(
            call, args.calls, args.concurrency, args.expected, wall0 + args.max_seconds
        )
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        upstream_cpu = proc_cpu_seconds(args.upstream_pids) - upstream0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    finally:
        await close()
    done = len(latencies)
    latencies.sort()
    return {
        "calls": done,
        "errors": errors,
        "first_error": first_error,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_call": cpu / done * 1e6 if done else None,
        "calls_per_s": done / wall if wall > 0 else None,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "upstream_cpu_us_per_call": upstream_cpu / done * 1e6 if done else None,
        # Share of the upstream's CPUs it kept busy: near 100% means it was the bottleneck.
        "upstream_busy": upstream_cpu / wall / args.upstream_cpus if wall > 0 else None,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": versions,
        "python": sys.version.split()[0],
        "executable": sys.executable,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--mode", choices=("json", "stream"), required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--warmup-seconds", type=float, default=3600.0)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--expected", type=int, required=True, help="characters in the answer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--upstream-pids", default="", help="comma-separated, for its CPU use")
    parser.add_argument("--upstream-cpus", type=int, default=1, help="CPUs the upstream can use")
    parser.add_argument(
        "--profile",
        help="cProfile the timed calls into this file (the timings are then not comparable)",
    )
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to pin this process to")
    args = parser.parse_args()
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()]
    args.upstream_pids = [int(p) for p in args.upstream_pids.split(",") if p.strip()]
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    try:
        result = asyncio.run(bench(args))
    except Exception as exc:  # report, don't crash the whole run
        result = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    sys.stdout.write("BENCH_RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
