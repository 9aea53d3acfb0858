"""The hello provider: answers ``<greeting>, <last user text>!`` in words, streamed word by word."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

from tollway.errors import BadRequestError
from tollway.types import Message, ModelInfo, Request, Response, StreamChunk, Usage

_ids = itertools.count(1)


class HelloProvider:
    def __init__(self, name: str, greeting: str) -> None:
        self.name = name
        self.greeting = greeting

    def _answer(self, request: Request) -> tuple[str, Usage, str]:
        users = [m for m in request.messages if m.role == "user"]
        if not users:
            raise BadRequestError("hello needs at least one user message", provider=self.name)
        text = f"{self.greeting}, {users[-1].text.strip()}!"
        words = text.split()
        finish = "stop"
        if request.max_tokens is not None and len(words) > request.max_tokens:
            words, finish = words[: request.max_tokens], "length"
        prompt_words = sum(len(m.text.split()) for m in request.messages)
        return " ".join(words), Usage(input_tokens=prompt_words, output_tokens=len(words)), finish

    async def complete(self, request: Request) -> Response:
        text, usage, finish = self._answer(request)
        return Response(
            f"hello-{next(_ids)}",
            request.model,
            self.name,
            Message("assistant", text),
            finish,
            usage,
        )

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        text, usage, finish = self._answer(request)
        for i, word in enumerate(text.split(" ")):
            yield StreamChunk(text=word if i == 0 else " " + word)
        yield StreamChunk(finish_reason=finish, usage=usage)

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("friendly", self.name, supports_tools=False)]

    async def aclose(self) -> None:
        return None
