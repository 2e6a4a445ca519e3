"""No process a trial can read holds an API key: the entry point re-executes itself without credentials and
takes them over a pipe (supervisor/cli/secret_handoff.py, supervisor/core/secrets.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor.cli import secret_handoff
from supervisor.cli.secret_handoff import (
    credential_names,
    move_secrets_out,
    popen_with_secrets,
    receive,
    secrets_for_child,
    write_secrets,
)
from supervisor.core import secrets
from supervisor.core.secrets import SECRETS_FD_VARIABLE, Secrets, credential, lookup
from tests.llm_server import Fault, LLMServer

PROJECT = Path(__file__).resolve().parent.parent
FAKE_SOURCE = Path(__file__).resolve().parent / "fake_trainer"
SECRET = "sk-ant-test-HANDOFF4q2Xv9Kd3mZp8Wn4Rt6Yb1Hc5Jf0"
HAS_PROC = Path("/proc/self/environ").exists()
posix_only = pytest.mark.skipif(os.name != "posix", reason="pipes, fork and execve are POSIX")


@pytest.fixture(autouse=True)
def empty_store():
    secrets.store().clear()
    yield
    secrets.store().clear()


def clean_env(**extra: str) -> dict[str, str]:
    """This test process's environment without any real credential, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in credential_names(os.environ)}
    env.pop(SECRETS_FD_VARIABLE, None)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)


# ---- the store -------------------------------------------------------------------------------------------
def test_the_store_never_shows_a_value() -> None:
    store = Secrets({"ANTHROPIC_API_KEY": SECRET})
    assert store.get("ANTHROPIC_API_KEY") == SECRET and "ANTHROPIC_API_KEY" in store and len(store) == 1
    assert SECRET not in repr(store) and SECRET not in str(store)
    assert store.names() == ["ANTHROPIC_API_KEY"] and list(store) == ["ANTHROPIC_API_KEY"]


def test_lookup_prefers_the_store_and_falls_back_to_the_environment() -> None:
    env = {"OPENAI_API_KEY": " from-env ", "ANTHROPIC_API_KEY": "env-key"}
    secrets.store().update({"ANTHROPIC_API_KEY": "store-key"})
    assert lookup("ANTHROPIC_API_KEY", env) == "store-key"
    assert credential("OPENAI_API_KEY", env) == "from-env"
    assert lookup("NOPE", env) is None and credential("NOPE", env) == ""


# ---- which variables move --------------------------------------------------------------------------------
def test_credentials_and_their_companions_move_and_nothing_else() -> None:
    env = {"ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "b", "ANTHROPIC_AUTH_TOKEN": "c", "MY_AUTH_TOKEN": "d",
           "ANTHROPIC_BASE_URL": "http://gw", "DB_PASS": "e", "HTTPS_PROXY": "http://u:p@proxy:3128",
           "INNOCENT": "sk-abcdefghijklmnopqrstuvwxyz012345", "PATH": "/bin", "HOME": "/h",
           "SSL_CERT_FILE": "/etc/ssl/ca.pem", "TERM": "xterm", SECRETS_FD_VARIABLE: "9"}
    assert credential_names(env) == sorted(["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_AUTH_TOKEN",
                                            "MY_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "DB_PASS", "HTTPS_PROXY",
                                            "INNOCENT"])


# ---- the pipe ------------------------------------------------------------------------------------------
@posix_only
@pytest.mark.parametrize("size", [10, 300_000])  # the second is larger than any pipe's buffer
def test_what_is_written_is_received(size: int) -> None:
    values = {"ANTHROPIC_API_KEY": SECRET, "BIG_CERT_KEY": "x" * size, "ODD": "é\u2603\n\"'"}
    read_end, write_end = os.pipe()
    write_secrets(write_end, values)  # returns at once even when the pipe is full
    env = {SECRETS_FD_VARIABLE: str(read_end), "PATH": "/bin"}
    assert receive(env)
    assert env == {"PATH": "/bin"}  # the number is gone too
    assert secrets.store().as_dict() == values
    with pytest.raises(OSError):
        os.fstat(read_end)  # closed after reading


@posix_only
@pytest.mark.parametrize("value", ["1", "not-a-number", "999"])
def test_a_stray_number_is_never_read(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    env = {SECRETS_FD_VARIABLE: value}
    assert not receive(env)
    assert env == {} and len(secrets.store()) == 0
    assert "does not name a pipe" in capsys.readouterr().err


@posix_only
def test_a_pipe_with_garbage_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"[1, 2]")
    os.close(write_end)
    assert not receive({SECRETS_FD_VARIABLE: str(read_end)})
    assert len(secrets.store()) == 0 and "not a JSON object" in capsys.readouterr().err


