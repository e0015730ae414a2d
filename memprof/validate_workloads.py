"""The tracer checked against real training of non-Hugging-Face workloads (`memprof validate --workloads`).

Each case is an example workload (examples/: nanoGPT, the speedrun model with Muon + Adam, the AlgoPerf
stand-ins: ResNet, ViT, U-Net, the speech models with their CTC loss, DLRM embeddings, a GNN, the WMT
Transformer) at a small configuration of the same structure (`size="tiny"`), and:

- **measured**: built for real on the CPU, one training step to create the optimizer states, then one
  step measured under `memprof.track` (a steady-state step): `out = model(...)`, the workload's loss,
  `backward()`, `step()`, `zero_grad(set_to_none=True)`;
- **traced**: `memprof.trace` of the same factory, the same optimizer (the workload's own, else the
  registry's real implementation) and precision, on fake tensors;
- **live**: the prediction `run.compare()` makes from the measured run itself (memprof.tracer.live: the
  step the profiler captured, traced again on fake tensors).

A case passes when the traced and the live peak (`peak.allocated`) are within PEAK_TOLERANCE_PCT of the
measured one and their model states (parameters, gradients, optimizer states, and the states key by key)
equal the measured ones to the byte. A workload the tracer cannot run is "not traced" with its reason.
The record (`profiles/measurements/validation-workloads-cpu.json`) is rendered into README.md by
scripts/render_workload_accuracy.py.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "memprof.validation-workloads/1"
PEAK_TOLERANCE_PCT = 1.0
DEFAULT_FILE = "validation-workloads-cpu.json"  # under profiles/measurements/
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STATES = ("parameters", "gradients", "optimizer_states")


@dataclass(frozen=True)
class Case:
    """One workload configuration, trained for real and traced."""

    workload: str  # examples/<workload>.py
    optimizer: str | None = None  # None: the workload's own optimizer (else a registry name)
    precision: str = "32-true"
    batch_size: int = 2
    kwargs: dict[str, Any] = field(default_factory=dict)  # the factory's other arguments (seq_len)

    @property
    def id(self) -> str:
        shape = f"b{self.batch_size}" + "".join(f"-{k}{v}" for k, v in sorted(self.kwargs.items()))
        return "-".join((Path(self.workload).stem, self.optimizer or "own", self.precision, shape))


def full_matrix() -> list[Case]:
    seq = {"seq_len": 32}
    cases = [
        Case("nanogpt.py", kwargs=seq),
        Case("nanogpt.py", precision="bf16-mixed", kwargs=seq),
        Case("nanogpt.py", optimizer="sgd-momentum", kwargs=seq),
        Case("nanogpt.py", optimizer="adamw8bit", kwargs=seq),  # bitsandbytes' 8-bit AdamW (its CPU kernels)
        Case("speedrun.py", kwargs=seq),
        Case("algoperf/imagenet_resnet.py", optimizer="adamw"),
        Case("algoperf/imagenet_resnet.py", optimizer="sgd-momentum"),
        Case("algoperf/imagenet_resnet.py", optimizer="adamw", precision="bf16-mixed"),
        Case("algoperf/imagenet_vit.py", optimizer="adamw"),
        Case("algoperf/fastmri.py", optimizer="adamw"),
        Case("algoperf/librispeech_deepspeech.py", optimizer="adamw"),
        Case("algoperf/librispeech_conformer.py", optimizer="adamw"),
        Case("algoperf/wmt.py", optimizer="adamw", kwargs={"seq_len": 16}),
        Case("algoperf/ogbg.py", optimizer="adamw"),
        Case("algoperf/criteo1tb.py", optimizer="adagrad"),
        Case("algoperf/criteo1tb.py", optimizer="adamw"),
    ]
    return cases


def quick_matrix() -> list[Case]:
    return [Case("nanogpt.py", kwargs={"seq_len": 32}), Case("algoperf/imagenet_resnet.py", optimizer="adamw")]


def select_cases(cases: list[Case], only: Iterable[str]) -> list[Case]:
    only = [o for o in only if o]
    if not only:
        return cases
    from memprof.estimators.errors import MemprofUserError

    picked = [c for c in cases if any(o in c.id for o in only)]
    if not picked:
        raise MemprofUserError(f"--only {', '.join(only)} matches no case of the workload matrix")
    return picked


def load(path: str) -> Any:
    """An example workload file, imported by path."""
    name = "memprof_workload_" + path.removesuffix(".py").replace("/", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _factory(case: Case) -> Callable[..., dict[str, Any]]:
    module = load(case.workload)

    def factory(batch_size: int) -> dict[str, Any]:
        return module.workload(batch_size=batch_size, size="tiny", **case.kwargs)

    factory.__qualname__ = case.id
    return factory


def _call(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def measure(case: Case) -> tuple[Any, Any]:
    """Train the case for real on the CPU: a first step, then one step under memprof.track.
    Returns the profile (whose `compare()` traces the captured step) and the measured record."""
    import torch

    from memprof.profiler import track
    from memprof.tracer.optimizers import build_optimizers

    torch.manual_seed(0)
    workload = _factory(case)(case.batch_size)
    model, inputs, loss_fn = workload["model"], workload["inputs"], workload["loss"]
    params = [p for p in model.parameters() if p.requires_grad]
    own = workload.get("optimizer")
    if case.optimizer is None:
        if own is None:
            raise ValueError(f"{case.workload} brings no optimizer; name one")
        opts = own(params)
    else:
        opts = build_optimizers(case.optimizer, params)
    opts = list(opts) if isinstance(opts, (list, tuple)) else [opts]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.precision == "bf16-mixed")
    if case.precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"precision {case.precision}: the workload matrix runs 32-true and bf16-mixed")
    model.train()

    def step() -> float:
        with autocast:
            out = _call(model, inputs)
            loss = loss_fn(out, inputs)
        loss.backward()
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # the optimizer creates its states: the measured step is a steady-state one
    with track(model, opts) as run:
        loss = step()
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss}")
    return run, run.record


def _trace(case: Case) -> Any:
    from memprof.tracer import trace

    return trace(
        _factory(case),
        case.optimizer or "adamw",  # the workload's own optimizer wins when it brings one
        case.precision,
        device="cpu",
        batch_size=case.batch_size,
        name=case.id,
        registry_optimizer=case.optimizer is not None,  # the case's optimizer, not the workload's own
    ).record


def _rows(measured: Any, predicted: Any) -> dict[str, Any]:
    """Model states (bytes, exact) and the peak (bytes and % of measured) of one prediction."""
    rows: dict[str, Any] = {}
    for c in STATES:
        m, p = getattr(measured.model_states, c), getattr(predicted.model_states, c)
        rows[f"model_states.{c}"] = {"measured": m, "predicted": p, "diff_bytes": None if p is None else p - m}
    m_keys, p_keys = dict(measured.optimizer_state_breakdown), dict(predicted.optimizer_state_breakdown)
    rows["optimizer_state_keys"] = {
        "exact": m_keys == p_keys,
        "diff": {
            k: p_keys.get(k, 0) - m_keys.get(k, 0)
            for k in sorted(set(m_keys) | set(p_keys))
            if p_keys.get(k, 0) != m_keys.get(k, 0)
        },
    }
    m, p = measured.peak.allocated, predicted.peak.allocated
    rows["peak.allocated"] = {
        "measured": m,
        "predicted": p,
        "diff_bytes": None if p is None else p - m,
        "diff_pct": None if p is None or not m else round((p - m) / m * 100, 4),
    }
    rows["phase"] = {"measured": measured.peak.phase, "predicted": predicted.peak.phase}
    rows["peak_by_category"] = {
        "measured": dict(measured.peak.by_category),
        "predicted": dict(predicted.peak.by_category),
    }
    return rows


def judge(rows: dict[str, Any]) -> str:
    """ "pass": model states and every state key exact, the peak within tolerance; "fail" otherwise."""
    if any(rows[f"model_states.{c}"]["diff_bytes"] != 0 for c in STATES) or not rows["optimizer_state_keys"]["exact"]:
        return "fail"
    pct = rows["peak.allocated"]["diff_pct"]
    return "pass" if pct is not None and abs(pct) <= PEAK_TOLERANCE_PCT else "fail"


def run_case(case: Case) -> dict[str, Any]:
    """Measure, trace and compare one case; never raises (an error is recorded in the result)."""
    from memprof.estimators.errors import MemprofError

    t0 = time.perf_counter()
    result: dict[str, Any] = {"id": case.id, **asdict(case), "status": "error", "error": None}
    try:
        run, measured = measure(case)
        result["parameters"] = measured.settings.values.get("parameters")
        result["measured"] = {
            "peak_allocated": measured.peak.allocated,
            "phase": measured.peak.phase,
            "model_states": measured.model_states.to_dict(),
        }
        statuses = []
        for predictor in ("traced", "live"):
            try:
                if predictor == "traced":
                    predicted = _trace(case)
                else:
                    frame = run.compare()
                    if frame.attrs.get("predictor") is None or "traced" not in str(frame.attrs.get("predictor")):
                        raise _NotTraced("; ".join(frame.attrs.get("missing") or []) or "no traced prediction")
                    predicted = _live_record(run)
            except (MemprofError, _NotTraced) as exc:
                result[predictor] = {"status": "not traced", "error": str(exc)[:400]}
                statuses.append("not traced")
                continue
            rows = _rows(measured, predicted)
            result[predictor] = {"status": judge(rows), "rows": rows}
            statuses.append(result[predictor]["status"])
        result["status"] = "fail" if "fail" in statuses else "not traced" if "not traced" in statuses else "pass"
    except Exception as exc:  # a case that cannot run is recorded, the matrix goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result["error"] = (
            f"{type(exc).__name__}: {str(exc)[:300]} (at {os.path.basename(where.filename)}:{where.lineno})"
        )
    result["duration_s"] = round(time.perf_counter() - t0, 3)
    return result


class _NotTraced(Exception):
    pass


def _live_record(run: Any) -> Any:
    """The live predictor's record (what `run.compare()` compared against)."""
    from memprof.comparison.observed import observe
    from memprof.tracer.live import trace_capture

    obs = observe(run.record)
    return trace_capture(
        run.step_capture, device=obs.device, optimizer=obs.optimizer or "custom", precision=obs.precision
    ).record


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": len(results)}
    for status in ("pass", "fail", "not traced", "error"):
        out[status.replace(" ", "_")] = sum(1 for r in results if r["status"] == status)
    for predictor in ("traced", "live"):
        compared = [r[predictor] for r in results if r.get(predictor, {}).get("rows")]
        peaks = sorted(abs(c["rows"]["peak.allocated"]["diff_pct"]) for c in compared)
        out[predictor] = {
            "compared": len(compared),
            "states_exact": sum(
                1
                for c in compared
                if all(c["rows"][f"model_states.{s}"]["diff_bytes"] == 0 for s in STATES)
                and c["rows"]["optimizer_state_keys"]["exact"]
            ),
            "peak_within_tolerance": sum(1 for p in peaks if p <= PEAK_TOLERANCE_PCT),
            "peak_abs_diff_pct_median": round(peaks[len(peaks) // 2], 4) if peaks else None,
            "peak_abs_diff_pct_max": round(peaks[-1], 4) if peaks else None,
        }
    return out


def run_matrix(
    cases: Iterable[Case], subset: str, progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every case: the record `memprof validate --workloads --out` writes."""
    from memprof.validate import record_header, run_cases

    results, seconds = run_cases(cases, run_case, progress)
    tolerance = {"model_states": "exact (bytes, and key by key)", "peak_allocated_pct": PEAK_TOLERANCE_PCT}
    return {**record_header(SCHEMA, subset, tolerance, seconds), "summary": summarize(results), "cases": results}


def line(r: dict[str, Any]) -> str:
    """One result as a line of text (the CLI's table)."""

    def fig(p: str) -> str:
        c = r.get(p) or {}
        if not c.get("rows"):
            return f"{p} {c.get('status', '-')}"
        pct = c["rows"]["peak.allocated"]["diff_pct"]
        return f"{p} {pct:+.3f}% {c['status']}"

    if r["status"] == "error":
        return f"{r['id']:<52} error: {r['error']}"
    return f"{r['id']:<52} {r['status']:<10} {fig('traced'):<24} {fig('live')}"


def load_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recorded workload validation run; anything else raises MemprofUserError."""
    from memprof.validate import read_record

    return read_record(path, SCHEMA, "workload validation")
