"""Helpers shared by the trainer benchmarks: prepare a cache, run a trial, read its summary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINER_DIR = REPO_ROOT / "trainer"


def default_cache() -> Path:
    env = os.environ.get("AUTORESEARCH_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def ensure_cache(cache: Path, profile: str) -> dict:
    """Prepare `cache` with `profile` unless it already holds a cache of that profile.

    A cache of another profile is left alone (an error says to pass another --cache), so a
    benchmark never rebuilds someone's working cache behind their back."""
    manifest_path = cache / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if profile != "auto" and manifest.get("profile") != profile:
            raise SystemExit(f"{cache} holds a {manifest.get('profile')!r} cache; this benchmark needs {profile!r}: "
                             f"pass --cache with another folder")
    cmd = [sys.executable, str(TRAINER_DIR / "prepare.py"), "--profile", profile, "--cache", str(cache)]
    if not manifest_path.is_file():
        cmd += ["--source", "embedded"]
    subprocess.run(cmd, check=True)
    return json.loads(manifest_path.read_text())


def parse_summary(stdout: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line of a trial's stdout."""
    lines = stdout.splitlines()
    if "---" not in lines:
        return {}
    start = len(lines) - 1 - lines[::-1].index("---")
    out = {}
    for line in lines[start + 1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def edit_constant(source: str, name: str, value: str) -> str:
    """Replace the value of the one-line hyperparameter `name` in train.py source."""
    new, n = re.subn(rf"^{name} = .*$", f"{name} = {value}  # set by the benchmark", source, flags=re.M)
    if n != 1:
        raise ValueError(f"train.py has {n} lines defining {name}")
    return new


def replace_once(source: str, old: str, new: str) -> str:
    """`source` with the one occurrence of `old` replaced; an error if train.py no longer has exactly one."""
    count = source.count(old)
    if count != 1:
        raise ValueError(f"train.py has {count} occurrences of {old.strip()[:60]!r}; update the benchmark's patch")
    return source.replace(old, new)


def run_trial(cache: Path, budget: float, device: str, seed: int = 42, overrides: dict[str, str] | None = None,
              timeout: float | None = None, patch: Callable[[str], str] | None = None) -> dict:
    """Run train.py (a copy, when hyperparameters are overridden or `patch` rewrites its source) and return its
    summary plus 'returncode', 'wall_seconds', 'metrics' (the parsed per-step lines) and 'log_tail'."""
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        tmp = Path(tmp)
        script = TRAINER_DIR / "train.py"
        if overrides or patch:
            source = script.read_text()
            for name, value in (overrides or {}).items():
                source = edit_constant(source, name, value)
            if patch is not None:
                source = patch(source)
            (tmp / "prepare.py").write_text((TRAINER_DIR / "prepare.py").read_text())
            script = tmp / "train.py"
            script.write_text(source)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
        env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_TIME_BUDGET=str(budget), AUTORESEARCH_DEVICE=device,
                   AUTORESEARCH_SEED=str(seed), AUTORESEARCH_METRICS=str(tmp / "metrics.jsonl"),
                   AUTORESEARCH_EVAL_RECORD=str(tmp / "eval.json"))
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=timeout or budget * 3 + 900)
        result: dict = parse_summary(proc.stdout)
        result["returncode"] = proc.returncode
        result["wall_seconds"] = round(time.time() - t0, 1)
        metrics = tmp / "metrics.jsonl"
        result["metrics"] = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
        result["log_tail"] = (proc.stdout + proc.stderr)[-3000:]
        return result


def print_table(rows: list[tuple[str, str]], title: str) -> None:
    width = max(len(k) for k, _ in rows)
    print(title)
    print("-" * (width + 2 + max(len(v) for _, v in rows)))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