@posix_only
def test_a_writer_that_never_finishes_does_not_hang_the_reader(capsys: pytest.CaptureFixture[str]) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b'{"A_KEY": ')
    try:
        assert not receive({SECRETS_FD_VARIABLE: str(read_end)}, timeout_s=0.2)
    finally:
        os.close(write_end)
    assert len(secrets.store()) == 0 and "could not be read" in capsys.readouterr().err


# ---- the re-exec, with execve recorded ---------------------------------------------------------------------
@posix_only
def test_the_entry_point_re_executes_itself_without_credentials() -> None:
    env = {"ANTHROPIC_API_KEY": SECRET, "PATH": "/bin", "HOME": "/h"}
    calls = []

    def fake_execve(path, argv, new_env):
        fd = int(new_env[SECRETS_FD_VARIABLE])
        assert os.get_inheritable(fd)
        calls.append((path, argv, dict(new_env), json.loads(os.read(fd, 65536))))
        raise OSError("recorded, not executed")

    move_secrets_out(["run", "--agent", "anthropic"], environ=env, argv=["/py", "/bin/autoresearch", "run"],
                     executable=sys.executable, execve=fake_execve)
    [(path, argv, new_env, sent)] = calls
    assert path == sys.executable and argv == ["/py", "/bin/autoresearch", "run"]
    assert "ANTHROPIC_API_KEY" not in new_env and SECRET not in json.dumps(new_env)
    assert new_env["PATH"] == "/bin" and new_env["HOME"] == "/h"
    assert sent == {"ANTHROPIC_API_KEY": SECRET}
    # The exec failed: the fallback keeps the key in memory and out of what children inherit.
    assert secrets.store().get("ANTHROPIC_API_KEY") == SECRET and "ANTHROPIC_API_KEY" not in env


def test_commands_that_run_no_agent_code_keep_their_environment() -> None:
    env = {"ANTHROPIC_API_KEY": SECRET, "HTTPS_PROXY": "http://u:p@proxy:3128"}

    def no_exec(*args):
        raise AssertionError("no re-exec expected")

    for command in ("prepare", "status", "doctor", "export"):
        move_secrets_out([command, "--tag", "x"], environ=env, argv=["x"], executable=sys.executable,
                         execve=no_exec)
    assert env["ANTHROPIC_API_KEY"] == SECRET and len(secrets.store()) == 0


@posix_only
def test_a_process_handed_secrets_never_re_executes_again() -> None:
    read_end, write_end = os.pipe()
    write_secrets(write_end, {"OPENAI_API_KEY": "from-parent", "HTTPS_PROXY": "http://u:p@proxy:3128"})
    env = {SECRETS_FD_VARIABLE: str(read_end), "OPENAI_API_KEY": "left-in-env"}

    def no_exec(*args):
        raise AssertionError("a loop of re-execs")

    move_secrets_out(["run"], environ=env, argv=["x"], executable=sys.executable, execve=no_exec)
    assert "OPENAI_API_KEY" not in env and secrets.store().get("OPENAI_API_KEY") == "left-in-env"
    # The proxy is put back in memory for the SDK's HTTP client (not in the exec-time environment).
    assert env["HTTPS_PROXY"] == "http://u:p@proxy:3128"


# ---- real processes ---------------------------------------------------------------------------------------
PROBE = textwrap.dedent("""
    import json, os, sys
    from supervisor.cli.secret_handoff import move_secrets_out
    started = os.getpid()
    move_secrets_out(sys.argv[1:])
    from supervisor.core.secrets import store
    raw = open("/proc/self/environ", "rb").read() if os.path.exists("/proc/self/environ") else b""
    print(json.dumps({"pid": os.getpid(), "store": store().as_dict(), "in_proc": %r.encode() in raw,
                      "fd_var": b"AUTORESEARCH_SECRETS_FD=" in raw, "env_key": "ANTHROPIC_API_KEY" in os.environ,
                      "open_fds": sorted(int(f) for f in os.listdir("/dev/fd"))}))
""") % SECRET


