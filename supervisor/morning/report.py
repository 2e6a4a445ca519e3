"""The morning report: a markdown page about one run, with charts (SVG for the page, PNG beside them).

Charts, drawn with matplotlib on the Agg backend (no display, no pyplot state):
- trajectory: val_bpb of every trial over the run, keeps as a staircase, flagged keeps marked, crashes
  on the top edge, and the noise band under the staircase (a trial must get below it to be a real gain);
- gains: each keep's gain over its parent against the noise floor;
- cost: val_bpb against parameter count and peak VRAM;
- throughput: steps, tokens/s and MFU of every trial over the run, with the keeps' level as a line;
- noise: the seeds of each noise measurement, their spread and the floor;
- audit: the keeps' val_bpb on the search (validation) split and on the audit split, and the gap between them;
- transfer: each keep's gain on the night beside its gain at a larger scale (`autoresearch transfer`).
The page adds the keeps in order with their gains, the reflections, the plan queue with dropped plans
and their reasons, the steering messages, and a link to the graveyard (written beside it).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.core.audit import OVERFIT, audit_points, audit_verdict
from supervisor.core.types import PlanStatus, RepeatRecord, Trial, TrialStatus
from supervisor.morning.graveyard import (
    RunView,
    floor_text,
    fmt_change,
    fmt_val,
    graveyard_groups,
    graveyard_markdown,
    md_cell,
    md_text,
    versus_floor,
)
from supervisor.store.journal_files import atomic_write, compact_finding
from supervisor.store.ledger import Ledger

COLORS = {
    "keep": "#2a9d4b", "discard": "#8d949b", "crash": "#d62728", "flagged": "#f28e2b", "held": "#9467bd",
    "stair": "#1b6e35", "band": "#4c78a8", "text": "#333333",
}
FIG_WIDTH = 9.0
TOP_ROW = 0.96  # where crashes and far-off trials sit, in axes fractions
PNG_DPI = 110


@dataclass
class WrittenReport:
    markdown: Path
    charts_dir: Path
    charts: list[Path] = field(default_factory=list)  # every file written under charts/ (SVG and PNG)
    graveyard: Path | None = None
    chart_names: list[str] = field(default_factory=list)  # one per chart drawn, whatever its formats
    left_out: list[str] = field(default_factory=list)  # charts that had something to show but could not be drawn

    @property
    def chart_count(self) -> int:
        return len(self.chart_names)


# ---- chart helpers ------------------------------------------------------------------------------------------
def _new_figure(height: float, rows: int = 1, cols: int = 1, sharex: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH, height), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=9)
    return fig, axes


def _marker_scale(n: int) -> float:
    """Markers shrink as trials multiply, so a thousand points stay a cloud and not a blot."""
    return 1.0 if n <= 80 else max(0.25, (80 / n) ** 0.6)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10,
            color="#777777", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _value_limits(values: list[float], keeps: list[float], floor: float | None) -> tuple[float, float]:
    """A y-range that shows the keeps' progress in detail; far-off discards are clipped to the top edge."""
    lo = min(values)
    hi_keep = max(keeps) if keeps else max(values)
    span = max(hi_keep - lo, 4 * floor if floor else 0.0, 1e-4 * max(abs(hi_keep), 1.0))
    top = min(max(values), hi_keep + 0.6 * span)
    bottom = lo - (floor or 0.0)  # the noise band under the best keep stays in view
    pad = 0.06 * (top - bottom if top > bottom else span)
    return bottom - pad, top + pad


def _status_points(view: RunView) -> dict[str, list[Trial]]:
    """The chart's marker groups: one per finished status, flagged keeps apart (they get their own marker)."""
    groups: dict[str, list[Trial]] = {"keep": [], "flagged": [], "discard": [], "crash": [], "held": []}
    for t in view.finished:
        if t.status == TrialStatus.KEEP:
            groups["flagged" if t.flagged else "keep"].append(t)
        else:
            groups.setdefault(str(t.status), []).append(t)
    return groups


def _keep_levels(view: RunView, xs_end: float) -> tuple[list[float], list[float]]:
    """The staircase: from each keep to the next, the keep's val_bpb."""
    keeps = [t for t in view.by_status(TrialStatus.KEEP) if t.val_bpb is not None]
    xs = [float(t.id) for t in keeps]
    ys = [float(t.val_bpb) for t in keeps if t.val_bpb is not None]
    if xs:
        xs.append(max(xs_end, xs[-1]))
        ys.append(ys[-1])
    return xs, ys


