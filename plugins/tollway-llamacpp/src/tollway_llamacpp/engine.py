"""The llama.cpp side: a loaded GGUF model and its generations. Runs in worker threads only.

This is the one module that imports llama_cpp (a third of a second, and a native library), so
it is imported by the thread that loads the first model, never by the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import llama_cpp
from llama_cpp import llama_chat_format

from tollway.errors import ConfigError
from tollway_llamacpp.control import Generated, GenerationControl
from tollway_llamacpp.settings import LlamaCppSettings, context_window

TRANSCRIPT = "transcript"


@llama_cpp.llama_log_callback  # type: ignore[misc]
def _drop_native_log(level: int, text: bytes, user_data: Any) -> None:
    """llama.cpp writes notes to stderr from C even with verbose=False (such as its
    sliding-window cache notice at the first call); a CLI's output must stay clean."""


# Installed once, at import; the module keeps the callback alive for as long as C may call it.
llama_cpp.llama_log_set(_drop_native_log, None)


class _TrackedLlama(llama_cpp.Llama):
    """A Llama whose token loop counts what it samples and stops when its control is cancelled.

    Both completion and streaming go through ``generate``, so counting here gives a stream the
    same token counts a completion reports (llama-cpp-python reports usage only for the
    latter), and checking the stop flag here stops a stream within one token.
    """

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.control: GenerationControl | None = None
        self._vocab = llama_cpp.llama_model_get_vocab(self.model)

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        inner = super().generate(tokens, *args, **kwargs)
        if self.control is None:
            return inner
        return self._tracked(inner, len(tokens), self.control)

    def _tracked(
        self, inner: Generator[int, Any, None], prompt_tokens: int, control: GenerationControl
    ) -> Generator[int, None, None]:
        control.prompt_tokens = prompt_tokens
        try:
            for token in inner:
                if control.cancelled:
                    return
                if not control.ended:
                    if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        control.ended = True
                    else:
                        control.completion_tokens += 1
                yield token
        finally:
            inner.close()


_PRIMER = (
    "A conversation between a curious user and a helpful, knowledgeable assistant. "
    "The assistant answers briefly and directly.\n\n"
    "User: What is the capital of France?\n"
    "Assistant: The capital of France is Paris.\n"
    "User: How many legs does a spider have?\n"
    "Assistant: A spider has eight legs."
)


def _transcript(*, messages: list[Any], **_: Any) -> llama_chat_format.ChatFormatterResponse:
    """A plain ``User:`` / ``Assistant:`` transcript, for GGUFs that carry no chat template.

    The bundled gemma-3-270m is the pretrained (not instruction-tuned) model and has no
    template: Gemma's turn markers make it echo the prompt, and llama-cpp-python's fallback
    (llama-2's [INST]) makes it write more [INST] blocks, while it continues a transcript
    sensibly. System messages become plain paragraphs at the top.

    A base model also needs to be shown what a transcript is: asked cold it repeats the
    question, while two short example turns just before the conversation make it answer
    ("Name three colours of the rainbow" gets colours, not itself). The primer's tokens are
    real prompt tokens and are counted as such.
    """
    system = [str(m.get("content") or "").strip() for m in messages if m["role"] == "system"]
    lines = [text + "\n" for text in system if text]
    lines.append(_PRIMER)
    for message in messages:
        if message["role"] == "system":
            continue
        content = str(message.get("content") or "").strip()
        label = "User" if message["role"] == "user" else "Assistant"
        lines.append(f"{label}: {content}")
    lines.append("Assistant:")
    return llama_chat_format.ChatFormatterResponse(
        prompt="\n".join(lines), stop=["\nUser:", "\nAssistant:"], added_special=False
    )


