"""`python tests/network_watch.py REPORT.json ARGS...`: the `autoresearch` command with ARGS, and a record of
every attempt of this process to reach another machine.

An audit hook (PEP 578) sees each name lookup (`socket.getaddrinfo`) and each connection (`socket.connect`) of
every thread of the process; the ones for anything but this machine are written to REPORT.json as the
process ends (a list, empty when there were none). The attempts are only recorded, not stopped: the command
runs as it would for the person.
"""

from __future__ import annotations

import atexit
import json
import socket
import sys
from typing import Any

LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1", b"::1"}
attempts: list[str] = []


def watch(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.getaddrinfo" and args[0] not in LOCAL_HOSTS:
        attempts.append(f"lookup {args[0]!r}")
    elif event == "socket.connect":
        sock, address = args[0], args[1]
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            attempts.append(f"connect {address!r}")


def report(path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(attempts, fh)


if __name__ == "__main__":
    report_path = sys.argv[1]
    atexit.register(report, report_path)
    sys.addaudithook(watch)
    from supervisor.cli.main import main

    sys.exit(main(sys.argv[2:]))
