"""What fits a GPU: the largest batch (or sequence) under a memory budget, and the knobs that help.

`fit` searches the estimator itself (no extrapolation is reported: every figure printed is an estimate
that was actually run). Peak memory grows with the batch almost linearly, so the search starts from the
line through batch 1 and batch 2 and then walks to the exact boundary; that keeps the number of
estimates small (each takes milliseconds).

The knob table is the optimizer-taxonomy seed's decision framework made concrete: for the binding
constraint (VRAM), each row changes one thing — activation checkpointing, attention kernel, precision,
a lower-memory optimizer family (8-bit Adam, Adafactor, Lion, SGD), ZeRO stage and GPU count, CPU
offload, the allocator's expandable segments — and shows the peak it gives, the bytes it saves and
whether it fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import MemprofUserError, ParameterError
from .estimation import MAX_BATCH_SIZE, estimate
from .precision import get_precision
from .records import EstimateRecord
from .units import format_bytes, parse_size

DEFAULT_HEADROOM = "5%"
SEQ_MULTIPLE = 64  # seq_len="auto" answers a multiple of this when memory is the limit


@dataclass(frozen=True)
class Budget:
    """The bytes a configuration may use on one GPU: usable memory less the headroom."""

    gpu: str
    usable: int
    headroom: int

    @property
    def limit(self) -> int:
        return self.usable - self.headroom


@dataclass(frozen=True)
class KnobRow:
    """One knob applied to the reference configuration."""

    label: str  # the CLI flags that apply it: "--checkpointing full"
    family: str  # what kind of knob: "activations", "precision", "optimizer", "sharding"
    changes: dict[str, Any]  # the estimate() arguments it changes
    peak: int  # device total with the knob
    saves: int  # reference peak minus this peak (negative: costs memory)
    fits: bool
    cache_flushes: int | None = None  # fits only by flushing the allocator's cache this often per step


@dataclass
class FitResult:
    budget: Budget
    knobs: dict[str, Any]  # the estimate() arguments of the search (batch/seq excluded)
    searched: str  # "batch_size" or "seq_len"
    max_batch_size: int | None  # None: not even batch 1 fits
    max_seq_len: int | None  # with seq_len="auto": the longest sequence that fits
    best: EstimateRecord | None  # the estimate at the answer
    next_up: EstimateRecord | None  # the first configuration that does not fit (batch + 1)
    reference: EstimateRecord  # the configuration the knob table starts from
    rows: list[KnobRow] = field(default_factory=list)
    estimates_run: int = 0
    # with seq_len="auto": what bounds the answer, "memory" or "positions" (the model's position
    # embeddings end before memory does), and the longest sequence before rounding to SEQ_MULTIPLE
    seq_len_limited_by: str | None = None
    max_seq_len_exact: int | None = None
    flushes: dict[int, int | None] = field(default_factory=dict)  # id(record) -> _Search's verdict

    def _flushes(self, e: EstimateRecord) -> int | None:
        n = self.flushes.get(id(e))
        return None if n is None or n < 0 else n

    def to_dict(self) -> dict[str, Any]:
        def peak(e: EstimateRecord | None) -> dict[str, Any] | None:
            return (
                None
                if e is None
                else {
                    "batch_size": e.settings.batch_size,
                    "seq_len": e.settings.seq_len,
                    "device_total": e.device_total,
                    "device_total_high": device_total_high(e),
                    "cache_flushes": self._flushes(e),
                    "phase": e.peak.phase,
                }
            )

        return {
            "model": self.reference.model,
            "gpu": self.budget.gpu,
            "usable": self.budget.usable,
            "headroom": self.budget.headroom,
            "budget": self.budget.limit,
            "settings": {k: v for k, v in self.knobs.items() if k != "gpu"},
            "searched": self.searched,
            "max_batch_size": self.max_batch_size,
            "max_seq_len": self.max_seq_len,
            "best": peak(self.best),
            "next_up": peak(self.next_up),
            "reference": peak(self.reference),
            "knobs": [
                {
                    "knob": r.label,
                    "family": r.family,
                    "changes": r.changes,
                    "peak": r.peak,
                    "saves": r.saves,
                    "fits": r.fits,
                    "cache_flushes": r.cache_flushes,
                }
                for r in self.rows
            ],
            "policy": FIT_POLICY,
            "estimates_run": self.estimates_run,
            "seq_len_limited_by": self.seq_len_limited_by,
            "max_seq_len_exact": self.max_seq_len_exact,
            "seq_multiple": SEQ_MULTIPLE if self.searched == "seq_len" else None,
        }


def parse_headroom(text: str | int, usable: int) -> int:
    """ "5%" of the usable memory, or a size such as "2GiB" / a byte count."""
    if isinstance(text, str) and text.strip().endswith("%"):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
        if not m or not 0 <= float(m.group(1)) < 100:
            raise ParameterError(
                f"{{headroom}} {text!r} must be a percentage from 0% to 99%, or a size like 2GiB", "headroom"
            )
        return int(usable * float(m.group(1)) / 100)
    try:
        value = parse_size(text)
    except MemprofUserError:
        raise ParameterError(
            f"{{headroom}} {text!r} must be a percentage like 5% or a size like 2GiB", "headroom"
        ) from None
    if value >= usable:
        raise ParameterError(f"{{headroom}} {text} leaves nothing of the {format_bytes(usable)} usable", "headroom")
    return value


def _device_total(e: EstimateRecord) -> int:
    """The device total of an estimate of the search (on CUDA, so never None)."""
    assert e.device_total is not None
    return e.device_total


FIT_POLICY = (
    "fits: the step runs within the budget (usable memory less the headroom) in every allocation order the "
    "allocator replay tries (allocator.range); when the cache the replay reserves is larger than the budget, "
    "the step is replayed with the budget as the allocator's limit, and fits if it runs: the caching allocator "
    "frees its cached segments and retries before it raises out-of-memory (each retry a synchronising "
    "cudaFree, counted as cache flushes per step)"
)


def device_total_high(e: EstimateRecord) -> int | None:
    """The device total at the high end of the reserved range over allocation orders (allocator.range)."""
    total = e.device_total
    allocator = getattr(e, "allocator", None) or {}
    high, baseline = (allocator.get("range") or {}).get("high"), (allocator.get("peak") or {}).get("reserved")
    if total is None or not isinstance(high, int) or not isinstance(baseline, int):
        return total
    return total + max(0, high - baseline)


class _Search:
    """Runs estimates, counts them, and judges them by FIT_POLICY."""

    def __init__(self, model: Any, knobs: dict[str, Any], budget: Budget):
        self.model, self.knobs, self.budget = model, knobs, budget
        self.count = 0
        # id(record) -> cache flushes per step (None: none needed, -1: does not fit); the records are
        # kept with it (`_judged`), so that an id is never that of a record since collected
        self.flushes: dict[int, int | None] = {}
        self._judged: dict[int, Any] = {}
        self._replays: dict[int, Any] = {}  # id(record) -> its Estimate, until judged

    def run(self, **changes: Any) -> EstimateRecord:
        self.count += 1
        est = estimate(self.model, **{**self.knobs, **changes})
        self._replays[id(est.record)] = est
        return est.record

    def fits(self, e: EstimateRecord) -> bool:
        if self._judged.get(id(e)) is e:
            return self.flushes[id(e)] != -1
        verdict = self._judge(e)
        self.flushes[id(e)], self._judged[id(e)] = verdict, e
        self._replays.pop(id(e), None)
        return verdict != -1

    def _judge(self, e: EstimateRecord) -> int | None:
        """None: fits in every order without a cache flush; n >= 1: fits with n flushes per step; -1: no."""
        total, high, limit = e.device_total, device_total_high(e), self.budget.limit
        if total is None or high is None:
            return -1
        if high <= limit:
            return None
        est = self._replays.get(id(e))
        if est is not None and est.record is not e:
            est = None
        sim = getattr(est, "allocator_run", None)
        context = getattr(est, "context", None)
        if sim is None or context is None or e.peak.allocated is None or e.peak.allocated + context.bytes > limit:
            return -1  # no replay to run under a limit, or the live tensors alone exceed the budget
        from .allocator.explain import runs_within

        outside = total - context.bytes - sim.peak_reserved  # tensors the replay does not allocate (buffers)
        capacity = limit - context.bytes - outside
        if capacity <= 0:
            return -1
        verdict = runs_within(sim.run.events, sim.result.config, capacity, measured_from=sim.run.measured_from)
        return max(1, verdict["retries"]) if verdict["fits"] else -1

    def largest(
        self, key: str, high: int, **fixed: Any
    ) -> tuple[int | None, EstimateRecord | None, EstimateRecord | None]:
        """The largest value of `key` in 1..high that fits, its estimate and the first that does not."""
        first = self.run(**fixed, **{key: 1})
        if not self.fits(first):
            return None, None, first
        if high == 1:
            return 1, first, None
        second = self.run(**fixed, **{key: 2})
        if not self.fits(second):
            return 1, first, second
        lo, lo_e = 2, second  # lo fits
        slope = _device_total(second) - _device_total(first)
        guess = high if slope <= 0 else min(high, 2 + (self.budget.limit - _device_total(second)) // slope)
        hi, hi_e = None, None  # hi does not fit
        if guess > lo:
            e = self.run(**fixed, **{key: guess})
            if self.fits(e):
                lo, lo_e = guess, e
            else:
                hi, hi_e = guess, e
        step = 1
        while hi is None and lo < high:  # walk up from lo, doubling, until something does not fit
            probe = min(high, lo + step)
            e = self.run(**fixed, **{key: probe})
            if self.fits(e):
                lo, lo_e = probe, e
                step *= 2
            else:
                hi, hi_e = probe, e
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            e = self.run(**fixed, **{key: mid})
            if self.fits(e):
                lo, lo_e = mid, e
            else:
                hi, hi_e = mid, e
        return lo, lo_e, hi_e


def _knob_candidates(ref: EstimateRecord) -> list[tuple[str, str, dict[str, Any]]]:
    s = ref.settings
    prec = get_precision(s.precision or "bf16-mixed")
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for mode in ("selective", "full"):
        if s.checkpointing != mode:
            rows.append((f"--checkpointing {mode}", "activations", {"checkpointing": mode}))
    if s.keep_output:  # the loop keeps only the loss: logits and key/value cache go before backward
        rows.append(("--no-keep-output", "activations", {"keep_output": False}))
    if s.attention == "eager":
        rows.append(("--attention sdpa", "activations", {"attention": "sdpa"}))
    if s.attention_kernel != "flash" and prec.compute_dtype in ("bfloat16", "float16"):
        rows.append(("--attention flash", "activations", {"attention": "flash"}))
    if prec.name == "32-true":
        rows.append(("--precision bf16-mixed", "precision", {"precision": "bf16-mixed"}))
    if prec.name not in ("bf16-true", "16-true"):
        rows.append(("--precision bf16-true", "precision", {"precision": "bf16-true"}))
    for name in ("adamw8bit", "adafactor", "lion", "sgd"):
        if s.optimizer != name:
            rows.append((f"--optimizer {name}", "optimizer", {"optimizer": name}))
    if s.optimizer_impl != "fused":
        rows.append(("--optimizer-impl fused", "optimizer", {"optimizer_impl": "fused"}))
    # training adapters instead of the whole model (peft's default targets, rank 16): LoRA, then QLoRA
    if s.lora_rank is None:
        rows.append(("--lora-rank 16", "adapters", {"lora_rank": 16}))
        rows.append(("--lora-rank 16 --quantize nf4", "adapters", {"lora_rank": 16, "quantize": "nf4"}))
    elif s.quantize is None:
        rows.append(("--quantize nf4", "adapters", {"quantize": "nf4"}))
    if not s.alloc_conf:
        rows.append(("--alloc-conf expandable_segments:True", "allocator", {"alloc_conf": "expandable_segments:True"}))
    if s.gpus == 1 and s.zero == 0:
        rows.append(("--zero 2 --offload optimizer", "sharding", {"zero": 2, "offload": "optimizer"}))
        for n in (2, 8):
            rows.append((f"--gpus {n} --zero 3", "sharding", {"gpus": n, "zero": 3}))
        rows.append(("--gpus 8 --zero 2", "sharding", {"gpus": 8, "zero": 2}))
        # model parallelism: a stage of the blocks (1F1B, --batch-size per micro-batch) or a tensor-parallel
        # rank (Llama-like families whose heads divide; other models skip the row)
        rows.append(("--pp 4 --microbatches 4", "model parallel", {"pp": 4, "microbatches": 4}))
        rows.append(("--tp 2", "model parallel", {"tp": 2}))
    elif s.zero < 3:
        rows.append(("--zero 3", "sharding", {"zero": 3}))
    return rows


def fit(
    model: Any,
    gpu: str,
    *,
    headroom: str | int = DEFAULT_HEADROOM,
    batch_size: int | None = None,
    seq_len: int | str | None = None,
    **knobs: Any,
) -> FitResult:
    """The largest batch size (or, with seq_len="auto", sequence length) of `model` that fits `gpu`.

    batch_size: with seq_len="auto", the batch the sequence search uses (default 1); otherwise the
    batch the knob table is evaluated at (default: the largest that fits, or 1 when none does).
    knobs: the other estimate() arguments (optimizer, precision, checkpointing, ...).
    """
    from .gpus import get_gpu
    from .models import load_model

    spec = load_model(model) if isinstance(model, str) else model
    gpu_spec = get_gpu(gpu)
    usable = gpu_spec.torch_total_memory or gpu_spec.memory_bytes
    budget = Budget(gpu_spec.name, usable, parse_headroom(headroom, usable))
    knobs = {**knobs, "gpu": gpu_spec.name, "device": "cuda"}
    search = _Search(spec, knobs, budget)
    max_batch = max_seq = exact = None
    limited_by: str | None = None
    if seq_len == "auto":
        if spec.model_type == "vit":
            raise ParameterError(f"{spec.name} has a fixed sequence (its patches); drop {{seq_len}} auto", "seq_len")
        b = batch_size or 1
        assert spec.max_positions is not None  # None only for ViT, refused above
        max_seq, best, next_up = search.largest("seq_len", spec.max_positions, batch_size=b)
        exact = max_seq
        limited_by = "positions" if max_seq == spec.max_positions else "memory"
        if limited_by == "memory" and max_seq is not None and max_seq >= SEQ_MULTIPLE:
            # a length a user would pick: a multiple of SEQ_MULTIPLE (kernels tile by it too)
            rounded = max_seq // SEQ_MULTIPLE * SEQ_MULTIPLE
            if rounded != max_seq:
                max_seq, best = rounded, search.run(batch_size=b, seq_len=rounded)
        reference = best or next_up
        assert reference is not None  # largest() returns the estimate that fits, or the first that does not
    else:
        max_batch, best, next_up = search.largest("batch_size", MAX_BATCH_SIZE, seq_len=seq_len)
        reference = best or next_up
        assert reference is not None  # largest() returns the estimate that fits, or the first that does not
        if batch_size is not None and batch_size != reference.settings.batch_size:
            reference = search.run(batch_size=batch_size, seq_len=seq_len)
    result = FitResult(
        budget, knobs, "seq_len" if seq_len == "auto" else "batch_size", max_batch, max_seq, best, next_up, reference
    )
    if seq_len == "auto":
        result.seq_len_limited_by, result.max_seq_len_exact = limited_by, exact
    ref_peak = _device_total(reference)
    fixed = {"batch_size": reference.settings.batch_size, "seq_len": reference.settings.seq_len}
    for label, family, changes in _knob_candidates(reference):
        try:
            e = search.run(**fixed, **changes)
        except MemprofUserError:
            continue  # a knob this model or device cannot take (e.g. flash on an unsupported dtype)
        fits = search.fits(e)
        flushes = search.flushes.get(id(e))
        result.rows.append(
            KnobRow(
                label,
                family,
                changes,
                _device_total(e),
                ref_peak - _device_total(e),
                fits,
                None if flushes is None or flushes < 0 else flushes,
            )
        )
    result.rows.sort(key=lambda r: -r.saves)
    result.estimates_run = search.count
    result.flushes = search.flushes
    return result
