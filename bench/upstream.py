"""A mock OpenAI Chat Completions upstream for the benchmark: cheap, fixed, wire-faithful.

``POST /v1/chat/completions`` answers with a fixed ``chat.completion`` body (a ~100-token answer
with usage), or, when the request says ``"stream": true``, with an SSE stream shaped like
OpenAI's: a role chunk, ``--chunks`` content chunks, a chunk with ``finish_reason``, a usage chunk
when ``stream_options.include_usage`` is set, then ``data: [DONE]``. Every body is built once at
start-up, so the upstream spends its CPU on HTTP, not on making answers.

Each content chunk is written separately (one ``write`` per SSE event, chunked transfer encoding,
as OpenAI sends them), so the client reads events the way it would from a real model rather than
one big buffer. ``--coalesce`` writes the whole stream at once instead.

Run it on its own: ``python bench/upstream.py --port 8765 [--workers 2] [--cpus 1]``. With
``--workers`` > 1 every worker binds the same port with SO_REUSEPORT and the kernel spreads the
connections. ``GET /health`` answers 200 once the worker is up.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_732_000_000
FINGERPRINT = "fp_0ba0d124f1"
PROMPT_TOKENS = 27

# About 100 tokens of ordinary prose (the tokenizer counts ~1 token per 4.3 characters here).
ANSWER = (
    "Connection pooling keeps a small set of open TCP connections to each upstream host and "
    "hands them out to requests as they arrive, so most calls skip the handshake entirely. "
    "The pool should be sized to the concurrency you expect, with an idle timeout shorter than "
    "the server's keep-alive, and it must be closed when the application shuts down so that no "
    "socket is left half open. Measure the effect before and after: latency at the 99th "
    "percentile usually improves the most."
)
COMPLETION_TOKENS = 100


def _usage() -> dict[str, object]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_body() -> bytes:
    """The fixed non-streaming answer, exactly as OpenAI lays it out."""
    body = {
        "id": "chatcmpl-BenchFixedAnswer0000000000001",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": ANSWER,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    return json.dumps(body, indent=2).encode()


def split_answer(n: int) -> list[str]:
    """The answer cut into ``n`` pieces at word boundaries (as even as the words allow)."""
    words = ANSWER.split(" ")
    n = max(1, min(n, len(words)))
    pieces: list[str] = []
    per, extra = divmod(len(words), n)
    start = 0
    for i in range(n):
        stop = start + per + (1 if i < extra else 0)
        text = " ".join(words[start:stop])
        pieces.append(text if i == 0 else " " + text)
        start = stop
    assert "".join(pieces) == ANSWER
    return pieces


def stream_events(n_chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed answer, each ``data: ...\\n\\n``, ``[DONE]`` last."""
    base = {
        "id": "chatcmpl-BenchFixedStream0000000000001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }

    def chunk(choices: list[dict[str, object]], usage: object = None) -> bytes:
        payload: dict[str, object] = {**base, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [chunk([choice({"role": "assistant", "content": "", "refusal": None})])]
    events += [chunk([choice({"content": piece})]) for piece in split_answer(n_chunks)]
    events.append(chunk([choice({}, "stop")]))
    if include_usage:
        events.append(chunk([], _usage()))
    events.append(b"data: [DONE]\n\n")
    return events


def make_app(n_chunks: int, coalesce: bool):  # type: ignore[no-untyped-def]
    from aiohttp import web

    body = completion_body()
    streams = {flag: stream_events(n_chunks, flag) for flag in (False, True)}
    joined = {flag: b"".join(events) for flag, events in streams.items()}
    json_headers = {"Content-Type": "application/json", "x-request-id": "req_bench_json"}
    sse_headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "x-request-id": "req_bench_stream",
    }

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            params = json.loads(raw)
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON body"}}, status=400)
        if not params.get("stream"):
            return web.Response(body=body, headers=json_headers)
        options = params.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        response = web.StreamResponse(headers=sse_headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        if coalesce:
            await response.write(joined[include_usage])
        else:
            for event in streams[include_usage]:
                await response.write(event)
        await response.write_eof()
        return response

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    return app


def serve(port: int, n_chunks: int, coalesce: bool, reuse_port: bool, cpus: list[int]) -> None:
    from aiohttp import web

    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    web.run_app(
        make_app(n_chunks, coalesce),
        host="127.0.0.1",
        port=port,
        reuse_port=reuse_port,
        access_log=None,
        print=None,
        backlog=1024,
        handle_signals=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to pin the workers to")
    parser.add_argument("--coalesce", action="store_true", help="write each stream in one write")
    args = parser.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()]
    if args.workers <= 1:
        serve(args.port, args.chunks, args.coalesce, False, cpus)
        return
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=serve, args=(args.port, args.chunks, args.coalesce, True, cpus))
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()

    def stop(*_: object) -> None:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(5)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()
