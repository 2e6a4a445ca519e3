"""The morning report on a constructed night: the page, and what each chart actually draws.

Charts are checked twice: through the Figure's artists (the staircase is the keeps, the band is one
floor deep, the flagged keep is marked, crashes are on the edge) and as files (valid PNG and SVG,
deterministic bytes)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from supervisor.core.config import RunConfig
from supervisor.morning.graveyard import RunView
from supervisor.morning.report import (
    TOP_ROW,
    chart_cost,
    chart_gains,
    chart_noise,
    chart_throughput,
    chart_trajectory,
    render_charts,
    report_markdown,
    write_report,
)
from supervisor.store.ledger import Ledger
from tests.loop_support import cli
from tests.morning_support import build_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    config = build_run(tmp_path_factory.mktemp("report"))
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    yield config, ledger, RunView.from_ledger(ledger)
    ledger.close()


def scatter_points(ax, label: str) -> np.ndarray:
    coll = next(c for c in ax.collections if c.get_label() == label)
    return np.asarray(coll.get_offsets())


def test_trajectory_draws_the_run(night):
    _, ledger, view = night
    fig = chart_trajectory(view)
    ax = fig.axes[0]
    keeps = ledger.trials(["keep"])
    # The staircase steps through every keep's val_bpb, in order.
    stair = next(line for line in ax.get_lines() if line.get_label() == "best keep so far")
    assert list(stair.get_ydata()[:-1]) == pytest.approx([t.val_bpb for t in keeps])
    assert list(stair.get_xdata()[:-1]) == [t.id for t in keeps]
    # The band under it is exactly one noise floor deep.
    band = next(c for c in ax.collections if c.get_label().startswith("noise floor"))
    ys = band.get_paths()[0].vertices[:, 1]
    assert max(ys) - min(ys) == pytest.approx(view.floor() + (keeps[0].val_bpb - keeps[-1].val_bpb), rel=1e-6)
    flagged = [t for t in keeps if t.flagged]
    assert flagged and scatter_points(ax, "keep under the noise floor (flagged)")[:, 0].tolist() == [t.id for t in flagged]
    discards = ledger.trials(["discard"])
    assert sorted(scatter_points(ax, "discard")[:, 0].tolist()) == [t.id for t in discards]
    crash = scatter_points(ax, "crash (no val_bpb)")
    assert crash[:, 0].tolist() == [t.id for t in ledger.trials(["crash"])] and crash[0, 1] == TOP_ROW
    low, high = ax.get_ylim()
    assert low < min(t.val_bpb for t in keeps) - view.floor() and high >= max(t.val_bpb for t in discards)


def test_gains_cost_throughput_noise(night):
    _, ledger, view = night
    keeps = [t for t in ledger.trials(["keep"]) if t.delta is not None]
    gains_ax = chart_gains(view).axes[0]
    bars = gains_ax.patches
    assert [b.get_height() for b in bars] == pytest.approx([-t.delta for t in keeps])
    floor_line = next(line for line in gains_ax.get_lines() if line.get_label().startswith("noise floor"))
    assert floor_line.get_ydata()[0] == pytest.approx(view.floor())
    labels = [t.get_text() for t in gains_ax.texts]
    assert any("⚑" in text for text in labels)  # the flagged keep's bar says so

    cost = chart_cost(view)
    params_ax, vram_ax = cost.axes
    assert params_ax.get_xlabel() == "parameters (millions)" and vram_ax.get_xlabel() == "peak VRAM (GB)"
    best = min(keeps, key=lambda t: t.val_bpb)
    kept = scatter_points(params_ax, "keep")
    assert [best.num_params_m, best.val_bpb] in kept.tolist()

    steps_ax, tokens_ax, mfu_ax = chart_throughput(view).axes
    assert [a.get_ylabel() for a in (steps_ax, tokens_ax, mfu_ax)] == ["steps", "tokens/s", "MFU (%)"]
    crash_lines = [line for line in mfu_ax.get_lines() if line.get_label() == "crash"]
    assert crash_lines and crash_lines[0].get_xdata()[0] == ledger.trials(["crash"])[0].id
    level = next(line for line in tokens_ax.get_lines() if line.get_label() == "current keep")
    assert level.get_ydata()[-1] == pytest.approx(best.tokens_per_s)  # the wider model's throughput

    noise_ax = chart_noise(view).axes[0]
    seeds = scatter_points(noise_ax, "one seed")
    assert sorted(seeds[:, 1].tolist()) == pytest.approx(sorted(view.noise_rows[0].values))


def test_write_report_page_and_files(night, tmp_path):
    config, ledger, view = night
    written = write_report(ledger, tmp_path / "out", generated=0)
    md = written.markdown.read_text()
    names = {p.name for p in written.charts}
    for chart in ("trajectory", "gains", "cost", "throughput", "noise"):
        assert {f"{chart}.svg", f"{chart}.png"} <= names
        assert f"](charts/{chart}.svg)" in md
        png = (written.charts_dir / f"{chart}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
        svg = ET.parse(written.charts_dir / f"{chart}.svg").getroot()
        assert svg.tag.endswith("svg")
    assert "val_bpb over the run" in (written.charts_dir / "trajectory.svg").read_text()  # text stays text
    # The keeps in order with their gains, the flagged one called out.
    for t in ledger.trials(["keep"]):
        assert f"| {t.id} | {t.val_bpb:.6f} |" in md
    flagged = next(t for t in ledger.trials(["keep"]) if t.flagged)
    assert f"trial {flagged.id} ({flagged.description})" in md and "⚑ flagged" in md
    # Reflections, plans (the dropped one with its reason), the noise table, the graveyard link.
    for r in ledger.reflections():
        assert r.load_bearing in md and f"### Reflection {r.id} (after trial {r.after_trial})" in md
    dropped = next(p for p in ledger.plans() if p.status == "dropped")
    assert "### Dropped plans and why" in md and dropped.reason in md
    assert "| tried | double the model width |" in md
    assert ", ".join(f"{v:.6f}" for v in view.noise_rows[0].values) in md
    assert written.graveyard.is_file() and "[graveyard.md](graveyard.md)" in md
    assert "- **Best:** val_bpb" in md and "noise floors" in md


def test_charts_are_deterministic(night, tmp_path):
    _, _, view = night
    first = render_charts(view, tmp_path / "a", png=False)
    second = render_charts(view, tmp_path / "b", png=False)
    for name, paths in first.items():
        assert paths[0].read_bytes() == second[name][0].read_bytes(), name


def test_report_of_an_empty_and_a_bare_run(tmp_path):
    """A run with no trials, and one whose trials recorded no throughput: no error, the page says why."""
    ledger = Ledger(tmp_path / "e" / "ledger.sqlite", create=True)
    ledger.init_run("e", RunConfig(tag="e", journals_root=tmp_path).to_json())
    written = write_report(ledger, tmp_path / "e-report")
    md = written.markdown.read_text()
    assert "No trial recorded steps" in md and "Not measured" in md and "None yet." in md
    assert {p.name for p in written.charts} == {"trajectory.svg", "trajectory.png", "gains.svg", "gains.png"}
    ledger.insert_imported_trial(description="baseline", status="keep", val_bpb=1.0, budget_s=300.0)
    ledger.insert_imported_trial(description="worse", status="discard", val_bpb=1.2, parent_trial=1,
                                 parent_val_bpb=1.0, delta=0.2, budget_s=300.0)
    view = RunView.from_ledger(ledger)
    assert chart_throughput(view) is None and chart_cost(view) is None and chart_noise(view) is None
    md = report_markdown(view, render_charts(view, tmp_path / "charts", png=False))
    assert "![val_bpb of every trial" in md and "No trial recorded its parameter count" in md
    ledger.close()


def test_cli_report(night, tmp_path):
    config, _, _ = night
    out = tmp_path / "shared-report"
    result = cli("report", "--tag", config.tag, "--journals", str(config.journals_root), "-o", str(out))
    assert result.returncode == 0, result.stderr
    # Five charts, each as SVG and PNG: the count is of charts, not of files.
    assert "(5 charts, SVG and PNG, in" in result.stdout
    assert (out / "report.md").is_file() and (out / "charts/trajectory.png").is_file()
    svg_only = cli("report", "--tag", config.tag, "--journals", str(config.journals_root), "-o", str(out),
                   "--no-png")
    assert svg_only.returncode == 0 and not (out / "charts/trajectory.png").exists()
    assert "(5 charts, SVG, in" in svg_only.stdout
    bad = cli("report", "--tag", config.tag, "--journals", str(config.journals_root), "-o",
              str(out / "report.md"))
    assert bad.returncode == 1 and "is a file" in bad.stderr


def test_a_value_no_axis_holds_leaves_out_its_chart_and_not_the_report(tmp_path):
    """A ledger made before the importer refused absurd numbers (val_bpb 1e308, VRAM inf): the report is
    written, the chart that cannot be drawn is left out and named, and the CLI says so without a traceback."""
    journals = tmp_path / "journals"
    ledger = Ledger(journals / "huge" / "ledger.sqlite", create=True)
    ledger.init_run("huge", RunConfig(tag="huge", journals_root=journals).to_json())
    ledger.insert_imported_trial(description="baseline", status="keep", val_bpb=1.0, budget_s=300.0,
                                 peak_vram_mb=1000.0, num_params_m=10.0)
    ledger.insert_imported_trial(description="typo", status="discard", val_bpb=1e308, parent_trial=1,
                                 parent_val_bpb=1.0, delta=1e308, budget_s=300.0, peak_vram_mb=float("inf"),
                                 num_params_m=10.0)
    ledger.close()
    result = cli("report", "--tag", "huge", "--journals", str(journals))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert "cost chart(s) were left out" in result.stderr
    md = (journals / "huge/report/report.md").read_text()
    assert "The cost chart could not be drawn" in md and not (journals / "huge/report/charts/cost.svg").exists()
    assert (journals / "huge/report/charts/trajectory.svg").is_file()  # the far-off value sits on the top edge
