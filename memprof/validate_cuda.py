"""The GPU validation matrix: `memprof validate --device cuda` (and scripts/gpu_validate.sh).

Each case trains a preset at full size (built from its config, randomly initialised: no download) on
the GPU with a real optimizer implementation (foreach or fused AdamW), under bf16 or fp16 autocast
(fp16 with a GradScaler) and a chosen SDPA backend (flash or memory-efficient, through
torch.nn.attention.sdpa_kernel) or eager attention, and reads what the device says:
- `torch.cuda.max_memory_allocated()` / `max_memory_reserved()` of the measured step (peaks reset after
  one warm-up step), `num_alloc_retries`;
- NVML's per-process usage at the end (nvidia-ml-py, a dependency; memprof.profiler.nvml), and so the
  CUDA context: NVML minus `torch.cuda.memory_reserved()`;
- a memory snapshot (`torch.cuda.memory._record_memory_history` from before the model is built, then
  `_snapshot()`), whose trace is replayed through memprof's allocator simulator
  (estimators/allocator/snapshot.py): the simulator's reserved peak against the device's.
The same configuration is estimated (`estimate(..., device="cuda", gpu=<this GPU's preset>,
cuda_version=torch.version.cuda)`) and compared. Every case runs in a fresh process, so each has its
own CUDA context and a cache that starts empty.

The record (`memprof.validation-cuda/1`, written to profiles/measurements/validation-cuda-<gpu>.json)
is what `cuda_table` renders (scripts/render_cuda_validation.py). A record measured on the CPU (the
tests build one: peaks of live tensor bytes from memprof.track, nothing the CPU does not have) says so
in `environment.device` and in every rendered line; it is a check of the schema and the renderer,
never a GPU figure.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from memprof._version import __version__

SCHEMA = "memprof.validation-cuda/1"
PEAK_TOLERANCE_PCT = 3.0  # the CPU matrix's (memprof.validate): the allocated peak decides pass/fail
CASE_TIMEOUT_S = 300
DEFAULT_FILE = "validation-cuda-{gpu}.json"  # under profiles/measurements/


@dataclass(frozen=True)
class CudaCase:
    """One training configuration on the GPU."""

    model: str  # a preset
    optimizer_impl: str = "foreach"  # "foreach" | "fused" (torch.optim.AdamW)
    precision: str = "bf16-mixed"  # "bf16-mixed" | "16-mixed" (GradScaler) | "32-true"
    attention: str = "sdpa"  # "sdpa" | "eager"
    backend: str | None = "flash"  # sdpa only: "flash" | "efficient" (forced with sdpa_kernel)
    batch_size: int = 4
    seq_len: int = 512

    @property
    def id(self) -> str:
        attn = self.attention + (f"-{self.backend}" if self.attention == "sdpa" and self.backend else "")
        return f"{self.model}-adamw-{self.optimizer_impl}-{self.precision}-{attn}-b{self.batch_size}s{self.seq_len}"


def cuda_matrix(quick: bool = False) -> list[CudaCase]:
    """The matrix: fused and foreach AdamW, flash and memory-efficient SDPA, bf16 and fp16 autocast,
    eager attention, several families and shapes. quick: three cases (the tests' small form)."""
    if quick:
        return [
            CudaCase("gpt2-124m", batch_size=2, seq_len=256),
            CudaCase("gpt2-124m", "fused", "16-mixed", backend="efficient", batch_size=2, seq_len=256),
            CudaCase("gpt2-124m", attention="eager", backend=None, batch_size=2, seq_len=256),
        ]
    cases = []
    for impl in ("foreach", "fused"):
        for precision in ("bf16-mixed", "16-mixed"):
            for backend in ("flash", "efficient"):
                cases.append(CudaCase("gpt2-124m", impl, precision, "sdpa", backend))
    cases += [
        CudaCase("gpt2-124m", attention="eager", backend=None),
        CudaCase("gpt2-124m", batch_size=8, seq_len=1024),
        CudaCase("gpt2-355m", "fused", batch_size=4, seq_len=1024),
        CudaCase("pythia-410m", batch_size=4, seq_len=1024),
        CudaCase("opt-350m", "fused", "16-mixed", batch_size=4, seq_len=1024),
        CudaCase("qwen2.5-0.5b", batch_size=2, seq_len=1024),
        CudaCase("bert-base-uncased", batch_size=8, seq_len=512),
        CudaCase("gpt2-124m", "foreach", "32-true", backend="efficient"),
    ]
    return cases


def select_cases(cases: list[CudaCase], only: Iterable[str]) -> list[CudaCase]:
    only = list(only)
    if not only:
        return cases
    chosen = [c for c in cases if any(text in c.id for text in only)]
    if not chosen:
        from memprof.estimators.errors import MemprofUserError

        raise MemprofUserError(f"--only {' '.join(only)} matches no case of the GPU matrix")
    return chosen


def cuda_unavailable() -> str | None:
    """Why `--device cuda` cannot run here (one line), or None when a CUDA GPU is usable."""
    try:
        import torch
    except ImportError:
        return "--device cuda needs torch"
    if torch.version.cuda is None:
        return f"--device cuda needs a CUDA build of torch; this one is {torch.__version__} (no CUDA)"
    if not torch.cuda.is_available():
        return f"--device cuda found no usable GPU: torch.cuda.is_available() is False (torch {torch.__version__})"
    return None


# ---------------------------------------------------------------------------------- one case


def _build(case: CudaCase, device: str) -> Any:
    """The preset's Hugging Face model from its config, at full size, float32 parameters."""
    import warnings

    import transformers

    from memprof.estimators.models import load_model

    spec = load_model(case.model)
    config = dict(spec.config)
    model_type = config.pop("model_type")
    config.pop("torch_dtype", None)
    config.pop("dtype", None)
    cfg = transformers.AutoConfig.for_model(model_type, **config)
    cfg._attn_implementation = case.attention
    head = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "image-classification": transformers.AutoModelForImageClassification,
    }[spec.task]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = head.from_config(cfg)
    if getattr(model, "loss_type", "") is None:
        model.loss_type = "ForCausalLM"
    return model.to(device).train(), spec


