"""A tour of tollway that runs anywhere: offline, no key, against the fake OpenAI server.

    uv run python examples/quickstart.py

It assembles a pipeline in code with a cache, retries and a circuit breaker, makes a call, makes
it again (answered from the cache), streams one, survives injected upstream failures, and
prints what the metrics saw.
"""

from __future__ import annotations

import asyncio

from tollway import Pipeline
from tollway.testing import FakeOpenAI


async def main() -> None:
    async with FakeOpenAI() as fake:
        providers = {"openai": {"base_url": fake.base_url, "api_key": "sk-example"}}
        # The same tables as in tollway.toml, checked the same way.
        settings = {
            "cache": {"enabled": True, "backend": "memory", "ttl": 600},
            "retry": {"enabled": True, "max_attempts": 4, "base_delay": 0.01},
            "circuit_breaker": {"enabled": True},
        }
        async with Pipeline.build(providers=providers, settings=settings) as pipe:
            model = "openai/gpt-4o-mini"

            reply = await pipe.complete(model, "Name three colours of the rainbow", user="u-17")
            print(f"answer:  {reply.text}")
            print(f"usage:   {reply.usage}")

            again = await pipe.complete(model, "Name three colours of the rainbow", user="u-18")
            print(f"again:   cached={again.cached}, upstream calls so far={len(fake.requests)}")

            print("stream:  ", end="")
            async for chunk in pipe.stream(model, "Count to five", cache="off"):
                print(chunk.text, end="", flush=True)
            print()

            fake.fail(503, "The engine is currently overloaded")
            fake.fault("reset")
            survived = await pipe.complete(model, "Still there?")
            print(f"retried: {survived.text!r} after a 503 and a connection reset")

            hits = pipe.metrics.get("cache_hits_total")
            retries = pipe.metrics.get("retries_total")
            print(
                f"metrics: cache hits {sum(hits.values.values()) if hits else 0:.0f}, "
                f"retries {sum(retries.values.values()) if retries else 0:.0f}"
            )
            for endpoint, health in pipe.health().items():
                print(
                    f"health:  {endpoint} requests={health['requests']} "
                    f"failures={health['failures']} open={health['open']}"
                )


if __name__ == "__main__":
    asyncio.run(main())
