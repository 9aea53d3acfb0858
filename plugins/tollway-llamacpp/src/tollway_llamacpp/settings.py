"""The keys of a ``[providers.NAME]`` section of type ``llamacpp``."""

from __future__ import annotations

import attrs

from tollway.providers import ProviderSettings

BUNDLED_MODEL = "gemma-3-270m"

_positive = attrs.validators.gt(0)

# llama.cpp pads the context it allocates to a multiple of this, while llama-cpp-python sizes
# its token buffer by the n_ctx it was given: a prompt that fits the padded context but not the
# buffer then fails with a numpy broadcast error. Asking for the padded size keeps them equal.
_CONTEXT_PADDING = 256


@attrs.define(kw_only=True)
class LlamaCppSettings(ProviderSettings):
    """How to find and run the local models.

    ``default_model`` names the model at ``model_path`` (the bundled gemma-3-270m when that is
    left out); ``models`` maps more names to GGUF files. A request for ``llamacpp`` alone, or
    ``llamacpp/``, gets the default model.
    """

    default_model: str | None = BUNDLED_MODEL
    model_path: str | None = None
    models: dict[str, str] = attrs.field(factory=dict)
    n_ctx: int = attrs.field(default=4096, validator=_positive)
    n_threads: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    n_batch: int = attrs.field(default=512, validator=_positive)
    n_gpu_layers: int = 0
    seed: int | None = None
    chat_format: str | None = None
    cache_dir: str | None = None
    max_tokens: int = attrs.field(default=256, validator=_positive)


def context_window(settings: LlamaCppSettings) -> int:
    """The context llama.cpp really allocates for ``settings.n_ctx``."""
    return -(-settings.n_ctx // _CONTEXT_PADDING) * _CONTEXT_PADDING
