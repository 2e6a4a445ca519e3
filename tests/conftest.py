"""Shared pytest fixtures.

Add fixtures here only when more than one test file needs them; keep each one generic and say in
its docstring what it gives and what it costs.

Trainer fixtures:

- `prepared_cache` (session): a data cache built once per test session by the real
  `trainer/prepare.py` (embedded corpus, small profile, a 3 MB cap; ~5-10 s on 2 cores). Returns
  its Path. Treat it as read-only; copy it (shutil.copytree) before damaging it.
- `trainer_env`: an environment dict for a training subprocess that uses that cache on the CPU.
- `trainer_copy`: a fresh copy of trainer/ (prepare.py, corpus.py and train.py) in a temporary folder, for
  tests that edit train.py or run it outside the repository.

Agent fixtures:

- `llm_keys`: the test key in both providers' key variables, and no base-URL or token variable from the
  machine, for tests that drive the real SDKs against the loopback server (tests/llm_server.py). Use it
  with `pytestmark = pytest.mark.usefixtures("llm_keys")`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINER_DIR = REPO_ROOT / "trainer"
PREPARED_CACHE_MB = 3  # size cap of the session cache: big enough for an 8-second trial to learn


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory) -> Path:
    """A prepared cache (embedded corpus, small profile, 3 MB), built once per session.

    Point a subprocess at it with AUTORESEARCH_CACHE=str(prepared_cache) (or use `trainer_env`).
    """
    cache = tmp_path_factory.mktemp("autoresearch-cache")
    cmd = [sys.executable, str(TRAINER_DIR / "prepare.py"), "--source", "embedded", "--profile", "small",
           "--max-mb", str(PREPARED_CACHE_MB), "--cache", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return cache


@pytest.fixture
def trainer_env(prepared_cache) -> dict[str, str]:
    """os.environ plus AUTORESEARCH_CACHE=<prepared_cache> and AUTORESEARCH_DEVICE=cpu, with any
    AUTORESEARCH_* variable from the outer environment removed (budget, metrics, seed...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_CACHE=str(prepared_cache), AUTORESEARCH_DEVICE="cpu", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def trainer_copy(tmp_path) -> Path:
    """A copy of trainer/prepare.py, corpus.py and train.py in tmp_path/"trainer"; returns that folder."""
    dest = tmp_path / "trainer"
    dest.mkdir()
    for name in ("prepare.py", "corpus.py", "train.py"):
        shutil.copy2(TRAINER_DIR / name, dest / name)
    return dest


@pytest.fixture
def llm_keys(monkeypatch) -> None:
    from tests.agents_support import KEY_VARIABLES, SECRET

    for name in KEY_VARIABLES.values():
        monkeypatch.setenv(name, SECRET)
    for name in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
