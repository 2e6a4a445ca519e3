"""The panes. Each renders a part of a RunView and holds no state of the run beyond what it shows.

One module per pane: status_bar, chart_panes (loss, val_bpb by trial), telemetry, diff, transcript,
experiments (the trial tables), journal; common holds the theme's colours and the hint line.
"""

from supervisor.tui.widgets.chart_panes import ChartPane, LossChart, TrajectoryChart, noise_seeds_text
from supervisor.tui.widgets.common import HintLine, ThemedMixin, palette, status_style
from supervisor.tui.widgets.diff import DiffView
from supervisor.tui.widgets.experiments import DESCRIPTION_LIMIT, ExperimentsTable, FlaggedTable
from supervisor.tui.widgets.journal import JournalPane, journal_markdown_widget, latest_journal_markdown
from supervisor.tui.widgets.status_bar import StatusBar
from supervisor.tui.widgets.telemetry import TelemetryPane
from supervisor.tui.widgets.transcript import LiveReply, TranscriptView, render_item

__all__ = [
    "DESCRIPTION_LIMIT",
    "ChartPane",
    "DiffView",
    "ExperimentsTable",
    "FlaggedTable",
    "HintLine",
    "JournalPane",
    "LiveReply",
    "LossChart",
    "StatusBar",
    "TelemetryPane",
    "ThemedMixin",
    "TrajectoryChart",
    "TranscriptView",
    "journal_markdown_widget",
    "latest_journal_markdown",
    "noise_seeds_text",
    "palette",
    "render_item",
    "status_style",
]