def _thread_count() -> int:
    """One thread fewer than the CPUs this process may run on (a container may have fewer
    than the machine), and at least one.

    llama.cpp's threads meet at a barrier after every step, so a thread that loses its CPU
    stalls the others: on 2 busy CPUs, 2 threads made 2 tokens/s where 1 thread made 30. The
    CPU left over keeps the event loop and the rest of the machine from taking one from them.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS or Windows
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


class _StreamTrimmer:
    """Strips a streamed answer as str.strip() strips a whole one: leading whitespace is
    dropped, and whitespace is held back until something follows it."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def feed(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        body = text.rstrip()
        if not body:
            self._held += text
            return ""
        out = self._held + body
        self._held = text[len(body) :]
        return out


class Engine:
    """One loaded model. Not thread-safe: the provider runs one generation at a time on it."""

    def __init__(self, llm: _TrackedLlama, *, transcript: bool) -> None:
        self._llm = llm
        # A transcript answer starts with the space after "Assistant:" and ends with the
        # newline before the next "User:"; neither is part of the answer.
        self._strip = transcript

    @classmethod
    def load(cls, path: Path, settings: LlamaCppSettings, *, section: str) -> Engine:
        chat_format = settings.chat_format
        if (
            chat_format
            and chat_format != TRANSCRIPT
            and not chat_format.startswith("chat_template.")
        ):
            try:
                llama_chat_format.get_chat_completion_handler(chat_format)
            except Exception as exc:
                raise ConfigError(
                    f"{exc}; or use {TRANSCRIPT!r}, or leave chat_format out to use the "
                    "model's own chat template",
                    key=f"{section}.chat_format",
                ) from exc
        threads = settings.n_threads or _thread_count()
        params: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": context_window(settings),
            "n_batch": settings.n_batch,
            "n_threads": threads,
            "n_threads_batch": threads,
            "n_gpu_layers": settings.n_gpu_layers,
            "verbose": False,
        }
        if settings.seed is not None:
            params["seed"] = settings.seed
        if chat_format and chat_format != TRANSCRIPT:
            params["chat_format"] = chat_format
        try:
            llm = _TrackedLlama(**params)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"llama.cpp could not load {str(path)!r}: {exc}; check that it is a GGUF "
                "model this llama-cpp-python supports, and that n_ctx fits in memory",
                key=f"{section}.model_path",
            ) from exc
        transcript = chat_format == TRANSCRIPT or (
            chat_format is None and "tokenizer.chat_template" not in llm.metadata
        )
        if transcript:
            llm.chat_handler = llama_chat_format.chat_formatter_to_chat_completion_handler(
                _transcript
            )
        return cls(llm, transcript=transcript)

    def complete(self, params: Mapping[str, Any], control: GenerationControl) -> Generated:
        self._llm.control = control
        try:
            result: Any = self._llm.create_chat_completion(**params, stream=False)
        finally:
            self._llm.control = None
        control.raise_if_cancelled()
        choice = result["choices"][0]
        text = choice["message"]["content"] or ""
        if self._strip:
            text = text.strip()
        usage = result["usage"]
        return Generated(
            id=result["id"],
            text=text,
            finish_reason=choice["finish_reason"],
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
        )

    def stream(
        self,
        params: Mapping[str, Any],
        control: GenerationControl,
        emit: Callable[[str], None],
    ) -> Generated:
        """Hand each piece of text to ``emit`` as it comes; return the totals at the end."""
        finish_reason = None
        trim = _StreamTrimmer() if self._strip else None
        self._llm.control = control
        try:
            chunks = cast(Iterator[Any], self._llm.create_chat_completion(**params, stream=True))
            try:
                for chunk in chunks:
                    control.raise_if_cancelled()
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content") or ""
                    if trim is not None:
                        text = trim.feed(text)
                    if text:
                        emit(text)
                    finish_reason = choice["finish_reason"] or finish_reason
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
        finally:
            self._llm.control = None
        control.raise_if_cancelled()
        return Generated(
            id="",
            text="",
            finish_reason=finish_reason,
            prompt_tokens=control.prompt_tokens,
            completion_tokens=control.completion_tokens,
        )

    def close(self) -> None:
        self._llm.close()