# ---- the charts ---------------------------------------------------------------------------------------------
def chart_trajectory(view: RunView):
    fig, axes = _new_figure(4.6)
    ax = axes[0][0]
    finished = view.finished
    valued = [t for t in finished if t.val_bpb is not None and t.status != TrialStatus.CRASH]
    if not valued:
        _empty(ax, "no trial has produced a val_bpb yet")
        return fig
    floor = view.floor()
    last_x = float(max(t.id for t in finished))
    values = [float(t.val_bpb) for t in valued if t.val_bpb is not None]
    keep_values = [float(t.val_bpb) for t in valued if t.status == TrialStatus.KEEP and t.val_bpb is not None]
    lo, hi = _value_limits(values, keep_values, floor)

    xs, ys = _keep_levels(view, last_x + 0.5)
    if xs:
        if floor:
            ax.fill_between(xs, [y - floor for y in ys], ys, step="post", color=COLORS["band"], alpha=0.18,
                            linewidth=0, label=f"noise floor under the best keep ({fmt_change(floor, False)})")
        ax.step(xs, ys, where="post", color=COLORS["stair"], linewidth=1.8, label="best keep so far", zorder=3)

    from matplotlib.transforms import blended_transform_factory

    edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in trials, y in axes fractions
    groups = _status_points(view)
    clipped = 0
    k = _marker_scale(len(finished))
    styles = {
        "discard": dict(marker="o", s=26 * k, color=COLORS["discard"], alpha=0.8, label="discard"),
        "keep": dict(marker="o", s=46 * k, color=COLORS["keep"], edgecolor="white", linewidth=0.6 * k, label="keep"),
        "flagged": dict(marker="D", s=52 * k, color=COLORS["flagged"], edgecolor="black", linewidth=0.7 * k,
                        label="keep under the noise floor (flagged)"),
        "held": dict(marker="s", s=40 * k, facecolor="none", edgecolor=COLORS["held"], color=COLORS["held"],
                     linewidth=1.4 * max(k, 0.5), label="held for review (guard findings, not kept)"),
    }
    for name in ("discard", "held", "keep", "flagged"):
        pts = [t for t in groups[name] if t.val_bpb is not None]
        inside = [t for t in pts if t.val_bpb <= hi]
        above = [t for t in pts if t.val_bpb > hi]
        clipped += len(above)
        if inside:
            ax.scatter([t.id for t in inside], [t.val_bpb for t in inside], zorder=4, **styles[name])
        if above:
            ax.scatter([t.id for t in above], [TOP_ROW] * len(above), transform=edge, marker="^", s=40,
                       color=styles[name]["color"], zorder=4, clip_on=False)
            if len(above) <= 12:
                for t in above:
                    ax.annotate(f"{t.val_bpb:.4f}", (t.id, TOP_ROW), xycoords=edge, xytext=(6, -3),
                                textcoords="offset points", fontsize=7, color="#666666", va="center")
    if groups["crash"]:
        ax.scatter([t.id for t in groups["crash"]], [TOP_ROW] * len(groups["crash"]), transform=edge, marker="x",
                   s=44 * k, color=COLORS["crash"], linewidths=1.8 * max(k, 0.5), label="crash (no val_bpb)",
                   zorder=5, clip_on=False)
    best = min(valued, key=lambda t: t.val_bpb if t.status == TrialStatus.KEEP else math.inf)
    if best.status == TrialStatus.KEEP and best.val_bpb is not None:
        # In a corner, not beside the point: late in a long run the point sits in a crowd.
        ax.text(0.01, 0.02, f"best {best.val_bpb:.4f} (trial {best.id})", transform=ax.transAxes, fontsize=9,
                color=COLORS["stair"], ha="left", va="bottom", fontweight="bold")
    ax.set_ylim(lo, hi)
    ax.set_xlim(0.3, last_x + 0.7)
    _integer_ticks(ax)
    ax.set_xlabel("trial")
    ax.set_ylabel("val_bpb (lower is better)")
    title = f"{view.tag}: val_bpb over the run"
    if clipped:
        title += f" ({clipped} far-worse trial{'s' if clipped != 1 else ''} shown as ▲ at the top edge)"
    ax.set_title(title, fontsize=11, loc="left")
    if not floor:
        ax.text(0.99, 0.02, "noise floor not measured", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, color="#777777")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    return fig


def chart_gains(view: RunView):
    keeps = [t for t in view.by_status(TrialStatus.KEEP) if t.delta is not None]
    fig, axes = _new_figure(3.4 if keeps else 2.0)
    ax = axes[0][0]
    if not keeps:
        _empty(ax, "no keep has a parent yet (only the baseline)")
        return fig
    floor = view.floor()
    labels = [f"#{t.id}" for t in keeps]
    gains = [-(t.delta or 0.0) for t in keeps]
    colors = [COLORS["flagged"] if t.flagged else COLORS["keep"] for t in keeps]
    ax.bar(range(len(keeps)), gains, color=colors, edgecolor="black", linewidth=0.4, width=0.6 if len(keeps) > 3 else 0.4)
    ax.axhline(0, color="black", linewidth=0.8)
    if floor:
        ax.axhline(floor, color=COLORS["band"], linestyle="--", linewidth=1.2,
                   label=f"noise floor {fmt_change(floor, False)}")
        ax.legend(fontsize=8, loc="upper right")
    if len(keeps) <= 15:
        # Labels, not a log scale: a gain a hundred times smaller than the first must still be readable.
        for i, (t, g) in enumerate(zip(keeps, gains, strict=True)):
            ax.annotate(fmt_change(g) + (" ⚑" if t.flagged else ""), (i, g), xytext=(0, 3 if g >= 0 else -11),
                        textcoords="offset points", ha="center", fontsize=8,
                        color=COLORS["flagged"] if t.flagged else COLORS["text"])
    ax.margins(y=0.15)
    every = max(1, math.ceil(len(keeps) / 30))  # at most ~30 labels; the rest are in the table below
    ticks = list(range(0, len(keeps), every))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=0 if len(ticks) <= 15 else 90, fontsize=8)
    ax.set_xlim(-0.7, len(keeps) - 0.3)
    ax.set_xlabel("keep (trial)")
    ax.set_ylabel("gain over parent (val_bpb)")
    flagged = sum(t.flagged for t in keeps)
    ax.set_title("gain of each keep over the keep it was built on"
                 + (f" ({flagged} under the floor, flagged)" if flagged else ""), fontsize=11, loc="left")
    return fig


