"""The analytic estimator checked against the tracer at full size (`memprof validate --trace`).

Each case builds a preset's Hugging Face model from its config at FULL size on fake tensors and traces
one steady-state training step (`memprof.tracer.trace_preset`); the same configuration is estimated
analytically (`memprof.estimate`) and both `EstimateRecord`s are compared: model states to the byte,
`peak.allocated` in percent (analytic − traced, of the traced), the phase of the peak, and the peak's
categories (kept in the record, so a disagreement can be read from it). A case passes when the model
states agree exactly and the peak is within PEAK_TOLERANCE_PCT; a configuration the tracer refuses is
"not run" with the tracer's reason.

The matrix (`full_matrix()`) covers the axes without the whole product:
- every preset with AdamW, bf16-mixed, batch 1 at its default sequence (the model's context, at most
  2048, as the tracer picks it), on `cpu` and `cuda`;
- precisions 32-true and bf16-true, optimizers SGD, Adafactor and Lion (and L-BFGS, which needs a
  closure), eager vs sdpa attention, full checkpointing, and one long sequence (llama-3.1-8b at 8192),
  each on a few presets.
`quick_matrix()`: gpt2-124m with AdamW on cpu, and with Lion and full checkpointing on cuda (seconds; CI runs it).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

SCHEMA = "memprof.validation-trace/1"
PEAK_TOLERANCE_PCT = 0.5
DEFAULT_FILE = "validation-trace-full.json"  # under profiles/measurements/
STATES = ("parameters", "gradients", "optimizer_states")


@dataclass(frozen=True)
class Case:
    """One full-size configuration: a preset and the knobs both estimators take."""

    preset: str
    device: str = "cuda"
    optimizer: str = "adamw"
    precision: str = "bf16-mixed"
    attention: str = "auto"
    checkpointing: str = "none"
    batch_size: int = 1
    seq_len: int | None = None  # None: the tracer's default (the context, at most 2048)

    @property
    def id(self) -> str:
        shape = f"b{self.batch_size}" + ("" if self.seq_len is None else f"s{self.seq_len}")
        return "-".join(
            (self.preset, self.device, self.optimizer, self.precision, self.attention, self.checkpointing, shape)
        )


def _presets() -> list[str]:
    from memprof.estimators.models import preset_names

    return sorted(preset_names())


def full_matrix() -> list[Case]:
    cases = [Case(p, device) for p in _presets() for device in ("cpu", "cuda")]
    for preset in ("gpt2-124m", "llama-3.1-8b"):
        for precision in ("32-true", "bf16-true"):
            cases += [Case(preset, device, precision=precision) for device in ("cpu", "cuda")]
    for preset in ("gpt2-355m", "qwen2.5-0.5b"):
        cases += [Case(preset, "cuda", optimizer=opt) for opt in ("sgd", "adafactor", "lion")]
    cases.append(Case("gpt2-124m", "cuda", optimizer="lbfgs"))
    for preset in ("gpt2-124m", "llama-3.1-8b", "bert-base-uncased"):
        cases += [Case(preset, device, attention="eager") for device in ("cpu", "cuda")]
    for preset in ("gpt2-774m", "llama-3.1-8b"):
        cases += [Case(preset, device, checkpointing="full") for device in ("cpu", "cuda")]
    for preset in ("opt-350m", "qwen2.5-0.5b", "pythia-410m"):
        cases += [Case(preset, device, attention="eager") for device in ("cpu", "cuda")]
        cases += [Case(preset, device, checkpointing="full") for device in ("cpu", "cuda")]
    for preset in ("gpt2-774m", "mistral-7b"):
        cases += [Case(preset, device, precision="32-true") for device in ("cpu", "cuda")]
    cases += [Case("llama-3.1-8b", "cuda", optimizer=opt) for opt in ("sgd", "adafactor", "lion")]
    cases += [Case("llama-3.1-8b", device, seq_len=8192) for device in ("cpu", "cuda")]
    cases += [Case("qwen2.5-7b", device, seq_len=8192) for device in ("cpu", "cuda")]
    return cases


def quick_matrix() -> list[Case]:
    # (a backward peak on cuda differs by about 1 %: the cuda case peaks in the step, with Lion's one state)
    return [Case("gpt2-124m", "cpu"), Case("gpt2-124m", "cuda", optimizer="lion", checkpointing="full")]


def select_cases(cases: list[Case], only: Iterable[str]) -> list[Case]:
    only = [o for o in only if o]
    if not only:
        return cases
    from memprof.estimators.errors import MemprofUserError

    picked = [c for c in cases if any(o in c.id for o in only)]
    if not picked:
        raise MemprofUserError(f"--only {', '.join(only)} matches no case of the trace matrix")
    return picked


def _diff(r: dict[str, Any], key: str) -> int:
    if key in STATES:
        return int(r["rows"][f"model_states.{key}"]["diff_bytes"])
    return int(r.get("peak_category_diff", {}).get(key, 0))


def _states_only(r: dict[str, Any], key: str) -> bool:
    return _diff(r, key) != 0 and all(_diff(r, c) == 0 for c in STATES if c != key)


def _peak_off(r: dict[str, Any]) -> bool:
    return abs(r["rows"]["peak.allocated"]["diff_pct"]) > PEAK_TOLERANCE_PCT


# known causes of a disagreement beyond tolerance: a predicate on a case's result and the explanation,
# read from the record's peak categories (scripts/render_trace_accuracy.py prints them beside it)
EXPLANATIONS: list[tuple[str, Callable[[dict[str, Any]], bool], str]] = [
    (
        "vit-cls-grad",
        lambda r: r["preset"].startswith("vit") and r["batch_size"] == 1 and _states_only(r, "gradients"),
        "States: at batch 1 the class token's gradient is a view of the gradient of the whole embedding "
        "sequence (the backward of `cls_token.expand(1, -1, -1)` and of the concatenation hands AccumulateGrad "
        "a slice it keeps), so `cls_token.grad` holds a (1, patches + 1, hidden) storage: 196 x 768 x 4 B = "
        "602,112 B more than the parameter's own bytes for ViT-B/16 in float32. A real CPU run shows the same "
        "storage; the trace is right and the analytic figure counts the parameter's bytes only.",
    ),
    (
        "cuda-backward",
        lambda r: (
            _peak_off(r)
            and r["device"] == "cuda"
            and r["phase"]["traced"] == "backward"
            and _diff(r, "activations") < 0
        ),
        "Peak: not root-caused. At the backward peak the trace holds more activation bytes than the analytic "
        "estimate on cuda only (these presets agree on cpu, where both run the CPU kernels), so the difference "
        "lies in what of the CUDA step the tracer runs as CPU kernels: the attention kernel's twin (CUDA's flash "
        "and cuDNN kernels as the CPU flash kernel, the memory-efficient one as its meta kernel; with a mask "
        "on the memory-efficient kernel, T5's position bias, the CPU's own SDPA), and eager attention, whose gap "
        "with dropout on is that of the cpu eager case (gpt2-124m: heads x seq^2 x 3 B). CUDA autocast's op "
        "lists (memprof.tracer.cuda_autocast) and dropout's bool mask (memprof.tracer.rules) are modelled in "
        "the trace; reported with the figures.",
    ),
    (
        "eager-backward",
        lambda r: _peak_off(r) and r["device"] == "cpu" and r["attention"] == "eager" and _diff(r, "activations") < 0,
        "Peak: not root-caused. With eager attention on cpu the trace holds heads x seq^2 x 3 B more at the backward "
        "peak (one layer's bf16 attention probabilities and their bool dropout mask), a moment the analytic "
        "eager trace frees earlier; reported with the figures.",
    ),
    (
        "rounding",
        lambda r: _peak_off(r) and r["device"] == "cuda" and not r.get("peak_category_diff", {}).get("activations"),
        "Peak: the same tensor bytes at the peak (no category differs but the states' step counters); "
        "`peak.allocated` differs by the caching allocator's rounding of the two event streams "
        "(the analytic step's modelled allocations vs the traced ones), replayed by the same simulator.",
    ),
]


def explain(result: dict[str, Any]) -> list[str]:
    """The keys of every known cause (EXPLANATIONS) that applies to a case beyond tolerance."""
    return [key for key, matches, _ in EXPLANATIONS if matches(result)]


def _trace(case: Case) -> Any:
    from memprof.tracer import trace_preset

    return trace_preset(
        case.preset,
        case.optimizer,
        case.precision,
        device=case.device,
        batch_size=case.batch_size,
        seq_len=case.seq_len,
        attention=case.attention,
        checkpointing=case.checkpointing,
    )


def _category_diff(analytic: dict[str, Any], traced: dict[str, Any]) -> dict[str, int]:
    out = {}
    for k in sorted(set(analytic) | set(traced)):
        a, t = analytic.get(k, 0), traced.get(k, 0)
        if a is not None and t is not None and a != t:
            out[k] = a - t
    return out


def run_case(case: Case, estimate_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Trace, estimate and compare one case; never raises (an error is recorded in the result).
    estimate_fn: the analytic estimator (default `memprof.estimate`), replaceable for tests."""
    from memprof.estimators.errors import MemprofUserError
    from memprof.predict import estimate

    analytic_fn: Callable[..., Any] = estimate if estimate_fn is None else estimate_fn
    t0 = time.perf_counter()
    result: dict[str, Any] = {"id": case.id, **asdict(case), "status": "error", "error": None, "rows": {}}
    try:
        try:
            traced = _trace(case).record
        except MemprofUserError as exc:  # a configuration the tracer refuses
            result["status"] = "not run"
            result["error"] = str(exc)[:300]
            result["duration_s"] = round(time.perf_counter() - t0, 3)
            return result
        ts = traced.settings
        analytic = analytic_fn(
            case.preset,
            case.optimizer,
            case.precision,
            device=case.device,
            batch_size=case.batch_size,
            seq_len=ts.seq_len,
            attention=ts.attention,
            checkpointing=case.checkpointing,
        ).record
        s = analytic.settings
        result["seq_len"] = ts.seq_len
        result["settings"] = {
            "analytic": {"attention": s.attention, "kernel": s.attention_kernel, "optimizer_impl": s.optimizer_impl},
            "traced": {"attention": ts.attention, "kernel": ts.attention_kernel, "optimizer_impl": ts.optimizer_impl},
        }
        for c in STATES:
            a, t = getattr(analytic.model_states, c), getattr(traced.model_states, c)
            result["rows"][f"model_states.{c}"] = {"analytic": a, "traced": t, "diff_bytes": a - t}
        a, t = analytic.peak.allocated, traced.peak.allocated
        result["rows"]["peak.allocated"] = {
            "analytic": a,
            "traced": t,
            "diff_bytes": a - t,
            "diff_pct": round((a - t) / t * 100, 4) if t else None,
        }
        result["rows"]["activations_saved"] = {
            "analytic": analytic.activations_saved,
            "traced": traced.activations_saved,
        }
        result["phase"] = {"analytic": analytic.peak.phase, "traced": traced.peak.phase}
        result["peak_by_category"] = {
            "analytic": dict(analytic.peak.by_category),
            "traced": dict(traced.peak.by_category),
        }
        result["peak_category_diff"] = _category_diff(analytic.peak.by_category, traced.peak.by_category)
        result["optimizer_state_diff"] = _category_diff(
            dict(analytic.optimizer_state_breakdown), dict(traced.optimizer_state_breakdown)
        )
        result["status"] = judge(result["rows"])
    except Exception as exc:  # a case that cannot run is recorded, the matrix goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result["error"] = (
            f"{type(exc).__name__}: {str(exc)[:300]} (at {os.path.basename(where.filename)}:{where.lineno})"
        )
    result["duration_s"] = round(time.perf_counter() - t0, 3)
    return result


