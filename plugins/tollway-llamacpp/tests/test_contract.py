"""tollway's provider contract, run against the bundled model through a real Pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tollway.testing.contract import ProviderContract

pytestmark = pytest.mark.slow


class TestLlamaCppContract(ProviderContract):
    provider_type = "llamacpp"
    model = "gemma-3-270m"

    @pytest.fixture(autouse=True)
    def _use_the_session_cache(self, model_cache: Path) -> None:
        self.cache_dir = model_cache

    def settings(self, fake: Any) -> dict[str, Any]:
        return {"cache_dir": str(self.cache_dir)}