def chart_cost(view: RunView):
    trials = [t for t in view.finished if t.val_bpb is not None and t.status != TrialStatus.CRASH]
    params = [t for t in trials if t.num_params_m]
    vram = [t for t in trials if t.peak_vram_mb]
    panels = [(p, key, label) for p, key, label in (
        (params, "num_params_m", "parameters (millions)"),
        (vram, "peak_vram_mb", "peak VRAM (GB)"),
    ) if p]
    if not panels:
        return None
    from matplotlib.transforms import blended_transform_factory

    fig, axes = _new_figure(3.8, 1, len(panels))
    values = [float(t.val_bpb) for t in trials if t.val_bpb is not None]
    keeps = [float(t.val_bpb) for t in trials if t.status == TrialStatus.KEEP and t.val_bpb is not None]
    lo, hi = _value_limits(values, keeps, view.floor())
    k = _marker_scale(len(trials))
    styles = (("discard", dict(color=COLORS["discard"], s=24 * k, alpha=0.8, label="discard")),
              ("keep", dict(color=COLORS["keep"], s=40 * k, edgecolor="white", linewidth=0.6 * k, label="keep")),
              ("flagged", dict(color=COLORS["flagged"], s=48 * k, marker="D", edgecolor="black", linewidth=0.6 * k,
                               label="flagged keep")),
              ("held", dict(color=COLORS["held"], s=30 * k, marker="s", label="held for review")))
    for ax, (group, key, label) in zip(axes[0], panels, strict=True):
        scale = 1 / 1024 if key == "peak_vram_mb" else 1.0
        edge = blended_transform_factory(ax.transData, ax.transAxes)

        def x_of(t: Trial, key: str = key, scale: float = scale) -> float:
            return getattr(t, key) * scale

        for name, style in styles:
            pts = [t for t in group if (t.status == TrialStatus.KEEP and t.flagged == (name == "flagged"))
                   or t.status == name]
            inside = [t for t in pts if t.val_bpb <= hi]
            above = [t for t in pts if t.val_bpb > hi]
            if inside:
                ax.scatter([x_of(t) for t in inside], [t.val_bpb for t in inside], zorder=3, **style)
            if above:
                ax.scatter([x_of(t) for t in above], [TOP_ROW] * len(above), transform=edge, marker="^", s=36,
                           color=style["color"], zorder=3, clip_on=False)
        path = [t for t in group if t.status == TrialStatus.KEEP and t.val_bpb <= hi]
        if len(path) > 1:  # how the keeps moved through size and memory, in order
            ax.plot([x_of(t) for t in path], [t.val_bpb for t in path], color=COLORS["stair"], linewidth=0.8,
                    alpha=0.6, linestyle="--", zorder=2, label="keeps in order")
        best = min((t for t in group if t.status == TrialStatus.KEEP), key=lambda t: t.val_bpb, default=None)
        if best is not None:
            ax.annotate(f"best #{best.id}", (x_of(best), best.val_bpb), xytext=(6, -12),
                        textcoords="offset points", fontsize=8, color=COLORS["stair"])
        if len({round(x_of(t), 6) for t in group}) == 1:
            ax.text(0.5, 0.04, "every trial had the same value", transform=ax.transAxes, ha="center",
                    va="bottom", fontsize=8, color="#777777")
        ax.set_ylim(lo, hi)
        xs = [x_of(t) for t in group]  # by hand: points on the top edge are not in the autoscale
        pad = 0.06 * (max(xs) - min(xs)) or 0.05 * abs(xs[0]) or 1.0
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_xlabel(label)
        ax.set_ylabel("val_bpb")
    clipped = sum(1 for t in trials if t.val_bpb > hi)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle("val_bpb against model size and memory (what each result cost)", fontsize=11, x=0.01,
                 ha="left", fontweight="bold")
    if clipped:
        axes[0][0].text(0.01, 0.99, f"{clipped} far-worse trial{'s' if clipped != 1 else ''} shown as ▲",
                        transform=axes[0][0].transAxes, fontsize=8, color="#666666", va="top")
    return fig


def chart_throughput(view: RunView):
    finished = [t for t in view.finished if t.status != TrialStatus.CRASH]
    series = [
        ("num_steps", "steps", 1.0),
        ("tokens_per_s", "tokens/s", 1.0),
        ("mfu_percent", "MFU (%)", 1.0),
    ]
    if not any(getattr(t, key) is not None for t in finished for key, _, _ in series):
        return None
    fig, axes = _new_figure(5.6, len(series), 1, sharex=True)
    last_x = float(max(t.id for t in view.finished))
    crashes = view.by_status(TrialStatus.CRASH)
    for ax, (key, label, scale) in zip(axes[:, 0], series, strict=True):
        have = [t for t in finished if getattr(t, key) is not None]
        if not have:
            why = "not recorded by this run" if not view.imported else "not in the imported results.tsv"
            if key == "mfu_percent" and not view.imported:
                why = "unknown (no peak FLOP/s for this device, e.g. a CPU)"
            ax.text(0.5, 0.5, f"{label}: {why}", transform=ax.transAxes, ha="center", va="center", fontsize=9,
                    color="#777777")
            ax.set_yticks([])
            ax.set_ylabel(label, fontsize=9)
            continue
        k = _marker_scale(len(finished))
        for status, size in ((TrialStatus.DISCARD, 18 * k), (TrialStatus.HELD, 18 * k), (TrialStatus.KEEP, 30 * k)):
            pts = [t for t in have if t.status == status]
            if pts:
                ax.scatter([t.id for t in pts], [getattr(t, key) * scale for t in pts], s=size,
                           color=COLORS[status], zorder=3, label=str(status))
        flagged = [t for t in have if t.flagged]
        if flagged:
            ax.scatter([t.id for t in flagged], [getattr(t, key) * scale for t in flagged], s=40 * k, marker="D",
                       color=COLORS["flagged"], edgecolor="black", linewidth=0.6 * k, zorder=4, label="flagged keep")
        keeps = [t for t in have if t.status == TrialStatus.KEEP]
        if keeps:
            xs = [float(t.id) for t in keeps] + [last_x + 0.5]
            ys = [getattr(t, key) * scale for t in keeps]
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", color=COLORS["stair"], linewidth=1.2, alpha=0.8,
                    label="current keep")
        for n, t in enumerate(crashes):  # a crash has no throughput: a faint line marks where it was
            ax.axvline(t.id, color=COLORS["crash"], linestyle=":", linewidth=1.2, alpha=0.8,
                       label="crash" if n == 0 else None)
        ax.set_ylabel(label, fontsize=9)
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    axes[-1][0].set_xlabel("trial")
    axes[-1][0].set_xlim(0.3, last_x + 0.7)
    _integer_ticks(axes[-1][0])
    axes[0][0].set_title("throughput over the run (a change of bottleneck shows here)", fontsize=11, loc="left")
    return fig


