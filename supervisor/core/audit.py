"""Has the night overfitted the validation split? The audit split's verdict over the keeps (issue 19).

Every keep was chosen because it lowered val_bpb on the validation ("search") split; after a hundred such choices
the keeps may fit that split's quirks rather than text in general (modded-nanogpt#223). The supervisor scores each
kept model once more on the audit split (held-out text of the same kind that no decision ever used). The gap,
audit minus search, is roughly constant while the keeps generalise; it widens when they fit the search split.

The verdict is a pure function of the keeps and the noise floor, so the report and the tests read the same one:
the gap's least-squares trend over the campaign (the fitted change from the first audited keep to the last, a
single odd keep moves it less than the last-minus-first difference would) is compared with the noise floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.core.types import Trial, TrialStatus

OVERFIT = "overfit"  # the gap widened by more than the noise floor
TRACKS = "tracks"  # the gap stayed within the floor (or narrowed)
UNJUDGED = "unjudged"  # a trend, but no measured floor to judge it against
TOO_FEW = "too few"  # fewer than two keeps with an audit score
OVERFIT_WORDS = "overfitting to the validation split"


@dataclass(frozen=True)
class AuditPoint:
    """One keep: its val_bpb on the search split and on the audit split."""

    trial_id: int
    val_bpb: float
    audit_val_bpb: float

    @property
    def gap(self) -> float:
        """Audit minus search: how much worse the kept model does on text no decision looked at."""
        return self.audit_val_bpb - self.val_bpb


@dataclass(frozen=True)
class AuditVerdict:
    kind: str  # OVERFIT, TRACKS, UNJUDGED or TOO_FEW
    text: str  # one paragraph for the report
    points: tuple[AuditPoint, ...]
    widening: float | None  # the gap's fitted change from the first audited keep to the last
    floor: float | None


def audit_points(trials: Sequence[Trial]) -> list[AuditPoint]:
    """The keeps that have both numbers, in trial order."""
    return [AuditPoint(t.id, float(t.val_bpb), float(t.audit_val_bpb)) for t in sorted(trials, key=lambda t: t.id)
            if t.status == TrialStatus.KEEP and _finite(t.val_bpb) and _finite(t.audit_val_bpb)]


def gap_widening(points: Sequence[AuditPoint]) -> float | None:
    """The gap's least-squares trend over trial ids, times the span from the first point to the last."""
    if len(points) < 2:
        return None
    xs, ys = [float(p.trial_id) for p in points], [p.gap for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return ys[-1] - ys[0]
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope * (xs[-1] - xs[0])


def audit_verdict(trials: Sequence[Trial], floor: float | None) -> AuditVerdict:
    """The report's verdict on the audit split: overfitting named when the gap widened beyond the noise floor."""
    points = tuple(audit_points(trials))
    keeps = [t for t in trials if t.status == TrialStatus.KEEP]
    if not points:
        notes = sorted({t.audit_note for t in keeps if t.audit_note})
        why = f" ({'; '.join(notes)})" if notes else ""
        text = "No keep has an audit score" + why + "." if keeps else "No keeps, so nothing was audited."
        return AuditVerdict(TOO_FEW, text, points, None, floor)
    if len(points) == 1:
        p = points[0]
        return AuditVerdict(TOO_FEW, f"Only one keep (trial {p.trial_id}) has an audit score, a gap of {p.gap:+.4f} "
                            "to its val_bpb; a trend needs two.", points, None, floor)
    widening = gap_widening(points)
    assert widening is not None
    span = (f"over {len(points)} keeps (trials {points[0].trial_id} to {points[-1].trial_id}) the gap between the audit "
            f"and search splits moved by {widening:+.4f} (fitted trend)")
    if floor is None or floor <= 0:
        return AuditVerdict(UNJUDGED, f"{span[0].upper()}{span[1:]}; the noise floor is not measured, so whether that "
                            "is more than noise cannot be said.", points, widening, floor)
    if widening > floor:
        return AuditVerdict(OVERFIT, f"**{OVERFIT_WORDS.capitalize()}:** {span}, more than the noise floor "
                            f"{floor:.4f}. The later keeps gained on the validation split more than on held-out text; "
                            "trust the audit numbers over val_bpb for them, and re-test their ideas before building "
                            "on them.", points, widening, floor)
    return AuditVerdict(TRACKS, f"The audit split tracks the search split: {span}, within the noise floor "
                        f"{floor:.4f}. The keeps' gains hold on text no decision looked at.", points, widening, floor)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
