"""The control commands a person sends to a running loop, and their rules, in one place.

The loop, the CLI (`autoresearch control`) and the UI all check commands here before they send them
through the ledger's `commands` table.
"""

from __future__ import annotations

PAUSE = "pause"
RESUME = "resume"
STOP_TRIAL = "stop-trial"
STEER = "steer"
STOP = "stop"

COMMANDS = (PAUSE, RESUME, STOP_TRIAL, STEER, STOP)

# Commands that carry an argument: steer needs its message; pause takes an optional reason.
NEEDS_ARGUMENT = frozenset({STEER})
TAKES_ARGUMENT = frozenset({STEER, PAUSE})

# With no supervisor running, only a steering message can wait (the next --resume delivers it):
# a stored pause or stop would fire the moment the run is resumed. On a finished run nothing is valid,
# since a resume of a finished run ends at once and a stored message would never be read.
VALID_WITHOUT_LOOP = frozenset({STEER})
VALID_ON_FINISHED_RUN: frozenset[str] = frozenset()


class CommandError(ValueError):
    """The command is not one the loop knows, or lacks what it needs."""


def check_command(command: str, arg: str = "") -> None:
    """Raise CommandError when `command` is unknown or needs an argument it lacks."""
    if command not in COMMANDS:
        raise CommandError(f"unknown command {command!r}: use one of {', '.join(COMMANDS)}")
    if command in NEEDS_ARGUMENT and not arg.strip():
        raise CommandError(f"{command} needs a message")


__all__ = ["COMMANDS", "PAUSE", "RESUME", "STOP_TRIAL", "STEER", "STOP", "NEEDS_ARGUMENT", "TAKES_ARGUMENT",
           "VALID_WITHOUT_LOOP", "VALID_ON_FINISHED_RUN", "CommandError", "check_command"]