def judge(rows: dict[str, dict[str, Any]]) -> str:
    """ "pass": model states to the byte and the peak within tolerance; "fail" otherwise."""
    if any((rows.get(f"model_states.{c}") or {}).get("diff_bytes") != 0 for c in STATES):
        return "fail"
    pct = (rows.get("peak.allocated") or {}).get("diff_pct")
    return "pass" if pct is not None and abs(pct) <= PEAK_TOLERANCE_PCT else "fail"


def states_exact(r: dict[str, Any]) -> bool:
    return bool(r["rows"]) and all((r["rows"].get(f"model_states.{c}") or {}).get("diff_bytes") == 0 for c in STATES)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    compared = [r for r in results if r["status"] in ("pass", "fail")]
    peaks = sorted(abs(r["rows"]["peak.allocated"]["diff_pct"]) for r in compared)
    statuses = [r["status"] for r in results]
    return {
        "cases": len(results),
        "pass": statuses.count("pass"),
        "fail": statuses.count("fail"),
        "not_run": statuses.count("not run"),
        "error": statuses.count("error"),
        "compared": len(compared),
        "model_states_exact": sum(1 for r in compared if states_exact(r)),
        "peak_within_tolerance": sum(1 for p in peaks if p <= PEAK_TOLERANCE_PCT),
        "phase_agrees": sum(1 for r in compared if r["phase"]["analytic"] == r["phase"]["traced"]),
        "peak_abs_diff_pct_median": round(peaks[len(peaks) // 2], 4) if peaks else None,
        "peak_abs_diff_pct_max": round(peaks[-1], 4) if peaks else None,
    }


def run_matrix(
    cases: Iterable[Case],
    subset: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
    estimate_fn: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run every case; the record `memprof validate --trace --out` writes and
    scripts/render_trace_accuracy.py reads."""
    import transformers

    from memprof.validate import record_header, run_cases

    transformers.logging.set_verbosity_error()
    results, seconds = run_cases(cases, lambda case: run_case(case, estimate_fn), progress)
    tolerance = {"model_states": "exact (bytes)", "peak_allocated_pct": PEAK_TOLERANCE_PCT}
    return {**record_header(SCHEMA, subset, tolerance, seconds), "summary": summarize(results), "cases": results}


def load_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recorded trace validation run; anything else raises MemprofUserError."""
    from memprof.validate import read_record

    return read_record(path, SCHEMA, "trace validation")
