"""The person's commands to the loop, sent through the ledger's commands table: no Textual in this module.

`RunControl` takes the path `autoresearch control` takes, with the same rules (supervisor.core.commands); the
review mode has none, so it cannot send anything.
"""

from __future__ import annotations

from pathlib import Path

from supervisor.core.commands import COMMANDS, PAUSE, RESUME, STEER, STOP, STOP_TRIAL, VALID_ON_FINISHED_RUN
from supervisor.core.errors import UserError
from supervisor.core.paths import RunPaths
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from supervisor.tui.state import OVER_STATES

# What the person is told once a command is on its way to the loop.
SENT_MESSAGES = {
    PAUSE: "pause sent: the loop pauses at its next safe point (after the current trial)",
    RESUME: "resume sent",
    STOP_TRIAL: "stop-trial sent: the current trial is stopped, recorded as aborted and reverted",
    STEER: "steering message sent: the agent gets it at its next turn",
    STOP: "stop sent: the run stops (the current trial is recorded as aborted)",
}


class ControlError(UserError):
    """A command the run cannot take now; the message says why."""


class RunControl:
    """Sends the person's commands to the loop through the ledger, like `autoresearch control`."""

    def __init__(self, ledger: Ledger, run_dir: Path) -> None:
        self.ledger = ledger
        self.lock_path = RunPaths(Path(run_dir)).lock

    def is_live(self) -> bool:
        return RunLock.holder(self.lock_path) is not None

    def send(self, command: str, arg: str = "") -> str:
        """Send one command; returns what to tell the person. Raises ControlError when it cannot be sent."""
        if command not in COMMANDS:
            raise ControlError(f"unknown command {command!r}: use one of {', '.join(COMMANDS)}")
        arg = arg.strip()
        if command == STEER and not arg:
            raise ControlError("a steering message needs some text")
        if not self.is_live():
            if self.ledger.run_row().state in OVER_STATES and command not in VALID_ON_FINISHED_RUN:
                # A resume of a finished run ends at once: a stored message would never be read.
                raise ControlError(f"the run is over (finished): there is nothing to {command}")
            if command == STEER:
                # Nobody runs the loop: store it; the next --resume delivers it at the first turn.
                self.ledger.add_steering(arg)
                return "no supervisor is running this run: the message is stored and delivered on --resume"
            # A stale pause or stop would fire the moment the run is resumed; refuse instead.
            raise ControlError(f"no supervisor is running this run, so there is nothing to {command}")
        self.ledger.send_command(command, arg)
        return SENT_MESSAGES[command]
