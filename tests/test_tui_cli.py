"""`attach`, `review`, `serve` and `run` without --headless, as a person runs them: real subprocesses."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.cli import main as cli
from supervisor.cli.launcher import LaunchError, loop_command, start_loop, wait_until_ready
from supervisor.core.config import Layout, RunConfig
from tests.loop_support import FAKE_SOURCE, PROJECT
from tests.loop_support import cli as run_cli
from tests.tui_support import synthetic_ledger


def _journals_with_run(tmp_path: Path, tag: str = "night") -> Path:
    journals = tmp_path / "journals"
    synthetic_ledger(journals / tag, trials=5)
    return journals


def test_clear_errors(tmp_path):
    journals = _journals_with_run(tmp_path)
    for command in ("attach", "review", "serve"):
        result = run_cli(command, "--tag", "nope", "--journals", str(journals))
        assert result.returncode == 1, result.stderr
        assert "no run 'nope'" in result.stderr and "Traceback" not in result.stderr
    # With pipes instead of a terminal, the UI says what to do instead of drawing garbage.
    result = run_cli("review", "--tag", "night", "--journals", str(journals))
    assert result.returncode == 1 and "needs a terminal" in result.stderr


def test_run_without_a_terminal_falls_back_to_headless(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    result = run_cli("run", "--tag", "nt", "--trainer-dir", str(source), "--journals", str(tmp_path / "journals"),
                     "--cache", str(cache), "--budget", "5", "--grace", "10", "--max-trials", "1")
    assert result.returncode == 0, result.stderr
    assert "no terminal to draw the UI in: running headless" in result.stderr
    assert "run nt finished" in result.stderr


def test_loop_command_runs_exactly_the_configuration(tmp_path):
    """The detached loop gets the same RunConfig the person asked for (parsed back by the real parser)."""
    script = tmp_path / "agent.jsonl"
    script.write_text("")
    config = RunConfig(tag="lc", journals_root=tmp_path / "journals", cache_dir=tmp_path / "cache", budget_s=42.5,
                       max_trials=7, policy="confirm", floor_factor=3.0, confirm_seeds=4, reflect_every=5,
                       plateau_trials=6, noise_repeats=2, device="cpu", memory_limit_mb=2048,
                       agent=f"script:{script}", source_dir=FAKE_SOURCE)
    cmd = loop_command(config, resume=False)
    assert cmd[:5] == [sys.executable, "-m", "supervisor.cli.main", "run", "--headless"]
    args = cli.build_parser().parse_args(cmd[3:])
    assert args.headless and not args.resume
    assert cli._config_from_args(args).to_json() == config.to_json()
    # Switches that are off travel as --no-X (they were dropped once, and the loop ran with them on).
    switched = RunConfig(tag="sw", journals_root=tmp_path / "journals", cache_dir=tmp_path / "cache",
                         source_dir=FAKE_SOURCE, warm_start=False, spend_limit=False, stall_replies=7,
                         repeat_limit=0, max_tokens=1000, agent=f"script:{script}")
    cmd = loop_command(switched, resume=False)
    assert "--no-warm-start" in cmd and "--no-spend-limit" in cmd
    assert cli._config_from_args(cli.build_parser().parse_args(cmd[3:])).to_json() == switched.to_json()
    (tmp_path / "repo").mkdir()  # the parser checks that an --upstream folder exists
    upstream = RunConfig(tag="up", journals_root=tmp_path / "journals", cache_dir=tmp_path / "cache",
                         upstream_repo=tmp_path / "repo", layout=Layout.upstream("uv run train.py"))
    args = cli.build_parser().parse_args(loop_command(upstream, resume=False)[3:])
    rebuilt = cli._config_from_args(args)
    assert rebuilt.upstream_repo == upstream.upstream_repo and rebuilt.layout == upstream.layout
    resumed = cli.build_parser().parse_args(loop_command(config, resume=True)[3:])
    assert resumed.resume and resumed.trainer_dir is None


def test_a_loop_that_cannot_start_says_why(tmp_path):
    journals = _journals_with_run(tmp_path, "taken")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    config = RunConfig(tag="taken", journals_root=journals, cache_dir=cache, source_dir=FAKE_SOURCE)
    proc = start_loop(config, resume=False)  # the run exists: the loop refuses, and the launcher says so
    with pytest.raises(LaunchError, match="already exists"):
        wait_until_ready(proc, config, timeout_s=120)
    proc.wait(timeout=30)
    assert (journals / "taken" / "supervisor.log").read_text().count("already exists") >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_shows_the_run_in_a_browser_session(tmp_path):
    """`serve` answers on loopback with the page, and a browser's websocket gets the app drawing the run."""
    pytest.importorskip("textual_serve")
    aiohttp = pytest.importorskip("aiohttp")
    journals = _journals_with_run(tmp_path)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "supervisor.cli.main", "serve", "--tag", "night", "--journals",
                               str(journals), "--host", "127.0.0.1", "--port", str(port), "--review"],
                              cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def browse() -> str:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/") as page:
                        html = await page.text()
                        break
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert f"ws://127.0.0.1:{port}/ws" in html
            screen = ""
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws?width=120&height=36") as ws:
                end = time.monotonic() + 60
                while time.monotonic() < end:
                    msg = await ws.receive(timeout=60)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        screen += msg.data.decode(errors="replace")
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        screen += msg.data
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
                    plain = re.sub(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]", "", screen)
                    if "review · read-only" in plain and "5/100 trials" in plain:
                        return plain
            return re.sub(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]", "", screen)

    try:
        plain = asyncio.run(browse())
        assert "review · read-only" in plain and "5/100 trials" in plain, plain[-2000:]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert "serving night (read-only review)" in (server.stdout.read() if server.stdout else "")