def _inputs(spec: Any, case: CudaCase, device: str) -> dict[str, Any]:
    import torch

    vocab = int(spec.config.get("vocab_size", 1000))
    ids = torch.randint(2, vocab, (case.batch_size, case.seq_len), device=device)
    return {"input_ids": ids, "labels": ids.clone()}


def measure_case(case: CudaCase, device: str = "cuda") -> dict[str, Any]:
    """Train `case` on `device` (one warm-up step, then the measured one) and read the device.

    On "cpu" (the tests' schema check) only the peak of live tensor bytes is read, by memprof.track;
    every CUDA-only figure is None."""
    import contextlib

    import torch

    torch.manual_seed(0)
    cuda = device == "cuda"
    if cuda:
        # the alloc/free/segment trace only (context=None: no tracebacks, fast and small)
        torch.cuda.memory._record_memory_history(enabled="all", context=None, max_entries=2_000_000)
    model, spec = _build(case, device)
    kwargs: dict[str, Any] = {"fused": True} if case.optimizer_impl == "fused" else {"foreach": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(case.precision)
    scaler = torch.amp.GradScaler(device) if case.precision == "16-mixed" and cuda else None

    def backend() -> contextlib.AbstractContextManager[Any]:
        """A fresh sdpa_kernel context per step (a generator-based context manager enters once)."""
        if case.attention != "sdpa" or not case.backend or not cuda:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(
            {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}[case.backend]
        )

    def step() -> None:
        batch = _inputs(spec, case, device)
        autocast = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with backend(), autocast:
            out = model(**batch)
        loss = out.loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del out, loss, batch

    step()  # warm-up: the optimizer creates its states
    measured: dict[str, Any] = {"device": device}
    if not cuda:
        import memprof

        with memprof.track(model, optimizer) as run:
            step()
        peak = run.to_dict().get("peak") or {}
        measured["max_memory_allocated"] = peak.get("allocated")
        for key in ("max_memory_reserved", "num_alloc_retries", "nvml_process_used", "cuda_context", "snapshot"):
            measured[key] = None
        return measured
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    stats = torch.cuda.memory_stats()
    measured["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    measured["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    measured["num_alloc_retries"] = stats.get("num_alloc_retries", 0)
    from memprof.profiler.nvml import Nvml

    nvml = Nvml(torch.cuda.current_device())
    used = nvml.process_used()
    measured["nvml_process_used"] = used
    measured["nvml_unavailable"] = nvml.reason
    measured["driver"] = nvml.driver
    nvml.close()
    reserved_now = torch.cuda.memory_reserved()
    measured["cuda_context"] = None if used is None else used - reserved_now
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    from memprof.estimators.allocator.snapshot import replay_snapshot

    replay = replay_snapshot(snapshot)
    measured["snapshot"] = {
        "simulated_peak_reserved": replay.result.peak_reserved,
        "simulated_peak_allocated": replay.result.peak_allocated,
        "segments_matching": replay.segments_matching,
        "segments_exact": replay.segments_exact,
        "trace_complete": replay.trace.unmatched_frees == 0,
    }
    return measured


def predict_case(case: CudaCase, gpu: str | None, cuda_version: str | None, device: str = "cuda") -> dict[str, Any]:
    """The estimate of `case` (on `device`), the figures the measurement is compared with."""
    from memprof.estimators.estimation import estimate

    knobs: dict[str, Any] = {"batch_size": case.batch_size, "seq_len": case.seq_len, "device": device}
    knobs.update(attention=case.attention, optimizer_impl=case.optimizer_impl)
    if device == "cuda":
        knobs.update(gpu=gpu, cuda_version=cuda_version)
    est = estimate(case.model, "adamw", case.precision, **knobs)
    r = est.record
    span = (r.allocator or {}).get("range") or {}
    base = ((r.allocator or {}).get("peak") or {}).get("reserved")
    offset = (r.peak.reserved or 0) - base if isinstance(base, int) else 0
    return {
        "allocated": r.peak.allocated,
        "reserved": r.peak.reserved,
        "reserved_low": None if span.get("low") is None else span["low"] + offset,
        "reserved_high": None if span.get("high") is None else span["high"] + offset,
        "device_total": r.peak.device_total,
        "cuda_context": None if r.cuda_context is None else r.cuda_context.bytes,
        "attention_kernel": r.settings.attention_kernel,
        "phase": r.peak.phase,
    }


def _row(predicted: int | None, measured: int | None) -> dict[str, Any]:
    error = None if predicted is None or measured is None else predicted - measured
    pct = None if error is None or not measured else round(100 * error / measured, 4)
    return {"predicted": predicted, "measured": measured, "error_bytes": error, "error_pct": pct}


def compare(case: CudaCase, measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    """One result: the rows (allocated, reserved, device total vs NVML, context) and a status."""
    snapshot = measured.get("snapshot") or {}
    nvml = measured.get("nvml_process_used")
    rows = {
        "allocated": _row(predicted["allocated"], measured.get("max_memory_allocated")),
        "reserved": _row(predicted["reserved"], measured.get("max_memory_reserved")),
        "device_total": _row(predicted["device_total"], nvml),
        "cuda_context": _row(predicted["cuda_context"], measured.get("cuda_context")),
        "snapshot_replay_reserved": _row(snapshot.get("simulated_peak_reserved"), measured.get("max_memory_reserved")),
    }
    pct = rows["allocated"]["error_pct"]
    status = "no measurement" if pct is None else ("pass" if abs(pct) <= PEAK_TOLERANCE_PCT else "fail")
    low, high, real = predicted.get("reserved_low"), predicted.get("reserved_high"), rows["reserved"]["measured"]
    return {
        "id": case.id,
        **asdict(case),
        "status": status,
        "rows": rows,
        "reserved_in_range": None if None in (low, high, real) else low <= real <= high,
        "predicted": predicted,
        "measured": measured,
        "kernel_note": (
            f"estimate models the {predicted['attention_kernel']} kernel, the run forced {case.backend}"
            if case.attention == "sdpa" and case.backend and predicted["attention_kernel"] != case.backend
            else None
        ),
    }


def _child(case: CudaCase) -> dict[str, Any]:
    """Measure one case in a fresh process (its own CUDA context, an empty cache)."""
    code = (
        "import json, sys\n"
        "from memprof.validate_cuda import CudaCase, measure_case\n"
        "case = CudaCase(**json.loads(sys.argv[1]))\n"
        "print('MEMPROF-RESULT ' + json.dumps(measure_case(case, 'cuda')))\n"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),  # the child imports memprof as the parent does
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(asdict(case))],
        capture_output=True,
        text=True,
        timeout=CASE_TIMEOUT_S,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("MEMPROF-RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("MEMPROF-RESULT "))
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"the case's process exited {proc.returncode}: {tail[:300]}")


def not_runnable(case: CudaCase, compute_capability: Any) -> str | None:
    """Why this GPU cannot run the case's forced SDPA backend (PyTorch's own filters,
    estimators/kernels.py), or None."""
    if case.attention != "sdpa" or not case.backend or compute_capability is None:
        return None
    from memprof.estimators.kernels import efficient_sdpa, flash_sdpa
    from memprof.estimators.models import load_model

    head_dim = load_model(case.model).head_dim or 64
    dtype = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(case.precision, "float32")
    check = (flash_sdpa if case.backend == "flash" else efficient_sdpa)(tuple(compute_capability), dtype, head_dim)
    return None if check.ok else check.reason


def run_case(
    case: CudaCase, device: str, gpu: str | None, cuda_version: str | None, compute_capability: Any = None
) -> dict[str, Any]:
    """Measure (a fresh process on CUDA, in process on the CPU), estimate, compare; never raises."""
    t0 = time.perf_counter()
    why = not_runnable(case, compute_capability)
    if why is not None:
        return {"id": case.id, **asdict(case), "status": "not run", "error": why, "duration_s": 0.0}
    try:
        measured = _child(case) if device == "cuda" else measure_case(case, "cpu")
        result = compare(case, measured, predict_case(case, gpu, cuda_version, device))
    except Exception as exc:  # recorded, the matrix goes on
        result = {"id": case.id, **asdict(case), "status": "error", "error": f"{type(exc).__name__}: {exc}"[:400]}
    result["duration_s"] = round(time.perf_counter() - t0, 3)
    return result


# ---------------------------------------------------------------------------------- the run


def gpu_environment(device: str) -> dict[str, Any]:
    """What ran the matrix: the GPU (name, compute capability, memory), torch, CUDA, driver."""
    import torch
    import transformers

    env: dict[str, Any] = {
        "memprof": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.version.cuda,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(
            gpu=props.name,
            compute_capability=[props.major, props.minor],
            total_memory=props.total_memory,
            cudnn=torch.backends.cudnn.version(),
            cuda_module_loading=os.environ.get("CUDA_MODULE_LOADING"),
        )
    else:
        env.update(gpu=None, note="measured on the CPU to check the record and its renderer: not a GPU figure")
    return env


def gpu_preset(env: dict[str, Any]) -> str | None:
    """memprof's preset for the GPU that ran the matrix (by its torch / NVML name), or None."""
    if not env.get("gpu"):
        return None
    from memprof.estimators.errors import MemprofUserError
    from memprof.estimators.gpus import get_gpu

    try:
        return get_gpu(env["gpu"]).name
    except MemprofUserError:
        return None


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    def pcts(key: str) -> list[float]:
        return sorted(
            abs(r["rows"][key]["error_pct"]) for r in results if "rows" in r and r["rows"][key]["error_pct"] is not None
        )

    out: dict[str, Any] = {"cases": len(results)}
    for status in ("pass", "fail", "error", "no measurement", "not run"):
        out[status.replace(" ", "_")] = sum(1 for r in results if r["status"] == status)
    for key in ("allocated", "reserved", "device_total", "cuda_context", "snapshot_replay_reserved"):
        values = pcts(key)
        out[key] = {
            "compared": len(values),
            "median_abs_error_pct": values[len(values) // 2] if values else None,
            "max_abs_error_pct": values[-1] if values else None,
        }
    out["reserved_in_range"] = sum(1 for r in results if r.get("reserved_in_range"))
    return out


def run_matrix(
    cases: Iterable[CudaCase],
    subset: str,
    device: str = "cuda",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every case on `device`; the record `memprof validate --device cuda --out` writes."""
    t0 = time.perf_counter()
    env = gpu_environment(device)
    preset = gpu_preset(env)
    cuda_version = env.get("cuda") if device == "cuda" else None
    results = []
    for case in cases:
        results.append(run_case(case, device, preset, cuda_version, env.get("compute_capability")))
        if progress is not None:
            progress(results[-1])
    return {
        "schema": SCHEMA,
        "subset": subset,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "environment": env,
        "gpu_preset": preset,
        "tolerance": {"peak_allocated_pct": PEAK_TOLERANCE_PCT},
        "duration_s": round(time.perf_counter() - t0, 1),
        "summary": summarize(results),
        "cases": results,
    }


_RECORD_KEYS = {"schema": str, "subset": str, "date": str, "environment": dict, "summary": dict, "cases": list}


def check_record(record: Any) -> dict[str, Any]:
    """A GPU validation record, checked (schema, keys, types), or a MemprofUserError naming what is wrong."""
    from memprof.estimators.errors import RecordError

    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        got = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise RecordError(f"not a GPU validation record (schema {SCHEMA!r} expected, got {got!r})")
    for key, kind in _RECORD_KEYS.items():
        if not isinstance(record.get(key), kind):
            raise RecordError(f"GPU validation record: {key!r} must be {kind.__name__}")
    for i, case in enumerate(record["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("id"), str) or "status" not in case:
            raise RecordError(f"GPU validation record: case {i} has no id or status")
        if case["status"] not in ("error", "not run") and not isinstance(case.get("rows"), dict):
            raise RecordError(f"GPU validation record: case {case['id']} has no rows")
    return record


def slug(gpu_name: str | None) -> str:
    """The file-name part for a GPU ("NVIDIA A100-SXM4-80GB" -> "a100-sxm4-80gb")."""
    import re

    text = (gpu_name or "cpu").lower().replace("nvidia", "").strip()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "gpu"


# ---------------------------------------------------------------------------------- the table


def _pct(row: dict[str, Any]) -> str:
    if row.get("predicted") is None or row.get("measured") is None:
        return "–"
    return f"{row['predicted'] / 2**20:,.0f} / {row['measured'] / 2**20:,.0f} MiB ({row['error_pct']:+.1f}%)"


def cuda_table(record: dict[str, Any]) -> str:
    """The README's GPU table (Markdown) from a record: one line per case, predicted / measured."""
    check_record(record)
    env = record["environment"]
    if env.get("device") == "cuda":
        cc = env.get("compute_capability") or ["?", "?"]
        head = (
            f"Measured on {env.get('gpu')} (sm{cc[0]}{cc[1]}), torch {env.get('torch')}, CUDA {env.get('cuda')}, "
            f"{record['date'][:10]}; memprof's preset: {record.get('gpu_preset') or 'none (estimated without a GPU)'}."
        )
    else:
        head = (
            f"CPU measurements (device {env.get('device')}), {record['date'][:10]}: a check of the record and its "
            "renderer, not a GPU; only the allocated peak is measured."
        )
    lines = [
        head,
        "",
        "| case | status | allocated (max_memory_allocated) | reserved (max_memory_reserved) | "
        "snapshot replayed vs reserved | device total vs NVML | CUDA context |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in record["cases"]:
        if case["status"] in ("error", "not run"):
            lines.append(f"| {case['id']} | {case['status']}: {case.get('error', '')} | | | | | |")
            continue
        rows = case["rows"]
        lines.append(
            f"| {case['id']} | {case['status']} | {_pct(rows['allocated'])} | {_pct(rows['reserved'])} | "
            f"{_pct(rows['snapshot_replay_reserved'])} | {_pct(rows['device_total'])} | {_pct(rows['cuda_context'])} |"
        )
    s = record["summary"]
    lines += [
        "",
        f"{s['cases']} cases: {s['pass']} pass, {s['fail']} beyond {record['tolerance']['peak_allocated_pct']}% "
        f"(allocated), {s['error']} errors; measured reserved inside the predicted range in "
        f"{s['reserved_in_range']}.",
    ]
    return "\n".join(lines)
