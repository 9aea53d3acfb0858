"""Chat with the local model: offline, no key, no server (needs `tollway[llamacpp]`).

uv run python examples/local_model.py "Why is the sky blue?"
"""

from __future__ import annotations

import asyncio
import sys

from tollway import Pipeline


async def main(prompt: str) -> None:
    async with Pipeline.build() as pipe:
        print(f"model: {pipe.default_model}")
        async for chunk in pipe.stream(None, prompt, max_tokens=48, temperature=0):
            print(chunk.text, end="", flush=True)
            if chunk.usage is not None:
                print(f"\n[{chunk.usage.input_tokens} in, {chunk.usage.output_tokens} out]")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Name three colours of the rainbow"))
