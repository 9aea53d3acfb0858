"""The pieces of the llama.cpp side that need no model: the transcript and the stream trimmer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tollway_llamacpp.engine import _PRIMER, _StreamTrimmer, _transcript


def test_transcript_puts_system_text_before_the_turns_and_ends_with_the_assistant() -> None:
    formatted = _transcript(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": " Hi! "},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Capital of France?"},
        ]
    )
    assert formatted.prompt == (
        f"Be brief.\n\n{_PRIMER}\n"
        "User: Hi!\nAssistant: Hello.\nUser: Capital of France?\nAssistant:"
    )
    # The primer shows a base model what a transcript is, with example turns to continue.
    assert "\nUser: " in _PRIMER
    assert "\nAssistant: " in _PRIMER
    # A new speaker label ends the answer; the model would otherwise write both sides.
    assert formatted.stop == ["\nUser:", "\nAssistant:"]
    # No BOS in the text: llama.cpp adds the model's own when it tokenizes.
    assert formatted.added_special is False


@given(st.lists(st.text(alphabet=" \n\tab.", max_size=6), max_size=12))
def test_a_trimmed_stream_joins_to_the_stripped_whole(pieces: list[str]) -> None:
    trimmer = _StreamTrimmer()
    assert "".join(trimmer.feed(piece) for piece in pieces) == "".join(pieces).strip()
