"""Each distribution builds on its own, and the wheels install and work in a clean venv with pip.

This is what a user of ``pip install "tollway[openai]"`` gets: no workspace, no uv sources.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = (
    "tollway",
    "tollway_openai",
    "tollway_llamacpp",
    "tollway_hello",
    "tollway_anthropic",
    "tollway_gemini",
    "tollway_bedrock",
    "tollway_ollama",
    "tollway_redis",
    "tollway_genai_prices",
    "tollway_postgres",
    "tollway_reports",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheels: pip install uv"
    subprocess.run(
        [uv, "build", "--all-packages", "--no-sources", "-o", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


def test_every_distribution_builds_alone(dist: Path) -> None:
    for name in DISTRIBUTIONS:
        assert list(dist.glob(f"{name}-0.1.0-py3-none-any.whl")), name
        assert list(dist.glob(f"{name}-0.1.0.tar.gz")), name


def test_core_extras_pin_the_plugins_in_lockstep(dist: Path) -> None:
    with zipfile.ZipFile(next(dist.glob("tollway-0.1.0-*.whl"))) as wheel:
        meta = wheel.read("tollway-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: tollway-openai==0.1.0; extra == 'openai'" in meta
    assert "Requires-Dist: tollway-llamacpp==0.1.0; extra == 'llamacpp'" in meta


def test_pip_installs_the_extra_and_finds_the_plugin(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLWAY_", "VIRTUAL_ENV"))}
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--find-links",
            str(dist),
            "tollway[openai]==0.1.0",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    probe = (
        "import json, sys\n"
        "from tollway.plugins import build_plugin_manager\n"
        "m = build_plugin_manager()\n"
        "print(json.dumps({'providers': sorted(m.providers()), 'failures': len(m.failures),\n"
        "  'heavy': [x for x in ('openai', 'llama_cpp') if x in sys.modules]}))\n"
    )
    result = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, env=env
    )
    found = json.loads(result.stdout)
    assert {"openai", "azure"} <= set(found["providers"])
    assert "llamacpp" not in found["providers"]
    assert found["failures"] == 0
    assert found["heavy"] == []
    plugins = subprocess.run(
        [str(venv / "bin" / "tollway"), "plugins"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    assert "tollway-openai 0.1.0" in plugins.stdout
