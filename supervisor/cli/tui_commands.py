"""`autoresearch attach`, `review` and `serve`: the terminal UI on a run that exists.

- attach: the app with its controls on a run (normally one that is going; `run` opens it the same way).
- review: the app read-only on any run, finished or live: the ledger is opened read-only.
- serve: the app in a browser on the local network (textual-serve), one app process per browser tab.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from supervisor.core.config import absolute_path, default_journals_root, port_number, tag_name
from supervisor.core.errors import UserError
from supervisor.core.paths import RunPaths

DEFAULT_SERVE_HOST = "0.0.0.0"
DEFAULT_SERVE_PORT = 8000


class TuiError(UserError):
    """The UI cannot open; the message says what to do."""


def _run_dir(args: argparse.Namespace) -> Path:
    journals = Path(args.journals) if args.journals else default_journals_root()
    run_dir = journals / args.tag
    if not RunPaths(run_dir).ledger.exists():
        raise TuiError(f"no run {args.tag!r} in {journals} (start one with `autoresearch run --tag {args.tag}`)")
    return run_dir


def _check_terminal() -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()) and not os.environ.get("TEXTUAL_DRIVER"):
        raise TuiError("the terminal UI needs a terminal: run it in one (or use `autoresearch status --tag T` "
                       "and `autoresearch control` from scripts)")


def open_app(run_dir: Path, *, review: bool, ask_on_quit: bool = True) -> str | None:
    """Run the app on a run folder until the person quits; returns the quit answer ("stop", "leave", None)."""
    from supervisor.store.ledger import Ledger
    from supervisor.trial.platform_info import telemetry_sample
    from supervisor.tui.app import SupervisorApp

    ledger = Ledger(RunPaths(run_dir).ledger, readonly=review)
    try:
        app = SupervisorApp(ledger, run_dir, review=review, telemetry=telemetry_sample, ask_on_quit=ask_on_quit)
        return app.run()
    finally:
        ledger.close()


def cmd_attach(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    _check_terminal()
    answer = open_app(run_dir, review=False)
    _say_after_quit(args.tag, answer)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    _check_terminal()
    open_app(run_dir, review=True)
    return 0


def _say_after_quit(tag: str, answer: str | None) -> None:
    if answer == "leave":
        print(f"the run {tag} goes on without the UI; come back with `autoresearch attach --tag {tag}`, "
              f"or stop it with `autoresearch control --tag {tag} stop`", file=sys.stderr)
    elif answer == "stop":
        print(f"stop sent to {tag}: it records the current trial as aborted and ends; continue later with "
              f"`autoresearch run --tag {tag} --resume`", file=sys.stderr)


def serve_command(args: argparse.Namespace) -> str:
    """The command each browser tab runs: this interpreter, this project, the same run."""
    cmd = [sys.executable, "-m", "supervisor.cli.main", "review" if args.review else "attach", "--tag", args.tag]
    if args.journals:
        cmd += ["--journals", str(Path(args.journals).resolve())]
    return shlex.join(cmd)


def cmd_serve(args: argparse.Namespace) -> int:
    _run_dir(args)
    try:
        from textual_serve.server import Server
    except ImportError as exc:
        raise TuiError("`autoresearch serve` needs textual-serve: pip install 'autoresearch-supervisor[serve]' "
                       "(or pip install textual-serve)") from exc
    command = serve_command(args)
    public = args.public_url or f"http://{'localhost' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    mode = "read-only review" if args.review else "with controls (pause, steer, stop): keep it on a trusted network"
    print(f"serving {args.tag} ({mode}) on {public}; open it in a browser on your network. Ctrl+C stops "
          "serving; the run goes on.", file=sys.stderr)
    # The project root must be importable in the per-tab processes, wherever the server was started.
    root = str(Path(__file__).resolve().parents[2])
    # An empty entry would put each tab's working directory on sys.path: join only what is there.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    Server(command, host=args.host, port=args.port, title=f"autoresearch · {args.tag}",
           public_url=public).serve()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tag", required=True, type=tag_name, help="the run's name")
        p.add_argument("--journals", type=absolute_path, help="folder holding the runs' journals (default: ./journals of the project)")

    p = subparsers.add_parser("attach", help="open the terminal UI, with its controls, on a run that is going")
    common(p)
    p.set_defaults(func=cmd_attach)

    p = subparsers.add_parser("review", help="open the terminal UI read-only on any run, finished or live")
    common(p)
    p.set_defaults(func=cmd_review)

    p = subparsers.add_parser("serve", help="watch a run from a browser on the local network (textual-serve)")
    common(p)
    p.add_argument("--host", default=DEFAULT_SERVE_HOST, help=f"address to listen on (default {DEFAULT_SERVE_HOST}: "
                                                              "every interface; 127.0.0.1 for this machine only)")
    p.add_argument("--port", type=port_number, default=DEFAULT_SERVE_PORT, help=f"port (default {DEFAULT_SERVE_PORT})")
    p.add_argument("--public-url", help="the URL browsers use, when it differs (e.g. http://gpubox.local:8000)")
    p.add_argument("--review", action="store_true", help="serve the read-only review instead of the controls")
    p.set_defaults(func=cmd_serve)