def chart_noise(view: RunView):
    rows = [r for r in view.noise_rows if r.values]
    if not rows:
        return None
    fig, axes = _new_figure(3.2)
    ax = axes[0][0]
    factor = view.config.floor_factor
    for i, r in enumerate(rows):
        values = r.values
        mean = statistics.fmean(values)
        sd = r.sd
        if sd:
            ax.fill_between([i - 0.3, i + 0.3], [mean - sd] * 2, [mean + sd] * 2, color=COLORS["band"], alpha=0.18,
                            linewidth=0, label="mean ± sd" if i == 0 else None)
            floor = sd * factor
            # The floor drawn to scale beside the seeds: a gain must be at least this long.
            ax.annotate("", xy=(i + 0.38, mean + floor / 2), xytext=(i + 0.38, mean - floor / 2),
                        arrowprops=dict(arrowstyle="<->", color=COLORS["flagged"], linewidth=1.4))
            ax.text(i + 0.42, mean, f"floor {fmt_change(floor, False)}\n({factor:g} x sd)", va="center",
                    fontsize=8, color=COLORS["flagged"])
        ax.hlines(mean, i - 0.3, i + 0.3, color=COLORS["band"], linewidth=1.5, label="mean" if i == 0 else None)
        offsets = [(j - (len(values) - 1) / 2) * (0.4 / max(1, len(values))) for j in range(len(values))]
        ax.scatter([i + o for o in offsets], values, color="black", s=22, zorder=3,
                   label="one seed" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [f"measurement {r.id}\n{str(r.commit_sha)[:7]}, {r.budget_s:g} s, "
                                      f"{len(r.values)} seeds" for r in rows], fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.1)
    ax.margins(y=0.12)
    ax.set_ylabel("val_bpb")
    ax.set_title("noise: identical code, different seeds", fontsize=11, loc="left")
    fig.legend(fontsize=8, loc="outside right upper")
    return fig


def chart_audit(view: RunView):
    """The keeps on both splits over the run, and the gap (audit minus search) with its fitted trend."""
    keeps = view.by_status(TrialStatus.KEEP)
    points = audit_points(keeps)
    if not points:
        return None
    verdict = audit_verdict(keeps, view.floor())
    fig, axes = _new_figure(5.2, 2, 1, sharex=True)
    top, bottom = axes[0][0], axes[1][0]
    xs = [p.trial_id for p in points]
    top.plot(xs, [p.val_bpb for p in points], marker="o", color=COLORS["stair"], linewidth=1.6,
             label="search split (val_bpb, what decided)")
    top.plot(xs, [p.audit_val_bpb for p in points], marker="s", color=COLORS["band"], linewidth=1.6,
             label="audit split (never used to decide)")
    top.set_ylabel("val_bpb")
    gaps = [p.gap for p in points]
    color = COLORS["crash"] if verdict.kind == OVERFIT else COLORS["text"]
    bottom.plot(xs, gaps, marker="o", color=color, linewidth=1.2, label="gap (audit minus search)")
    if verdict.widening is not None and xs[-1] > xs[0]:
        # The fitted trend, through the gaps' mean: the verdict compares its rise with the floor.
        mid_x, mid_y = sum(xs) / len(xs), sum(gaps) / len(gaps)
        slope = verdict.widening / (xs[-1] - xs[0])
        bottom.plot([xs[0], xs[-1]], [mid_y + slope * (x - mid_x) for x in (xs[0], xs[-1])], linestyle="--",
                    color=color, linewidth=1.0, alpha=0.8, label=f"trend: {fmt_change(verdict.widening)} over the run")
    if verdict.floor:
        base = gaps[0]
        bottom.fill_between([xs[0], xs[-1]], [base - verdict.floor] * 2, [base + verdict.floor] * 2,
                            color=COLORS["band"], alpha=0.15, linewidth=0,
                            label=f"first gap ± noise floor ({fmt_change(verdict.floor, False)})")
    bottom.set_ylabel("gap")
    bottom.set_xlabel("trial")
    bottom.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    _integer_ticks(bottom)
    for ax in (top, bottom):
        ax.legend(fontsize=8, loc="best", frameon=False)
    title = "the keeps on the search and audit splits"
    if verdict.kind == OVERFIT:
        title += ": the gap widens (overfitting to the validation split)"
    top.set_title(title, fontsize=11, loc="left")
    return fig


TRANSFER_COLORS = {"scale-stable": COLORS["keep"], "scale-bound": COLORS["crash"], "unknown": COLORS["discard"]}


