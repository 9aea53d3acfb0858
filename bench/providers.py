"""CPU per call of each provider plugin through the pipeline, as a ratio to the OpenAI plugin's.

Each provider talks to its own fake server (from ``tollway.testing``), run in a separate process
pinned to another core, scripted to give the same answer text, so what differs is only each
plugin's own work: building the request in its vendor's shape, signing (Bedrock), and parsing
the vendor's JSON, SSE or event-stream framing back into tollway's records.

    uv run --frozen python bench/providers.py                 # json and stream, concurrency 16
    uv run --frozen python bench/providers.py --calls 4000 --repeat 3

The target (issue #3): each provider within 1.1x the OpenAI plugin's CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

PROVIDERS = ("openai", "anthropic", "gemini", "bedrock", "ollama")
FAKES = {
    "openai": "FakeOpenAI",
    "anthropic": "FakeAnthropic",
    "gemini": "FakeGemini",
    "bedrock": "FakeBedrock",
    "ollama": "FakeOllama",
}
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "anthropic.claude-3-5-haiku-20241022-v1:0",
    "ollama": "llama3.2",
}
# About 100 tokens, as bench/upstream.py answers.
ANSWER = (
    "Benchmarks measure what they measure: here, the work a client does around one call. " * 6
).strip()
PROMPT = [{"role": "user", "content": "Write a short paragraph about the benchmark."}]
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDBENCH",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_REGION": "us-east-1",
}


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cpu})


async def _serve(name: str) -> None:
    """Run one fake (on a port of its own choosing) with a fixed answer, until killed."""
    import tollway.testing

    async with getattr(tollway.testing, FAKES[name])() as fake:
        fake.reply(ANSWER, times=10**7)
        print(json.dumps({"base_url": fake.base_url}), flush=True)
        await asyncio.Event().wait()


def _settings(name: str, base_url: str) -> dict[str, Any]:
    if name == "bedrock":
        return {"base_url": base_url, "control_url": base_url, "region": "us-east-1"}
    if name == "ollama":
        return {"base_url": base_url}
    return {"base_url": base_url, "api_key": "bench-key"}


async def _client(name: str, base_url: str, mode: str, calls: int, concurrency: int) -> float:
    from tollway import Pipeline

    model = f"{name}/{MODELS[name]}"
    async with Pipeline.build(providers={name: _settings(name, base_url)}) as pipe:

        async def one() -> None:
            if mode == "json":
                reply = await pipe.complete(model, PROMPT, max_tokens=256)
                assert reply.text == ANSWER, reply.text[:80]
            else:
                text = []
                async for chunk in pipe.stream(model, PROMPT, max_tokens=256):
                    text.append(chunk.text)
                assert "".join(text) == ANSWER

        for _ in range(max(50, 2 * concurrency)):
            await one()
        remaining = iter(range(calls))

        async def worker() -> None:
            for _ in remaining:
                await one()

        started = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--modes", default="json,stream")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(AWS_ENV)

    if args.serve:
        _pin(1)
        asyncio.run(_serve(args.serve))
        return
    if args.client:
        _pin(0)
        cpu = asyncio.run(_client(args.client, args.url, args.mode, args.calls, args.concurrency))
        print(json.dumps({"cpu_us": cpu}))
        return

    results: dict[tuple[str, str], list[float]] = {}
    for name in args.providers.split(","):
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", name],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **AWS_ENV},
        )
        try:
            assert server.stdout is not None
            base_url = json.loads(server.stdout.readline())["base_url"]
            for _ in range(args.repeat):
                for mode in args.modes.split(","):
                    out = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--client",
                            name,
                            "--url",
                            base_url,
                            "--mode",
                            mode,
                            "--calls",
                            str(args.calls),
                            "--concurrency",
                            str(args.concurrency),
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                        env={**os.environ, **AWS_ENV},
                    )
                    cpu = json.loads(out.stdout.strip().splitlines()[-1])["cpu_us"]
                    results.setdefault((name, mode), []).append(cpu)
                    print(f"  {mode:6} {name:10} {cpu:8.1f} us CPU/call", flush=True)
        finally:
            server.terminate()
            server.wait()

    print(
        f"\n== CPU per call through the pipeline, concurrency {args.concurrency}; "
        "ratio to the OpenAI plugin =="
    )
    print(f"{'provider':10} {'mode':6} {'us/call':>9} {'x openai':>9}  target <= 1.1x")
    for mode in args.modes.split(","):
        base = statistics.median(results.get(("openai", mode), [float("nan")]))
        for name in args.providers.split(","):
            value = statistics.median(results[(name, mode)])
            ratio = value / base
            verdict = "ok" if ratio <= 1.1 else "MISS"
            print(f"{name:10} {mode:6} {value:9.1f} {ratio:8.2f}x  {verdict}")


if __name__ == "__main__":
    main()
