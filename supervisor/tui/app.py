"""The Textual app: a client of one run's ledger, live (watch and steer) or review (read-only).

A worker thread polls the ledger about once a second (`state.RunWatcher`), so SQLite reads never block the
event loop, and the panes redraw at most once per poll. The loop itself runs in another process; nothing
here can slow training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from supervisor.core.commands import PAUSE, RESUME, STEER, STOP
from supervisor.core.paths import RunPaths
from supervisor.core.types import RunState
from supervisor.store.ledger import Ledger
from supervisor.tui import state as st
from supervisor.tui.control import ControlError, RunControl
from supervisor.tui.screens import (
    HelpScreen,
    LiveScreen,
    QuitScreen,
    ReviewScreen,
    RunScreen,
    TrialScreen,
)
from supervisor.tui.state import FILTERS, SORTS

POLL_S = 1.0
LIGHT_THEME, DARK_THEME = "textual-light", "textual-dark"


class SupervisorApp(App[str | None]):
    """Returns "stop" or "leave" when the person quit a live run through the quit dialog, else None."""

    CSS_PATH = "app.tcss"
    TITLE = "autoresearch"
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("t", "toggle_theme", "Light/dark", show=False),
    ]

    def __init__(self, ledger: Ledger, run_dir: Path, *, review: bool = False,
                 telemetry: Callable[[], dict[str, Any]] | None = None, poll_s: float = POLL_S,
                 ask_on_quit: bool = True, theme: str | None = None,
                 clock: Callable[[], float] = time.time, telemetry_every_s: float = 2.0,
                 monotonic: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.ledger = ledger
        self.run_dir = Path(run_dir)
        self.review = review
        self.ask_on_quit = ask_on_quit
        self.poll_s = poll_s
        self.clock = clock  # wall clock for the budget's progress (screenshots pin it)
        # Review has no control at all: it cannot send a command even by mistake.
        self.control = None if review else RunControl(ledger, self.run_dir)
        self.watcher = st.RunWatcher(ledger, self.run_dir, telemetry=None if review else telemetry,
                                     telemetry_every_s=telemetry_every_s, monotonic=monotonic)
        self.view = st.RunView(run_dir=self.run_dir)
        self._polling = False
        self._pause_requested = False
        self._was_live: bool | None = None
        if theme:
            self.theme = theme

    # ---- start-up and polling ----------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        return ReviewScreen() if self.review else LiveScreen()

    def on_mount(self) -> None:
        self.title = f"autoresearch · {self.run_dir.name}"
        self.request_poll()
        self.set_interval(self.poll_s, self.request_poll)

    def request_poll(self) -> None:
        if self._polling:  # one poll at a time; a slow disk skips ticks instead of piling them up
            return
        self._polling = True
        self.run_worker(self._poll_in_thread, thread=True, group="poll", exit_on_error=False)

    def _poll_in_thread(self) -> None:
        try:
            view, changed = self.watcher.poll()
        except Exception as exc:  # noqa: BLE001 - a busy or damaged ledger is shown, not fatal
            self._polling = False
            self._call(self._poll_failed, f"{type(exc).__name__}: {exc}")
            return
        self._polling = False
        self._call(self.apply_view, view, changed)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            self.call_from_thread(fn, *args, **kwargs)
        except RuntimeError:
            pass  # the app is closing

    def _poll_failed(self, message: str) -> None:
        if self.view.error != message:
            self.view.error = message
            self.notify(f"cannot read the ledger: {message}", severity="error", timeout=8)

    def apply_view(self, view: st.RunView, changed: frozenset[str]) -> None:
        self.view = view
        if st.RUN in changed:
            self._announce(view)
        if view.state == RunState.PAUSED or not view.state.live:
            self._pause_requested = False
        for screen in self.screen_stack:
            update = getattr(screen, "update_view", None)
            if update is not None and screen.is_mounted:
                update(view, changed)

    def _announce(self, view: st.RunView) -> None:
        if self._was_live is not None and self._was_live and not view.live:
            log = RunPaths(self.run_dir).log
            where = f"; its output is in {log}" if log.exists() else ""
            self.notify(f"the supervisor process has ended: the run is {view.state_label}{where}", timeout=10)
        elif self._was_live is None and view.over and not self.review:
            self.notify(f"the run {view.tag} is over ({view.state_label}): there is nothing to pause, steer or "
                        "stop; what it did is all here to read", timeout=10)
        self._was_live = view.live

    # ---- commands to the loop ----------------------------------------------------------------------------------
    def send_command(self, command: str, arg: str = "") -> None:
        if self.control is None:
            self.notify("review is read-only: use `autoresearch attach` to control the run", severity="warning")
            return
        if self.view.over:
            self.notify(f"the run is over ({self.view.state_label}): nothing would read the {command}",
                        severity="warning", timeout=5)
            return
        self.run_worker(lambda: self._send_in_thread(command, arg), thread=True, group="control")

    def _send_in_thread(self, command: str, arg: str) -> None:
        assert self.control is not None
        try:
            message = self.control.send(command, arg)
        except ControlError as exc:
            self._call(self.notify, str(exc), severity="warning", timeout=6)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. the disk is full: say so, keep the app
            self._call(self.notify, f"could not send {command}: {exc}", severity="error", timeout=8)
            return
        self.watcher.invalidate()
        self._call(self.notify, message, timeout=5)
        self._call(self.request_poll)

    def toggle_pause(self) -> None:
        if self.view.state == RunState.PAUSED or self._pause_requested:
            self._pause_requested = False
            self.send_command(RESUME)
        else:
            self._pause_requested = self.view.live
            self.send_command(PAUSE)

    def send_steering(self, message: str | None) -> None:
        if message:
            self.send_command(STEER, message)

    def open_trial(self, trial_id: int) -> None:
        self.push_screen(TrialScreen(trial_id))

    # ---- app-wide actions ----------------------------------------------------------------------------------------
    def action_help(self) -> None:
        screen = self.screen
        if isinstance(screen, HelpScreen):
            return
        # What the screen on top shows and takes, in its mode and at its size: nothing that is not there.
        panes = screen.help_markdown() if isinstance(screen, RunScreen) else (screen.__doc__ or "").strip()
        self.push_screen(HelpScreen(self._key_help(screen), panes))

    def _key_help(self, screen: Screen) -> list[tuple[str, str]]:
        """The keys that work now: a control the screen refuses (a run that is over) is not listed."""
        seen: dict[str, str] = {}
        taken: set[str] = set()  # a key the screen uses (q closes a trial) is not the app's there
        for owner, bindings in ((screen, screen.BINDINGS), (self, self.BINDINGS)):
            for binding in bindings:
                if not isinstance(binding, Binding) or not binding.description:
                    continue
                names = binding.key.split(",")
                if owner.check_action(binding.action, ()) is False or (owner is self and taken & set(names)):
                    continue
                taken.update(names)
                keys = ", ".join(self.get_key_display(Binding(k, "")) for k in names)
                seen.setdefault(binding.description, keys)
        help_keys = [(keys, description) for description, keys in seen.items()]
        help_keys += screen.key_help() if isinstance(screen, RunScreen) else []
        help_keys.append(("ctrl+p", "Command palette"))
        return help_keys

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT_THEME if self.current_theme.dark else DARK_THEME

    async def action_quit(self) -> None:
        if self.review or self.control is None or not self.ask_on_quit or not self.view.live:
            self.exit(None)
            return
        if isinstance(self.screen, QuitScreen):
            return
        self.push_screen(QuitScreen(self.view.tag), self._quit_answer)

    def _quit_answer(self, answer: str | None) -> None:
        if answer == "stop":
            try:
                assert self.control is not None
                self.control.send(STOP)
            except ControlError:
                pass  # it ended meanwhile: nothing to stop
            self.exit("stop")
        elif answer == "leave":
            self.exit("leave")

    # ---- the command palette ---------------------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        main = self.screen_stack[0] if self.screen_stack else screen
        if not isinstance(main, RunScreen):
            return
        if not self.review and not self.view.over:
            live: LiveScreen = main  # type: ignore[assignment]
            yield SystemCommand("Pause or resume the run", "Pause at the next safe point, or resume",
                                self.toggle_pause)
            yield SystemCommand("Steer the agent", "Type a message delivered at the agent's next turn",
                                live.action_steer)
            yield SystemCommand("Stop the current trial", "Abort the running trial (recorded, reverted)",
                                live.action_stop_trial)
        for number, (pane, label) in enumerate(main.visible_tabs(), 1):
            yield SystemCommand(f"Go to the {label} tab", f"The tab's key: {number}",
                                lambda pane=pane: main.action_tab(pane))
        yield SystemCommand("Open the selected trial", "Its diff, log tail, curve and journal entry",
                            main.action_open_trial)
        yield SystemCommand("Journal browser", "Every entry, reflection and steering message",
                            main.action_journal)
        for name in FILTERS:
            yield SystemCommand(f"Show {name}", f"Filter the experiments table: {name}",
                                lambda name=name: main.action_filter(name))
        for name in SORTS:
            yield SystemCommand(f"Sort by {name}", "Sort the experiments table (again: reverse)",
                                lambda name=name: main.action_sort(name))
        yield SystemCommand("Toggle light/dark", "Switch between the light and dark themes", self.action_toggle_theme)