def chart_transfer(view: RunView):
    """Each judged keep's gain at the night's scale beside its gain at each larger scale (error bar: factor x se),
    coloured by its label there."""
    results = [r for r in view.transfer if r.verdicts]
    if not results:
        return None
    fig, axes = _new_figure(2.2 + 1.6 * len(results), len(results), 1)
    for ax, result in zip((row[0] for row in axes), results, strict=True):
        verdicts = result.verdicts
        xs = list(range(len(verdicts)))
        width = 0.38
        night = [v.base_gain if v.base_gain is not None else 0.0 for v in verdicts]
        ax.bar([x - width / 2 for x in xs], night, width, color=COLORS["band"], alpha=0.45,
               label="gain on the night (its own scale)")
        scaled = [v.gain if v.gain is not None else 0.0 for v in verdicts]
        errors = [result.factor * v.se if v.se is not None else 0.0 for v in verdicts]
        ax.bar([x + width / 2 for x in xs], scaled, width, yerr=errors, capsize=3,
               color=[TRANSFER_COLORS[str(v.label)] for v in verdicts], label=f"gain at {result.scale_key}")
        ax.axhline(0.0, color=COLORS["text"], linewidth=0.8)
        ax.set_xticks(xs, [f"#{v.keep.id}" for v in verdicts])
        ax.set_ylabel("gain (parent - keep)")
        counts = ", ".join(f"{n} {label}" for label, n in result.counts().items() if n)
        ax.set_title(f"{result.scale_key}: {counts}", fontsize=10, loc="left")
        ax.legend(fontsize=8, loc="best", frameon=False)
    return fig


CHARTS: list[tuple[str, Callable[[RunView], Any], str]] = [
    ("trajectory", chart_trajectory, "val_bpb over the run"),
    ("gains", chart_gains, "gains of the keeps"),
    ("cost", chart_cost, "val_bpb against parameters and VRAM"),
    ("throughput", chart_throughput, "throughput over the run"),
    ("noise", chart_noise, "the noise measurements"),
    ("audit", chart_audit, "the keeps on the search and audit splits"),
    ("transfer", chart_transfer, "the keeps' gains at a larger scale"),
]


def render_charts(view: RunView, charts_dir: Path, png: bool = True,
                  left_out: list[str] | None = None) -> dict[str, list[Path]]:
    """Draw every chart that has something to show; {name: [svg, png]}.

    A chart no axis can hold (a value of 1e308 in a hand-edited results.tsv) is left out, its name added to
    `left_out`, and the rest of the report is written.
    """
    import warnings

    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    charts_dir.mkdir(parents=True, exist_ok=True)
    for name, _, _ in CHARTS:  # a chart with nothing to show this time must not survive from the last report
        for suffix in (".svg", ".png"):
            (charts_dir / f"{name}{suffix}").unlink(missing_ok=True)
    out: dict[str, list[Path]] = {}
    # A fixed salt and no date: the same ledger gives byte-identical SVGs (diffable, cacheable).
    style = {"svg.hashsalt": "autoresearch", "svg.fonttype": "none", "font.size": 9,
             "axes.titleweight": "bold"}
    # Layout and overflow warnings from extreme values say nothing a reader can act on.
    with matplotlib.rc_context(style), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for name, draw, _ in CHARTS:
            paths = [charts_dir / f"{name}.svg"] + ([charts_dir / f"{name}.png"] if png else [])
            try:
                fig = draw(view)
                if fig is None:
                    continue
                FigureCanvasAgg(fig)
                fig.savefig(paths[0], format="svg", metadata={"Date": None})
                if png:
                    fig.savefig(paths[1], format="png", dpi=PNG_DPI, metadata={"Software": None})
            except (ValueError, OverflowError):
                for path in paths:
                    path.unlink(missing_ok=True)
                if left_out is not None:
                    left_out.append(name)
                continue
            out[name] = paths
    return out


