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

With ``--vary`` every call is a different request: the prompt ends with the call's number and
the call names one of 16 users (``user`` in the body), so no cache or coalescing can answer
it. Every client sends the same payloads then, so they stay comparable. ``tollway_stages``
(tollway with issue #5's stages switched on, see ``STAGES_CONFIG``) is meant to run so: each
of its calls is then a cache miss that goes through every stage to the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
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

# --vary: every call a different prompt (and one of USERS), the same for every client.
VARY = False
USERS = tuple(f"bench-user-{i}" for i in range(16))
_call_numbers = itertools.count()


def next_call() -> tuple[list[dict[str, str]], str | None]:
    """The messages and user of the next call: fixed, or with --vary unique to the call."""
    if not VARY:
        return MESSAGES, None
    n = next(_call_numbers)
    return [{"role": "user", "content": f"{PROMPT} (call {n})"}], USERS[n % len(USERS)]


def _user_kw(user: str | None) -> dict[str, str]:
    return {"user": user} if user is not None else {}


# tollway_stages' stages, by their config table; --stages picks a subset (default: all).
STAGE_TABLES = ("cache", "single_flight", "retry", "circuit_breaker", "rate_limits", "fallbacks")
STAGES = STAGE_TABLES


def stages_config(url: str, stages: tuple[str, ...] = STAGE_TABLES) -> dict[str, Any]:
    """tollway_stages' config (issue #5's stages, all on), as ``load_config(data=...)`` takes."""
    tables = _stage_tables()
    return {
        "providers": {"openai": {"type": "openai", "base_url": url + "/v1", "api_key": "sk-bench"}},
        **{name: tables[name] for name in stages},
    }


def _stage_tables() -> dict[str, Any]:
    return {
        "cache": {"enabled": True, "backend": "memory"},
        "single_flight": {"enabled": True, "backend": "local"},
        "retry": {"enabled": True},
        "circuit_breaker": {"enabled": True},
        "rate_limits": {
            "enabled": True,
            "backend": "local",
            # Generous: never makes a call wait, but every call is counted in its user's buckets.
            "rules": [
                {
                    "scope": "user",
                    "match": "*",
                    "requests_per_minute": 1e9,
                    "tokens_per_minute": 1e12,
                }
            ],
        },
        # Never used (the upstream does not fail), but the stage is on and looks the model up.
        "fallbacks": {"openai/" + MODEL: ["openai/gpt-4o"]},
    }


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
    json_body, stream_body_for = _bodies(body), _bodies(stream_body)

    async def call_json() -> int:
        async with session.post(endpoint, json=json_body(), headers=headers) as resp:
            data = loads(await resp.read())
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        return len(data["choices"][0]["message"]["content"])

    async def call_stream() -> int:
        n = 0
        async with session.post(endpoint, json=stream_body_for(), headers=headers) as resp:
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


def _bodies(body: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """The floor's request body per call: always ``body``, or with --vary a fresh one."""
    if not VARY:
        return lambda: body

    def varied() -> dict[str, Any]:
        messages, user = next_call()
        return {**body, "messages": messages, "user": user}

    return varied


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
    stream_body_for = _bodies(stream_body)

    async def call_stream() -> int:
        n = 0
        rest = b""
        async with session.post(endpoint, json=stream_body_for(), headers=headers) as resp:
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
    return await _tollway_calls(pipe)


async def _tollway_calls(pipe: Any) -> tuple[Call, Call, Close, dict[str, str]]:
    await pipe.__aenter__()
    model = "openai/" + MODEL

    async def call_json() -> int:
        messages, user = next_call()
        response = await pipe.complete(model, messages, max_tokens=MAX_TOKENS, user=user)
        return len(response.text)

    async def call_stream() -> int:
        n = 0
        messages, user = next_call()
        async for chunk in pipe.stream(model, messages, max_tokens=MAX_TOKENS, user=user):
            if chunk.text:
                n += len(chunk.text)
        return n

    async def close() -> None:
        await pipe.__aexit__(None, None, None)

    return call_json, call_stream, close, _versions("tollway", "tollway-openai", "aiohttp")


async def setup_tollway_stages(url: str) -> tuple[Call, Call, Close, dict[str, str]]:
    """tollway with issue #5's stages on (cache memory, single_flight local, retry,
    circuit_breaker, a per-user rate limit, fallbacks): run with --vary, every call a miss."""
    from tollway import Pipeline
    from tollway.config import load_config
    from tollway.plugins import build_plugin_manager

    data = stages_config(url, STAGES)
    config = load_config(data=data, plugins=build_plugin_manager(), environ={})
    pipe = Pipeline.build(config=config)
    return await _tollway_calls(pipe)


async def setup_openai(url: str) -> tuple[Call, Call, Close, dict[str, str]]:
    """The official OpenAI SDK (httpx underneath), retries off."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=0)
    create = client.chat.completions.create

    async def call_json() -> int:
        messages, user = next_call()
        response = await create(
            model=MODEL, messages=messages, max_tokens=MAX_TOKENS, **_user_kw(user)
        )
        return len(response.choices[0].message.content or "")

    async def call_stream() -> int:
        n = 0
        messages, user = next_call()
        stream = await create(
            model=MODEL,
            messages=messages,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            **_user_kw(user),
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
        messages, user = next_call()
        response = await litellm.acompletion(
            model=model,
            messages=messages,
            max_tokens=MAX_TOKENS,
            api_base=api_base,
            api_key="sk-bench",
            **_user_kw(user),
        )
        return len(response.choices[0].message.content or "")

    async def call_stream() -> int:
        n = 0
        messages, user = next_call()
        stream = await litellm.acompletion(
            model=model,
            messages=messages,
            max_tokens=MAX_TOKENS,
            api_base=api_base,
            api_key="sk-bench",
            stream=True,
            stream_options={"include_usage": True},
            **_user_kw(user),
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
    "tollway_stages": setup_tollway_stages,
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
        "vary": VARY,
        "stages": list(STAGES) if args.client == "tollway_stages" else [],
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
    parser.add_argument(
        "--vary", action="store_true", help="every call a different prompt and one of 16 users"
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGE_TABLES),
        help=f"tollway_stages only: which of {','.join(STAGE_TABLES)} to switch on (default all)",
    )
    args = parser.parse_args()
    global VARY, STAGES
    VARY = args.vary
    STAGES = tuple(t for t in args.stages.split(",") if t)
    unknown = set(STAGES) - set(STAGE_TABLES)
    if unknown:
        parser.error(f"unknown stage table(s) {', '.join(sorted(unknown))}")
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
