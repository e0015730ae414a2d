"""Predicted vs measured rank by rank: the profiles one multi-process run saved side by side
(`memprof run` under torchrun: out.rank0.json, out.rank1.json, ...) against the per-rank estimate.

A rank's row: its measured peak of live tensor bytes (`peak.allocated`) against the estimate's, the
error in percent, the phase of each peak and whether its model states (parameters, gradients,
optimizer states, what this rank holds) agree to the byte. The worst rank is the one whose measured
peak is highest (what a user provisions for), ties broken by the largest error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.records import EstimateRecord, ProfileRecord
from memprof.estimators.units import format_bytes

MODEL_STATES = ("parameters", "gradients", "optimizer_states")


def compare_ranks(estimate: EstimateRecord, profiles: Sequence[ProfileRecord]) -> dict[str, Any]:
    """{"ranks": [row per profile, in rank order], "worst_rank": rank, "world_size": N}."""
    if not profiles:
        raise MemprofUserError("compare_ranks needs at least one profile")
    worlds = {p.world_size for p in profiles if p.world_size is not None}
    if len(worlds) > 1:
        raise MemprofUserError(f"the profiles come from runs of different sizes (world sizes {sorted(worlds)})")
    rows: list[dict[str, Any]] = []
    predicted_states = estimate.model_states.to_dict()
    for index, prof in enumerate(profiles):
        measured = prof.peak.allocated
        predicted = estimate.peak.allocated
        states = prof.model_states.to_dict()
        rows.append(
            {
                "rank": prof.rank if prof.rank is not None else index,
                "predicted_peak": predicted,
                "measured_peak": measured,
                "error_pct": None
                if predicted is None or not measured
                else round(100.0 * (predicted - measured) / measured, 2),
                "predicted_phase": estimate.peak.phase,
                "measured_phase": prof.peak.phase,
                "states_exact": all(predicted_states[k] == states.get(k) for k in MODEL_STATES),
            }
        )
    ranks = [r["rank"] for r in rows]
    if len(set(ranks)) != len(ranks):
        raise MemprofUserError(f"two profiles are of the same rank ({ranks}); give one profile per rank")
    rows.sort(key=lambda r: r["rank"])
    worst = max(rows, key=lambda r: (r["measured_peak"] or 0, abs(r["error_pct"] or 0)))
    return {"ranks": rows, "worst_rank": worst["rank"], "world_size": next(iter(worlds), len(profiles))}


def format_ranks(result: dict[str, Any]) -> str:
    """The per-rank table, the worst rank marked."""
    lines = [f"{'rank':>4}  {'predicted':>12}  {'measured':>12}  {'error':>8}  {'phase (pred/meas)':24}  states"]
    for r in result["ranks"]:
        err = "-" if r["error_pct"] is None else f"{r['error_pct']:+.2f}%"
        mark = "  <- worst" if r["rank"] == result["worst_rank"] else ""
        phases = f"{r['predicted_phase']}/{r['measured_phase']}"
        lines.append(
            f"{r['rank']:>4}  {_b(r['predicted_peak']):>12}  {_b(r['measured_peak']):>12}  {err:>8}  "
            f"{phases:24}  {'exact' if r['states_exact'] else 'differ'}{mark}"
        )
    lines.append(f"worst rank: {result['worst_rank']} of {result['world_size']}")
    return "\n".join(lines)


def _b(n: int | None) -> str:
    return "-" if n is None else format_bytes(n)