# ---- the page -------------------------------------------------------------------------------------------------
def _stamp(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "?"


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _overview(view: RunView) -> list[str]:
    finished = view.finished
    keeps = view.by_status(TrialStatus.KEEP)
    c = {str(s): len(view.by_status(s)) for s in (TrialStatus.KEEP, TrialStatus.DISCARD, TrialStatus.CRASH,
                                                   TrialStatus.HELD, TrialStatus.ABORTED)}
    flagged = sum(t.flagged for t in keeps)
    lines = []
    origin = md_text(view.run.state_detail or "imported") if view.imported else \
        f"agent `{view.config.agent}`" + (f", model `{view.config.model}`" if view.config.model else "")
    lines.append(f"- **Run:** `{view.tag}`, {origin}; state {view.run.state}")
    starts = [t.started for t in finished if t.started]
    ends = [t.finished for t in finished if t.finished]
    if starts and ends:
        seconds = max(ends) - min(starts)
        took = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
        lines.append(f"- **When:** {_stamp(min(starts))} to {_stamp(max(ends))} ({took})")
    budgets = sorted({t.budget_s for t in finished if t.budget_s})
    lines.append(f"- **Budget per trial:** {', '.join(f'{b:g} s' for b in budgets) or f'{view.config.budget_s:g} s'}"
                 + (" (changed during the run: results compare only within one budget)" if len(budgets) > 1 else ""))
    lines.append(f"- **Platform:** {md_text(view.platform_line())}")
    lines.append(f"- **Trials:** {len(finished)} finished: {c['keep']} keep ({flagged} flagged), "
                 f"{c['discard']} discard, {c['crash']} crash"
                 + (f", {c['held']} held for review (guard findings, not kept)" if c["held"] else "")
                 + (f"; {c['aborted']} stopped, not counted" if c["aborted"] else ""))
    unsandboxed = [t for t in view.trials if t.unsandboxed]
    if unsandboxed:
        lines.append(f"- **Unsandboxed:** {len(unsandboxed)} trial{'s' if len(unsandboxed) != 1 else ''} ran "
                     f"without the sandbox ({md_text(unsandboxed[0].sandbox)}): their numbers were measured on "
                     "code that could reach outside its folder")
    lines.append(f"- **Keep policy:** `{view.config.policy}`; {floor_text(view)}")
    valued = [t for t in keeps if t.val_bpb is not None]
    if valued:
        first, best = valued[0], min(valued, key=lambda t: t.val_bpb)
        gain = first.val_bpb - best.val_bpb
        floor = view.floor()
        in_floors = f" = {gain / floor:.1f} noise floors" if floor else ""
        lines.append(f"- **Best:** val_bpb {fmt_val(best.val_bpb)} (trial {best.id}, `{best.short_commit}`: "
                     f"{md_text(best.description)}), {fmt_change(gain, False)} below the first keep "
                     f"{fmt_val(first.val_bpb)}{in_floors}")
    return lines


def _keeps_table(view: RunView) -> list[str]:
    keeps = view.by_status(TrialStatus.KEEP)
    if not keeps:
        return ["No keeps yet."]
    out = ["| # | trial | val_bpb | gain over parent | vs floor | flag | steps | tokens/s | MFU % | VRAM GB | "
           "description |",
           "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for n, t in enumerate(keeps, start=1):
        gain = view.gain(t)
        parent = f" (#{t.parent_trial})" if t.parent_trial else ""
        out.append(
            f"| {n} | {t.id} | {fmt_val(t.val_bpb)} | "
            f"{'baseline' if gain is None else fmt_change(gain) + parent} | "
            f"{'—' if gain is None else versus_floor(gain, view.floor_for(t))} | {'⚑ flagged' if t.flagged else ''} | "
            f"{_num(t.num_steps, 'd')} | {_num(t.tokens_per_s, ',.0f')} | {_num(t.mfu_percent, '.1f')} | "
            f"{_num(None if t.peak_vram_mb is None else t.peak_vram_mb / 1024, '.1f')} | {md_cell(t.description)} |"
        )
    flagged = [t for t in keeps if t.flagged]
    if flagged:
        out += ["", f"**Flagged keeps** ({len(flagged)}): their gain is under the noise floor, so they may be luck. "
                "Re-test them with new seeds before building on them: "
                + ", ".join(f"trial {t.id} ({md_text(t.description)})" for t in flagged) + "."]
    return out


def _guards(view: RunView) -> list[str]:
    """Held trials, every guard finding, and the trials that ran without the sandbox."""
    held = view.by_status(TrialStatus.HELD)
    found = [t for t in view.trials if t.suspicions and t.status != TrialStatus.HELD]
    unsandboxed = [t for t in view.trials if t.unsandboxed]
    if not (held or found or unsandboxed):
        return ["No trial was held for review and the guards recorded no finding."]
    out: list[str] = []
    if held:
        out += [f"{len(held)} trial{'s were' if len(held) != 1 else ' was'} held for review: the keep policy would "
                "have kept (or re-tested) the number, but the guards found something in the training script, so "
                "the branch went back to the parent. Read the findings and the diff (graveyard), then re-run the "
                "idea without the construct if it was innocent.", "",
                "| trial | val_bpb | Δ vs parent | findings | description |", "|---:|---:|---:|---|---|"]
        for t in held:
            findings = "<br>".join(md_cell(compact_finding(f)) for f in t.suspicions) or md_cell(t.decision)
            out.append(f"| {t.id} | {fmt_val(t.val_bpb)} | {fmt_change(t.delta) if t.delta is not None else '—'} | "
                       f"{findings} | {md_cell(t.description)} |")
        out.append("")
    if found:
        out += ["Guard findings on trials that were not kept anyway:", ""]
        out += [f"- Trial {t.id} ({t.status}): " + "; ".join(md_text(compact_finding(f)) for f in t.suspicions)
                for t in found]
        out.append("")
    if unsandboxed:
        ids = ", ".join(str(t.id) for t in unsandboxed)
        out += [f"Ran **without the sandbox** ({md_text(unsandboxed[0].sandbox)}): trial{'s' if len(unsandboxed) > 1 else ''} "
                f"{ids}.", ""]
    return out


def _repeats_overview(view: RunView, repeats: Sequence[RepeatRecord]) -> list[str]:
    """The overview's line on repeats: how many trials the no-repeat rule saved (none for an imported run)."""
    if view.imported:
        return []
    retests = [t for t in view.trials if t.retest_of is not None]
    extra = f"; {len(retests)} deliberate re-test{'s' if len(retests) != 1 else ''} ran" if retests else ""
    if not repeats:
        return [f"- **Repeats avoided:** none (no change repeated an earlier trial's){extra}"]
    exact = sum(r.match == "exact" for r in repeats)
    return [f"- **Repeats avoided:** {len(repeats)} ({exact} exact, {len(repeats) - exact} near): changes that "
            f"repeated an earlier trial's were refused, not run{extra}"]


def _repeats(view: RunView, repeats: Sequence[RepeatRecord]) -> list[str]:
    """Each refused repeat (which trial it repeated, exact or near) and each deliberate re-test."""
    retests = [t for t in view.trials if t.retest_of is not None]
    out: list[str] = []
    if repeats:
        out += [f"{len(repeats)} submission{'s were' if len(repeats) != 1 else ' was'} refused because the change "
                "repeated an earlier trial's: **exact** (the same changed lines) or **near** (the same after "
                "normalising whitespace, number formats, quotes, comments and trailing commas). None of them ran.",
                "", "| when | repeated trial | match | its result | description sent |", "|---|---:|---|---|---|"]
        for r in repeats:
            out.append(f"| {_stamp(r.created)} | {r.earlier_trial} | {r.match} | "
                       f"{md_cell(_trial_result(view.trial(r.earlier_trial)))} | {md_cell(r.description)} |")
    else:
        out.append("No change repeated an earlier trial's.")
    if retests:
        out += ["", "Deliberate re-tests (run on purpose with `retest_of`):", ""]
        out += [f"- Trial {t.id} re-tested trial {t.retest_of} ({md_text(_trial_result(view.trial(t.retest_of)))}): "
                f"{md_text(_trial_result(t))}; {md_text(t.description)}" for t in retests]
    return out


def _trial_result(t: Trial | None) -> str:
    if t is None:
        return "not in the ledger"
    return f"{t.status}, val_bpb {fmt_val(t.val_bpb)}" if t.val_bpb is not None else str(t.status)


def _reflections(view: RunView) -> list[str]:
    if not view.reflections:
        if view.imported:
            return ["None: upstream autoresearch keeps no reflections."]
        return ["None yet."]
    out = []
    for r in view.reflections:
        triggers = "; ".join(r.triggers) or "requested"
        out += [f"### Reflection {r.id} (after trial {r.after_trial})", "",
                f"*{_stamp(r.created)} · triggered by: {md_text(triggers)}*", "",
                f"- **What is load-bearing.** {md_text(r.load_bearing)}",
                f"- **Dead ends.** {md_text(r.dead_ends)}",
                f"- **Re-test under current conditions.** {md_text(r.retest)}",
                f"- **Updated plan.** {md_text(r.plan)}", ""]
    return out


def _plans(view: RunView) -> list[str]:
    if not view.plans:
        return ["None: upstream autoresearch keeps no plan queue."] if view.imported else ["The plan queue is empty."]
    counts = {s: sum(p.status == s for p in view.plans) for s in PlanStatus}
    out = [f"{counts[PlanStatus.OPEN]} open, {counts[PlanStatus.TRIED]} tried, {counts[PlanStatus.DROPPED]} dropped.",
           "", "| # | status | idea | rationale | outcome |", "|---:|---|---|---|---|"]
    for p in view.plans:
        if p.status == PlanStatus.TRIED and p.trial_id:
            t = view.trial(p.trial_id)
            outcome = f"trial {p.trial_id}" + (f": {t.status}" + (" (flagged)" if t.flagged else "") if t else "")
        elif p.status == PlanStatus.DROPPED:
            outcome = f"dropped: {p.reason}"
        else:
            outcome = ""
        out.append(f"| {p.id} | {p.status} | {md_cell(p.idea)} | {md_cell(p.rationale or '')} | "
                   f"{md_cell(outcome)} |")
    dropped = [p for p in view.plans if p.status == PlanStatus.DROPPED]
    if dropped:
        out += ["", "### Dropped plans and why", ""]
        for p in dropped:
            out.append(f"- **#{p.id} {md_text(p.idea)}** (dropped {_stamp(p.closed)}): {md_text(p.reason)}")
    return out


def _transfer_section(view: RunView) -> list[str]:
    """Which keeps survive a larger scale (`autoresearch transfer`), one table per scale checked."""
    if not view.transfer:
        if view.imported:
            return ["An imported run has no commits to run again at a larger scale."]
        return ["Not checked: whether the keeps hold at a deeper model and a longer budget is unknown. Check it "
                f"with `autoresearch transfer --tag {view.tag}` (or start a night with `--transfer-at-end`)."]
    out = ["Every keep's code and its parent's ran again at a larger scale, with the same seeds; a keep is "
           "*scale-stable* when its gain there is positive beyond the floor factor times the standard error of "
           "the difference, *scale-bound* when it is negative beyond it (the win belonged to the small scale), "
           "*unknown* within it.", ""]
    for result in view.transfer:
        counts = ", ".join(f"{n} {label}" for label, n in result.counts().items())
        sd = f"pooled sd {result.sd:.2g}" if result.sd is not None else "noise unmeasured"
        out += [f"**{md_text(result.scale_key)}** ({counts}; {sd})", "",
                "| keep | change | gain on the night | gain at scale | runs | label |",
                "|---:|---|---:|---:|---:|---|"]
        for v in result.verdicts:
            night = fmt_change(v.base_gain) if v.base_gain is not None else "—"
            scaled = "—" if v.gain is None else fmt_change(v.gain) + (
                f" ± {fmt_change(result.factor * v.se, False)}" if v.se is not None else "")
            out.append(f"| {v.keep.id} | {md_cell(v.keep.description[:70])} | {night} | {scaled} | "
                       f"{v.keep_runs} vs {v.parent_runs} | {v.label} |")
        out.append("")
    return out


def _audit_section(view: RunView) -> list[str]:
    """The verdict on the audit split and the keeps with both numbers (the agent never sees this)."""
    keeps = view.by_status(TrialStatus.KEEP)
    verdict = audit_verdict(keeps, view.floor())
    out = ["Each kept model was scored once more, on the audit split: held-out text of the same kind that no "
           "decision used and the agent never saw. The gap (audit minus search) stays level while the keeps "
           "generalise, and widens when a night of keeps fits the validation split itself.", "", verdict.text, ""]
    unsandboxed = [t.id for t in view.trials if t.unsandboxed]
    if unsandboxed:
        shown = ", ".join(map(str, unsandboxed[:10])) + (" ..." if len(unsandboxed) > 10 else "")
        out += [f"**Not vouched for:** {len(unsandboxed)} trial(s) ran unsandboxed (trial {shown}); such a trial "
                "could read the audit split and the run folder, so the audit may not have been held out from them.",
                ""]
    if not keeps:
        return out
    out += ["| trial | val_bpb (search) | audit val_bpb | gap | note |", "|---:|---:|---:|---:|---|"]
    for t in keeps:
        gap = None if t.val_bpb is None or t.audit_val_bpb is None else t.audit_val_bpb - t.val_bpb
        out.append(f"| {t.id} | {fmt_val(t.val_bpb)} | {fmt_val(t.audit_val_bpb)} | "
                   f"{'—' if gap is None else fmt_change(gap)} | {md_cell(t.audit_note or '')} |")
    return out


def report_markdown(view: RunView, charts: dict[str, list[Path]], charts_rel: str = "charts",
                    graveyard_name: str | None = "graveyard.md", generated: float | None = None,
                    left_out: Sequence[str] = (), repeats: Sequence[RepeatRecord] = ()) -> str:
    """The report page; `charts` are the files render_charts wrote (the page links the SVGs); `repeats` are the
    run's refused repeats (Ledger.repeats)."""

    def image(name: str, alt: str, missing: str = "") -> list[str]:
        if name in left_out:
            return [f"*The {name} chart could not be drawn: a value in the ledger is too large for an axis.*", ""]
        if name not in charts:
            return [missing, ""] if missing else []
        svg = charts[name][0].name
        png = [p.name for p in charts[name] if p.suffix == ".png"]
        link = f" ([PNG]({charts_rel}/{png[0]}))" if png else ""
        return [f"![{alt}]({charts_rel}/{svg})", "", f"<sub>{alt}{link}</sub>", ""]

    out = [f"# Run report: {md_text(view.tag)}", "",
           f"*Generated {_stamp(generated if generated is not None else time.time())} from the run's ledger.*", ""]
    out += _overview(view) + _repeats_overview(view, repeats) + [""]
    out += ["## val_bpb over the run", "",
            "Every trial is a point; the staircase is the best keep so far, and the band under it is one noise "
            "floor deep: a trial has to land below the band for its gain to be more than noise. Flagged keeps "
            "(diamonds, ⚑) were kept with a gain under the floor.", ""]
    out += image("trajectory", "val_bpb of every trial, keeps as a staircase")
    out += ["## Keeps in order", ""] + image("gains", "gain of each keep over its parent, against the noise floor")
    out += _keeps_table(view) + [""]
    out += ["## Held for review and guard findings", ""] + _guards(view) + [""]
    if not view.imported:
        out += ["## Repeats avoided", ""] + _repeats(view, repeats) + [""]
    out += ["## What the results cost", ""]
    out += image("cost", "val_bpb against parameter count and peak VRAM",
                 "No trial recorded its parameter count or peak VRAM (upstream writes memory_gb 0.0 on CPU and MPS).")
    out += ["## Throughput", "",
            "Steps, tokens/s and MFU of every trial: on a fixed time budget anything that slows a step must "
            "pay for itself, and a change of bottleneck shows up here first.", ""]
    out += image("throughput", "steps, tokens/s and MFU per trial",
                 "No trial recorded steps, tokens/s or MFU" + (" (upstream's results.tsv has no such columns)."
                                                               if view.imported else "."))
    out += ["## The noise floor", ""]
    noise_lines = _noise_section(view)
    out += noise_lines + [""] + image("noise", "val_bpb of repeated seeds per noise measurement")
    out += ["## Audit split", ""] + image("audit", "the keeps' val_bpb on the search and audit splits, and the gap")
    out += _audit_section(view) + [""]
    out += ["## Scale transfer", ""] + image("transfer", "each keep's gain on the night and at a larger scale")
    out += _transfer_section(view) + [""]
    out += ["## Reflections", ""] + _reflections(view) + [""]
    out += ["## Plan queue", ""] + _plans(view) + [""]
    if view.steering:
        out += ["## Steering from the person", ""]
        for s in view.steering:
            out.append(f"- {_stamp(s.created)}: {md_text(s.message)}")
        out.append("")
    out += ["## The graveyard", ""]
    groups = graveyard_groups(view)
    if groups:
        summary = ", ".join(f"{g.label} {len(g.trials)}" for g in groups)
        link = f"[{graveyard_name}]({graveyard_name})" if graveyard_name else "`autoresearch export graveyard`"
        out.append(f"{sum(len(g.trials) for g in groups)} trials discarded, crashed or held ({summary}); every one with "
                   f"its diff, its log and the agent's interpretation is in {link}.")
    else:
        out.append("Nothing was discarded and nothing crashed.")
    out.append("")
    return "\n".join(out)


def _noise_section(view: RunView) -> list[str]:
    if not view.noise_rows:
        return ["Not measured: every keep was judged against nothing. Measure it with "
                f"`autoresearch noise --tag {view.tag} --repeats 3`."
                if not view.imported else
                "Not given: pass `--noise-sd` (or `--noise-values`) to `autoresearch import` to flag the keeps."]
    out = ["| # | commit | budget | seeds | values | sd | floor |", "|---:|---|---:|---:|---|---:|---:|"]
    for r in view.noise_rows:
        values = ", ".join(f"{v:.6f}" for v in r.values) or "(sd given)"
        floor = None if r.sd is None else r.sd * view.config.floor_factor
        out.append(f"| {r.id} | `{str(r.commit_sha)[:7]}` | {r.budget_s:g} s | {len(r.values)} | "
                   f"{values} | {_num(r.sd, '.6f')} | {_num(floor, '.6f')} |")
    return out


def write_report(ledger: Ledger, out_dir: Path, *, png: bool = True, graveyard: bool = True,
                 generated: float | None = None) -> WrittenReport:
    """Write report.md, charts/*.svg (and .png) and graveyard.md into out_dir."""
    view = RunView.from_ledger(ledger)
    out_dir = Path(out_dir)
    charts_dir = out_dir / "charts"
    left_out: list[str] = []
    charts = render_charts(view, charts_dir, png=png, left_out=left_out)
    written = WrittenReport(markdown=out_dir / "report.md", charts_dir=charts_dir,
                            charts=[p for paths in charts.values() for p in paths], chart_names=list(charts),
                            left_out=left_out)
    if graveyard:
        written.graveyard = out_dir / "graveyard.md"
        atomic_write(written.graveyard, graveyard_markdown(view, generated=generated))
    atomic_write(written.markdown, report_markdown(view, charts, graveyard_name="graveyard.md" if graveyard else None,
                                                   generated=generated, left_out=left_out,
                                                   repeats=ledger.repeats()))
    return written
