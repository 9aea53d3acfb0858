"""The docs keep step with the code: every hook has its section, and the README's commands exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from tollway import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS_DOC = ROOT / "docs" / "plugins" / "hooks.md"


def _hook_names() -> list[str]:
    return sorted(
        name
        for name, value in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("tollway_")
    )


def test_there_are_hooks_to_document() -> None:
    assert len(_hook_names()) >= 8


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_has_a_section_in_the_docs(hook: str) -> None:
    headings = re.findall(r"^#+\s+(\S+)\s*$", HOOKS_DOC.read_text(), flags=re.M)
    assert hook in headings, f"docs/plugins/hooks.md needs a '### {hook}' section"


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_is_documented_where_declared(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc, f"{hook} in hookspecs.py needs a docstring"
    assert len(doc) > 40, f"{hook}'s docstring should say what to register and when it runs"


def test_docs_name_no_hook_that_does_not_exist() -> None:
    named = set(re.findall(r"\btollway_[a-z_]+\b", HOOKS_DOC.read_text()))
    named -= {"tollway_myplugin", "tollway_hello"}
    assert named <= set(_hook_names()), named - set(_hook_names())


_CONFIG_KEYS = {
    "providers",
    "cache",
    "retry",
    "pricing",
    "usage",
    "budgets",
    "rate_limits",
    "single_flight",
    "circuit_breaker",
    "fallbacks",
    "default_model",
    "aliases",
    "logging",
}


def _toml_blocks() -> list[tuple[str, int, str]]:
    """The TOML examples of README and docs that are tollway configs (not a pyproject)."""
    import tomllib

    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        for match in re.finditer(r"```toml\n(.*?)```", text, flags=re.S):
            if set(tomllib.loads(match.group(1))) & _CONFIG_KEYS:
                line = text[: match.start()].count("\n") + 1
                blocks.append((str(path.relative_to(ROOT)), line, match.group(1)))
    return blocks


@pytest.mark.parametrize(
    ("path", "line", "block"), _toml_blocks(), ids=[f"{p}:{n}" for p, n, _ in _toml_blocks()]
)
def test_config_examples_in_the_docs_load(path: str, line: int, block: str) -> None:
    """Every TOML example a reader may copy is a config tollway accepts."""
    import tomllib

    from tollway.config import load_config
    from tollway.plugins import build_plugin_manager

    load_config(data=tomllib.loads(block), plugins=build_plugin_manager(), environ={})
