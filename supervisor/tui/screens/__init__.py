"""The screens, one module each: live (watch and steer), review (read-only), a trial, the journal browser,
and the dialogs (help, steer, confirm, quit). run_screen holds what live and review share."""

from supervisor.tui.screens.dialogs import ConfirmScreen, HelpScreen, QuitScreen, SteerScreen
from supervisor.tui.screens.journal import JournalItem, JournalScreen
from supervisor.tui.screens.live import LiveScreen
from supervisor.tui.screens.review import ReviewScreen, plans_markdown
from supervisor.tui.screens.run_screen import RunScreen
from supervisor.tui.screens.trial import TrialScreen, trial_summary

__all__ = [
    "ConfirmScreen",
    "HelpScreen",
    "JournalItem",
    "JournalScreen",
    "LiveScreen",
    "QuitScreen",
    "ReviewScreen",
    "RunScreen",
    "SteerScreen",
    "TrialScreen",
    "plans_markdown",
    "trial_summary",
]