@posix_only
def test_a_real_process_ends_up_without_the_key_under_the_same_pid() -> None:
    env = clean_env(ANTHROPIC_API_KEY=SECRET, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    proc = subprocess.Popen([sys.executable, "-c", PROBE, "run"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["pid"] == proc.pid  # execve: the same process, a new image
    assert report["store"] == {"ANTHROPIC_API_KEY": SECRET, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert not report["env_key"]
    if HAS_PROC:
        assert not report["in_proc"] and report["fd_var"]
    assert report["open_fds"] == sorted(set(report["open_fds"]) & {0, 1, 2, 3})  # the pipe was closed


@posix_only
def test_a_child_started_with_the_secrets_gets_them_over_a_pipe_only() -> None:
    secrets.store().update({"OPENAI_API_KEY": "held-by-the-parent"})
    env = clean_env(ANTHROPIC_API_KEY=SECRET)
    handed = secrets_for_child(env)
    assert "ANTHROPIC_API_KEY" not in env
    assert handed == {"ANTHROPIC_API_KEY": SECRET, "OPENAI_API_KEY": "held-by-the-parent"}
    gate = Path(os.environ.get("TMPDIR", "/tmp")) / f"handoff-gate-{os.getpid()}"
    gate.unlink(missing_ok=True)
    waiting = PROBE.replace("print(json.dumps(", f"import time\nwhile not os.path.exists({str(gate)!r}): "
                                                 "time.sleep(0.02)\nprint(json.dumps(")
    proc = popen_with_secrets([sys.executable, "-c", waiting, "run"], handed, env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        if HAS_PROC:
            deadline = time.monotonic() + 30
            while SECRETS_FD_VARIABLE not in proc_environ(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            seen = Path(f"/proc/{proc.pid}/environ").read_bytes()
            assert SECRET.encode() not in seen and b"held-by-the-parent" not in seen
    finally:
        gate.touch()
    out, _ = proc.communicate(timeout=60)
    gate.unlink(missing_ok=True)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["store"] == handed and not report["env_key"]


# ---- the real `autoresearch` against a loopback API --------------------------------------------------------
def console_script() -> list[str]:
    script = Path(sys.executable).parent / "autoresearch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "supervisor.cli"]


@posix_only
@pytest.mark.skipif(not HAS_PROC, reason="reads /proc/<pid>/environ")
@pytest.mark.timeout(180)
def test_autoresearch_run_holds_no_key_in_its_environment_yet_its_client_sends_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    arrived, release = threading.Event(), threading.Event()

    def responder(request):
        arrived.set()
        release.wait(60)  # hold the supervisor inside its first API call while its /proc is read
        return Fault("status", 401, "authentication_error", "the test ends the run here")

    with LLMServer(responder, api_key=SECRET) as server:
        env = clean_env(ANTHROPIC_API_KEY=SECRET)
        proc = subprocess.Popen(
            [*console_script(), "run", "--headless", "--tag", "handoff", "--agent", "anthropic",
             "--model", "claude-haiku-5-5", "--base-url", server.url, "--max-trials", "1", "--budget", "5",
             "--noise-repeats", "0", "--trainer-dir", str(FAKE_SOURCE), "--journals", str(tmp_path / "journals"),
             "--cache", str(cache)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT)
        try:
            assert arrived.wait(120), "the agent never reached the loopback API"
            seen = proc_environ(proc.pid)  # the same pid: the re-exec replaced the image in place
            raw = Path(f"/proc/{proc.pid}/environ").read_bytes() + Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            child_envs = [Path(f"/proc/{pid}/environ").read_bytes() for pid in children
                          if Path(f"/proc/{pid}/environ").exists()]
        finally:
            release.set()
        out, err = proc.communicate(timeout=120)
        request = server.requests[0]
    assert "ANTHROPIC_API_KEY" not in seen and SECRET.encode() not in raw
    assert SECRETS_FD_VARIABLE in seen  # it was re-executed: the hand-over left its (harmless) number
    assert all(SECRET.encode() not in e for e in child_envs)
    # ... and yet the client had the key (this SDK sends it as x-api-key or as a bearer token)
    sent = request.headers.get("x-api-key") or request.headers["authorization"].removeprefix("Bearer ")
    assert sent == SECRET
    assert SECRET not in out + err
    assert proc.returncode != 0, err  # the 401 the test answered with ends the run


def test_the_console_script_and_python_m_use_the_entry_point() -> None:
    import tomllib

    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["autoresearch"] == "supervisor.cli.main:entry"
    assert "entry()" in (PROJECT / "supervisor" / "cli" / "__main__.py").read_text()
    assert secret_handoff.NO_AGENT_COMMANDS.isdisjoint({"run", "demo", "noise", "attach", "review", "serve"})
