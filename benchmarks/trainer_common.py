"""Helpers shared by the trainer benchmarks: prepare a cache, run a trial, read its summary."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
            for harness in ("prepare.py", "corpus.py"):
                (tmp / harness).write_text((TRAINER_DIR / harness).read_text())
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


# ---- bounded runs: every subprocess has a timeout, and nothing it started outlives it -------------------
@dataclass
class Bounded:
    """What a bounded command did: `returncode` is None when it was stopped at its timeout."""

    returncode: int | None
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the command's process group, then SIGKILL what is left after `grace` seconds.

    The group, not the process: a compiled trial leaves inductor's compile workers behind, and a
    supervisor stops its trial cleanly on SIGTERM (recorded as aborted) before it is killed."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bounded(cmd: list[str], *, timeout: float, log_dir: Path, name: str, env: dict[str, str] | None = None,
                cwd: Path | None = None, grace: float = 10.0) -> Bounded:
    """Run `cmd` for at most `timeout` seconds, its stdout and stderr kept in `log_dir/name.out` and `.err`.

    The command gets its own process group, stopped as a whole at the timeout, and also when this
    process is interrupted (Ctrl-C, SIGTERM): the interrupt is re-raised once the group is gone."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    start = time.monotonic()
    timed_out = False
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc, grace)
        except BaseException:
            _stop_group(proc, 2.0)
            raise
        finally:
            # Children the command left running (compile workers) go with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    return Bounded(None if timed_out else proc.returncode, timed_out, round(time.monotonic() - start, 1),
                   out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def run_trial_bounded(cache: Path, budget: float, device: str, *, timeout: float, log_dir: Path, name: str,
                      seed: int = 42, overrides: dict[str, str] | None = None,
                      patch: Callable[[str], str] | None = None, extra_env: dict[str, str] | None = None) -> dict:
    """`run_trial` under `run_bounded`: a copy of train.py (always, so it can be inspected afterwards) in
    `log_dir/name/`, run for at most `timeout` seconds. Returns its summary plus 'returncode' (None at the
    timeout), 'timed_out', 'wall_seconds', 'metrics', 'stdout', 'stderr' and 'log_tail'."""
    folder = log_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    source = (TRAINER_DIR / "train.py").read_text()
    for constant, value in (overrides or {}).items():
        source = edit_constant(source, constant, value)
    if patch is not None:
        source = patch(source)
    for harness in ("prepare.py", "corpus.py"):
        (folder / harness).write_text((TRAINER_DIR / harness).read_text())
    (folder / "train.py").write_text(source)
    metrics = folder / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_TIME_BUDGET=str(budget), AUTORESEARCH_DEVICE=device,
               AUTORESEARCH_SEED=str(seed), AUTORESEARCH_METRICS=str(metrics),
               AUTORESEARCH_EVAL_RECORD=str(folder / "eval.json"), PYTHONUNBUFFERED="1")
    env.update(extra_env or {})
    done = run_bounded([sys.executable, str(folder / "train.py")], timeout=timeout, log_dir=log_dir, name=name,
                       env=env, cwd=folder)
    result: dict = parse_summary(done.stdout)
    result.update(returncode=done.returncode, timed_out=done.timed_out, wall_seconds=done.seconds,
                  stdout=done.stdout, stderr=done.stderr, log_tail=(done.stdout + done.stderr)[-3000:])
    rows = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line cut off by the timeout
                rows.append(json.loads(line))
    result["metrics"] = rows
    return result
