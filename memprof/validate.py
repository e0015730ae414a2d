"""The validation matrix: predicted vs measured on real training, case by case (`memprof validate`).

Each case builds a tiny real Hugging Face model of one family (memprof.tiny_models: from a config,
no downloads), a real optimizer implementation, and trains it on the CPU: warm-up steps until the
optimizer state has its steady size, then one step under `memprof.track` (the batch is created
inside the region, as a data loader hands it over). The same configuration is estimated with
`estimate(..., device="cpu")` and both are compared (memprof.comparison). A case passes when the
model states agree to the byte and the peak of live tensor bytes is within PEAK_TOLERANCE_PCT.

The matrix (`full_matrix()`) crosses, without the whole Cartesian product:
- architectures: every family x attention (eager, sdpa) x precision (32-true, bf16-mixed with
  every checkpointing mode; bf16-true and 16-mixed without selective) with AdamW;
- optimizers: every registry optimizer whose implementation runs on the CPU x (gpt2, llama) x
  (32-true, bf16-mixed), plus bf16-true on gpt2, with eager attention (the Hessian optimizers'
  double backward goes through plain ops). Left out: sparse-adam (it needs sparse
  gradients, which no transformers model produces), ga and pso (analytic, no implementation);
- shapes: batch and sequence from 1 x 16 to 8 x 128 on four families; gradient accumulation 2, 4.
16-mixed runs CPU float16 autocast without a GradScaler (loss scaling changes no tensor sizes).
`quick_matrix()` is a representative subset: every family, each attention, precision and
checkpointing mode, and one optimizer of each implementation package.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from memprof._version import __version__

# the real implementation of each registry optimizer: the table lives beside the tracer, which runs
# the same implementations on fake tensors
from memprof.tracer.optimizers import NOT_RUN, REAL_OPTIMIZERS, RealOptimizer

SCHEMA = "memprof.validation/1"
PEAK_TOLERANCE_PCT = 3.0
FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt", "bert", "vit")
FAMILIES += ("qwen3", "phi3", "gemma2", "gemma3_text", "mixtral", "qwen3_moe", "t5")  # issue 11's (NEW_FAMILIES)
# attn_implementations a family runs with, where not both (Gemma 2 refuses sdpa); = tiny_models.ATTENTIONS
_ATTENTIONS = {"gemma2": ("eager",)}
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")  # 16-mixed: CPU fp16 autocast, no GradScaler
DEFAULT_FILE = "validation-cpu-full.json"  # under profiles/measurements/
VIT_BATCH = 4


@dataclass(frozen=True)
class Case:
    """One training configuration of the matrix."""

    family: str
    optimizer: str = "adamw"
    precision: str = "32-true"
    attention: str = "eager"
    checkpointing: str = "none"
    batch_size: int = 2
    seq_len: int = 32  # ignored for vit (patches + class token)
    grad_accumulation: int = 1  # micro-batches (forward + backward) per optimizer step
    # the loop's choices and the task head (memprof estimate --keep-output/--no-keep-output,
    # --zero-grad, --head); None: the family's default head
    keep_output: bool = True  # False: `loss = model(**batch).loss` (the output dies in forward)
    zero_grad: str = "set-to-none"  # "zeros": zero_grad(set_to_none=False), gradients stay allocated
    head: str | None = None
    # LoRA through peft (rank None: full training), on bitsandbytes-quantized base weights
    lora_rank: int | None = None
    lora_targets: str | None = None  # None: peft's default; "all-linear"; names separated by commas
    lora_dropout: float = 0.0
    quantize: str | None = None  # "int8" | "nf4" | "fp4"
    double_quant: bool = False

    @property
    def adapter_id(self) -> str:
        """The id's adapter part: empty for full training, else "-lora16", "-lora8-all-linear-d0.1-nf4dq" ..."""
        if self.lora_rank is None:
            return ""
        out = f"-lora{self.lora_rank}"
        if self.lora_targets:
            out += "-" + self.lora_targets.replace(",", "+")
        if self.lora_dropout:
            out += f"-d{self.lora_dropout:g}"
        if self.quantize:
            out += f"-{self.quantize}" + ("dq" if self.double_quant else "")
        return out

    @property
    def id(self) -> str:
        shape = f"b{self.batch_size}" + ("" if self.family == "vit" else f"s{self.seq_len}")
        if self.grad_accumulation > 1:
            shape += f"-ga{self.grad_accumulation}"
        loop = ("" if self.keep_output else "-nokeep") + ("" if self.zero_grad == "set-to-none" else "-zeros")
        head = "" if self.head is None else f"-{self.head}"
        return "-".join((self.family, self.optimizer, self.precision, self.attention, self.checkpointing, shape)) + (
            loop + head + self.adapter_id
        )


def make_optimizers(name: str, model: Any) -> tuple[list, dict[str, Any]]:
    """The real optimizer(s) for registry entry `name` on `model`, and the estimate's options."""
    real = REAL_OPTIMIZERS[name]
    if real.build is not None:
        opts = real.build(list(model.parameters()), real)
    else:
        from memprof._imports import import_quietly  # bitsandbytes logs at import: not in our table

        cls = getattr(import_quietly(real.module), real.cls)
        opts = [cls(model.parameters(), **real.kwargs)]
    options = dict(real.estimate_options)
    if name == "prodigy":  # p0 of a parameter that is all zeros at the first step is a 0-d tensor
        options["zero_params"] = tuple(n for n, p in model.named_parameters() if not p.detach().any())
    if real.train_mode:
        for o in opts:
            o.train()
    return opts, options


# ---------------------------------------------------------------------------------- matrices


def _shape(family: str, batch_size: int = 2, seq_len: int = 32) -> dict[str, Any]:
    return {"batch_size": VIT_BATCH if family == "vit" else batch_size, "seq_len": seq_len}


def full_matrix() -> list[Case]:
    cases: list[Case] = []
    for f in FAMILIES:  # architectures x precision x attention
        for attn in _ATTENTIONS.get(f, ("eager", "sdpa")):
            for prec in ("32-true", "bf16-mixed"):
                for ck in ("none", "full", "selective"):
                    cases.append(Case(f, "adamw", prec, attn, ck, **_shape(f)))
            for ck in ("none", "full"):
                cases.append(Case(f, "adamw", "bf16-true", attn, ck, **_shape(f)))
                cases.append(Case(f, "adamw", "16-mixed", attn, ck, **_shape(f)))
    for name in REAL_OPTIMIZERS:  # every optimizer that runs on the CPU
        for f in ("gpt2", "llama"):
            for prec in ("32-true", "bf16-mixed"):
                cases.append(Case(f, name, prec, "eager", "none", **_shape(f)))
        cases.append(Case("gpt2", name, "bf16-true", "eager", "none", **_shape("gpt2")))
    for f in ("gpt2", "llama", "opt", "bert"):  # batch and sequence
        for b, s in ((1, 16), (4, 64), (8, 128)):
            cases.append(Case(f, "adamw", "bf16-mixed", "sdpa", "none", b, s))
    for f in ("gpt2", "llama", "bert"):  # gradient accumulation
        for ga in (2, 4):
            cases.append(Case(f, "adamw", "bf16-mixed", "sdpa", "none", grad_accumulation=ga))
    cases += _lora_cases()
    cases += _loop_and_head_cases()
    return list(dict.fromkeys(cases))


# the heads each of the eight original families models besides its own (estimators/families/_heads.py)
CLASSIFIER_HEADS = {
    "gpt2": ("seq-cls", "token-cls"),
    "llama": ("seq-cls", "token-cls"),
    "mistral": ("seq-cls", "token-cls"),
    "qwen2": ("seq-cls", "token-cls"),
    "gpt_neox": ("seq-cls", "token-cls"),
    "opt": ("seq-cls",),
    "bert": ("seq-cls", "token-cls"),
}
# the newer decoders' Generic{Sequence,Token}Classification heads (estimators/families/_decoder.py); transformers
# refuses sdpa for Gemma2For{Sequence,Token}Classification, so gemma2's autocast case runs eager
DECODER_HEADS = {
    "qwen3": ("seq-cls", "token-cls"),
    "phi3": ("seq-cls", "token-cls"),
    "gemma2": ("seq-cls", "token-cls"),
    "gemma3_text": ("seq-cls",),
    "mixtral": ("seq-cls", "token-cls"),
    "qwen3_moe": ("seq-cls", "token-cls"),
}


def _loop_and_head_cases() -> list[Case]:
    """The loop's choices (`loss = model(**batch).loss`; zero_grad(set_to_none=False)) on every family,
    alone and together, in fp32 and bf16 autocast, with accumulation and checkpointing; and every
    classification head of every family (fp32, bf16 autocast, checkpointing, and its Trainer-style loop)."""
    # (keep_output, zero_grad): the Trainer's loop, torch 1.x's zero_grad, both
    loops = ((False, "set-to-none"), (True, "zeros"), (False, "zeros"))
    cases: list[Case] = []
    for f in FAMILIES:
        b = _shape(f)["batch_size"]
        for prec, attn in (("32-true", "eager"), ("bf16-mixed", "sdpa")):
            attn = attn if attn in _ATTENTIONS.get(f, (attn,)) else _ATTENTIONS[f][0]
            for keep, zero in loops:
                cases.append(Case(f, "adamw", prec, attn, "none", b, keep_output=keep, zero_grad=zero))
    for f in ("gpt2", "llama"):
        for keep, zero in loops[:2]:
            cases.append(Case(f, "adamw", "bf16-mixed", "sdpa", "full", keep_output=keep, zero_grad=zero))
    for f in ("gpt2", "llama", "bert"):
        for keep, zero in loops[:2]:
            cases.append(
                Case(f, "adamw", "bf16-mixed", "sdpa", "none", grad_accumulation=2, keep_output=keep, zero_grad=zero)
            )
    for f, heads in CLASSIFIER_HEADS.items():
        for head in heads:
            cases.append(Case(f, "adamw", "32-true", "eager", "none", head=head))
            cases.append(Case(f, "adamw", "bf16-mixed", "sdpa", "none", head=head))
            cases.append(Case(f, "adamw", "bf16-mixed", "sdpa", "full", head=head))
            cases.append(Case(f, "adamw", "bf16-mixed", "sdpa", "none", head=head, keep_output=False))
    for f, heads in DECODER_HEADS.items():
        for head in heads:
            cases.append(Case(f, "adamw", "32-true", "eager", "none", head=head))
            cases.append(Case(f, "adamw", "bf16-mixed", "eager" if f == "gemma2" else "sdpa", "none", head=head))
    return cases


def _lora_cases() -> list[Case]:
    """LoRA through peft (targets, ranks, dropout, families) and QLoRA / int8 LoRA through bitsandbytes."""
    lora = [
        Case("llama", "adamw", "32-true", "eager", lora_rank=8),
        Case("llama", "adamw", "32-true", "eager", "full", lora_rank=8),
        Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=8),
        Case("llama", "adamw", "bf16-mixed", "sdpa", "full", lora_rank=8),
        Case("llama", "adamw", "bf16-mixed", "sdpa", "full", lora_rank=8, lora_targets="all-linear"),
        Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=16, lora_targets="all-linear"),
        Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=16, lora_dropout=0.1),
        Case("llama", "adamw", "32-true", "sdpa", lora_rank=16, lora_targets="all-linear", lora_dropout=0.1),
        Case("llama", "adamw", "bf16-true", "sdpa", lora_rank=8, lora_targets="q_proj,k_proj,v_proj,o_proj"),
        Case("gpt2", "adamw", "32-true", "eager", lora_rank=8),
        Case("gpt2", "adamw", "bf16-mixed", "sdpa", lora_rank=4, lora_targets="c_attn", lora_dropout=0.05),
        Case("gpt2", "adamw", "bf16-mixed", "sdpa", lora_rank=4, lora_targets="all-linear"),
        Case("gpt2", "adamw", "bf16-mixed", "sdpa", lora_rank=4, lora_targets="all-linear", lora_dropout=0.05),
        Case("opt", "adamw", "32-true", "sdpa", lora_rank=8, lora_dropout=0.1),
        Case("bert", "adamw", "bf16-mixed", "eager", lora_rank=8),
        Case("qwen3", "adamw", "bf16-mixed", "sdpa", lora_rank=8),
        Case("phi3", "adamw", "32-true", "eager", lora_rank=8, lora_targets="qkv_proj,o_proj"),
        Case("gemma2", "adamw", "bf16-mixed", "eager", lora_rank=8, lora_dropout=0.1),
        Case("gemma3_text", "adamw", "bf16-mixed", "sdpa", "full", lora_rank=8, lora_targets="all-linear"),
        Case("t5", "adamw", "32-true", "sdpa", lora_rank=8),
    ]
    quantized = [
        Case("llama", "adamw", "32-true", "sdpa", lora_rank=8, quantize="nf4"),
        Case("llama", "adamw", "32-true", "eager", lora_rank=8, quantize="nf4"),
        Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=8, quantize="nf4", double_quant=True),
        Case("llama", "adamw", "bf16-mixed", "eager", "full", lora_rank=8, quantize="nf4", lora_dropout=0.1),
        Case(
            "llama",
            "adamw",
            "32-true",
            "sdpa",
            "full",
            lora_rank=8,
            quantize="nf4",
            lora_targets="all-linear",
            double_quant=True,
        ),
        Case(
            "llama",
            "adamw",
            "bf16-mixed",
            "sdpa",
            "full",
            lora_rank=8,
            quantize="nf4",
            lora_targets="all-linear",
            double_quant=True,
        ),
        Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=8, quantize="fp4"),
        Case("llama", "adamw", "32-true", "sdpa", lora_rank=8, quantize="int8"),
        Case("llama", "adamw", "bf16-mixed", "eager", lora_rank=8, quantize="int8"),
        Case("opt", "adamw", "bf16-mixed", "sdpa", lora_rank=8, quantize="nf4"),
        Case("qwen2", "adamw", "32-true", "sdpa", lora_rank=8, lora_targets="all-linear", quantize="int8"),
        Case("qwen3", "adamw", "bf16-mixed", "sdpa", lora_rank=8, quantize="nf4", double_quant=True),
        Case("phi3", "adamw", "bf16-mixed", "sdpa", lora_rank=8, lora_targets="all-linear", quantize="nf4"),
        Case("gemma2", "adamw", "32-true", "eager", lora_rank=8, quantize="int8"),
        Case("gemma3_text", "adamw", "bf16-mixed", "sdpa", lora_rank=8, quantize="nf4"),
    ]
    return lora + quantized


def quick_matrix() -> list[Case]:
    return [
        Case("gpt2", "adamw", "32-true", "eager", "none"),
        Case("gpt2", "adamw", "bf16-mixed", "sdpa", "full"),
        Case("llama", "adamw", "bf16-mixed", "eager", "selective"),
        Case("llama", "adamw", "bf16-true", "sdpa", "none"),
        Case("gpt2", "adam", "bf16-true", "eager", "none"),
        Case("mistral", "adamw", "32-true", "sdpa", "full"),
        Case("qwen2", "adamw", "bf16-mixed", "sdpa", "none"),
        Case("gpt_neox", "adamw", "32-true", "eager", "selective"),
        Case("opt", "adamw", "bf16-true", "eager", "full"),
        Case("bert", "adamw", "bf16-mixed", "eager", "none"),
        Case("vit", "adamw", "32-true", "sdpa", "none", VIT_BATCH),
        Case("gpt2", "sgd-momentum", "32-true", "eager", "none"),
        Case("llama", "adafactor", "bf16-mixed", "eager", "none"),
        Case("gpt2", "muon", "32-true", "eager", "none"),
        Case("gpt2", "lbfgs", "32-true", "eager", "none"),
        Case("llama", "lion", "32-true", "eager", "none"),
        Case("gpt2", "adamw8bit", "32-true", "eager", "none"),
        Case("llama", "galore", "32-true", "eager", "none"),
        Case("gpt2", "sophia", "32-true", "eager", "none"),
        Case("gpt2", "prodigy", "bf16-mixed", "eager", "none"),
        Case("llama", "dadapt-adam", "32-true", "eager", "none"),
        Case("llama", "schedulefree-adamw", "32-true", "eager", "none"),
        Case("gpt2", "adamw", "bf16-mixed", "sdpa", "none", 8, 128),
        Case("bert", "adamw", "16-mixed", "sdpa", "full"),
        Case("llama", "adamw", "bf16-mixed", "sdpa", "none", grad_accumulation=2),
        Case("qwen3", "adamw", "bf16-mixed", "sdpa", "none"),
        Case("phi3", "adamw", "32-true", "eager", "full"),
        Case("gemma2", "adamw", "bf16-mixed", "eager", "selective"),
        Case("gemma3_text", "adamw", "bf16-true", "sdpa", "none"),
        Case("mixtral", "adamw", "bf16-mixed", "sdpa", "none"),
        Case("qwen3_moe", "adamw", "32-true", "eager", "selective"),
        Case("t5", "adamw", "bf16-mixed", "sdpa", "none"),
        Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=8),
        Case("gpt2", "adamw", "32-true", "eager", lora_rank=8),
        Case("llama", "adamw", "bf16-mixed", "sdpa", lora_rank=8, quantize="nf4", double_quant=True),
        Case("llama", "adamw", "bf16-mixed", "sdpa", keep_output=False),
        Case("gpt2", "adamw", "32-true", "eager", zero_grad="zeros"),
        Case("bert", "adamw", "bf16-mixed", "sdpa", head="seq-cls"),
        Case("llama", "adamw", "32-true", "eager", head="token-cls"),
    ]


def select_cases(cases: list[Case], only: Iterable[str]) -> list[Case]:
    """The cases whose id contains any of `only` (all of them when `only` is empty).

    A blank filter is refused rather than read as "everything" (every id contains ""), and so is a
    filter that matches no case. Raises MemprofUserError naming --only, as the CLI spells it.
    """
    from memprof.estimators.errors import MemprofUserError

    terms = list(only)
    if not terms:
        return list(cases)
    if any(not t.strip() for t in terms):
        raise MemprofUserError(
            "--only needs a part of a case id, e.g. --only sophia or --only llama-adamw; "
            "an empty filter matches nothing"
        )
    chosen = [c for c in cases if any(t in c.id for t in terms)]
    if not chosen:
        raise MemprofUserError(
            f"no case id contains {' or '.join(map(repr, terms))}; ids look like "
            f"{cases[0].id!r} (family-optimizer-precision-attention-checkpointing-shape)"
        )
    return chosen


# ---------------------------------------------------------------------------------- one case


def _train(
    model: Any,
    opts: list,
    real: RealOptimizer,
    inputs: dict,
    autocast: Any,
    micro_batches: int = 1,
    keep_output: bool = True,
    set_to_none: bool = True,
) -> None:
    """One optimizer step (through a closure for LBFGS) after `micro_batches` forward + backward
    passes of `inputs`; autocast: the autocast dtype or None. keep_output=False: the loop keeps only
    the loss (`loss = model(**inputs).loss`); set_to_none=False: zero_grad zeroes the gradients."""
    from memprof.tiny_models import autocast_context

    def closure():
        for o in opts:
            o.zero_grad(set_to_none=True)
        with autocast_context(autocast is not None, autocast):
            out = model(**inputs)
        out.loss.backward(create_graph=real.create_graph)
        return out.loss

    if real.closure:
        for o in opts:
            o.step(closure)
    else:
        out = loss = None
        for _ in range(micro_batches):
            out = None  # the previous micro-batch's output dies before the next forward
            with autocast_context(autocast is not None, autocast):
                if keep_output:
                    out = model(**inputs)
                    loss = out.loss
                else:
                    loss = model(**inputs).loss
            loss.backward(create_graph=real.create_graph)
        for o in opts:
            o.step()
        del out, loss
    for o in opts:
        o.zero_grad(set_to_none=set_to_none)


def measure(case: Case) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Train `case` for real under memprof.track: (profile dict, ModelSpec, estimate options)."""
    import torch

    import memprof
    from memprof.tiny_models import batch, build, selective_checkpointing

    real = REAL_OPTIMIZERS[case.optimizer]
    model, spec = build(case.family, case.attention, head=case.head)
    dtype = torch.bfloat16 if case.precision == "bf16-true" else torch.float32
    model.to(dtype)
    if case.checkpointing == "full":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.gradient_checkpointing_enable()
    if case.lora_rank is not None:
        from memprof.tiny_models import apply_lora

        model = apply_lora(
            model,
            rank=case.lora_rank,
            targets=case.lora_targets,
            dropout=case.lora_dropout,
            quantize=case.quantize,
            double_quant=case.double_quant,
            compute_dtype=torch.bfloat16 if case.precision == "bf16-mixed" else torch.float32,
            checkpointing=case.checkpointing == "full",
        )
    opts, options = make_optimizers(case.optimizer, model)
    autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(case.precision)
    selective = selective_checkpointing(model) if case.checkpointing == "selective" else contextlib.nullcontext()
    with selective:
        loop = dict(keep_output=case.keep_output, set_to_none=case.zero_grad == "set-to-none")
        for _step in range(real.warm_steps):
            inputs = batch(case.family, case.batch_size, case.seq_len, dtype=dtype, head=case.head)
            _train(model, opts, real, inputs, autocast, **loop)
        with memprof.track(model, opts, events=False) as run:
            inputs = batch(case.family, case.batch_size, case.seq_len, dtype=dtype, head=case.head)
            _train(model, opts, real, inputs, autocast, case.grad_accumulation, **loop)
            del inputs
    return run.to_dict(), spec, options


def expected_observation(case: Case, spec: Any, options: dict[str, Any]) -> Any:
    """The estimate's inputs of `case`, as the matrix knows them (not inferred from the profile)."""
    from memprof.comparison import Observed

    lora: dict[str, Any] = {}
    if case.lora_rank is not None:  # the adapted model: its parameters and its replay
        from memprof.comparison.observed import target_names
        from memprof.estimators.adapters import adapt, linear_modules
        from memprof.estimators.precision import get_precision

        base = spec
        spec = adapt(
            spec,
            get_precision(case.precision),
            lora_rank=case.lora_rank,
            lora_targets=case.lora_targets,
            lora_dropout=case.lora_dropout,
            quantize=case.quantize,
            double_quant=case.double_quant,
        )
        assert spec.adapter is not None
        lora = dict(
            lora_rank=case.lora_rank,
            lora_targets=target_names(list(spec.adapter.targets), [m.name for m in linear_modules(base)]),
            lora_dropout=float(case.lora_dropout),
            quantize=case.quantize,
            double_quant=bool(case.double_quant) and case.quantize is not None,
        )
    return Observed(
        model=spec,
        params=tuple(spec.parameter_tensors()),
        parameters=spec.num_parameters,
        optimizer=case.optimizer,
        optimizer_options=dict(options),
        precision=case.precision,
        batch_size=case.batch_size,
        seq_len=None if case.family == "vit" else case.seq_len,
        attention=case.attention,
        checkpointing=case.checkpointing,
        grad_accumulation=case.grad_accumulation,
        device="cpu",
        keep_output=case.keep_output,
        zero_grad=case.zero_grad,
        **lora,
    )


_CUDA_ONLY = ("cuda_context", "fragmentation", "reserved", "device_total")
_INFERRED_KEYS = (
    "optimizer",
    "precision",
    "batch_size",
    "seq_len",
    "attention",
    "checkpointing",
    "grad_accumulation",
    "device",
    "keep_output",  # present only when not the default (Observed.estimate_kwargs)
    "zero_grad",
    "lora_rank",  # the LoRA knobs: present only for a LoRA run (settings.adapter)
    "lora_targets",
    "lora_dropout",
    "quantize",
    "double_quant",
)


def run_case(case: Case) -> dict[str, Any]:
    """Measure, estimate and compare one case; never raises (an error is recorded in the result)."""
    from memprof.comparison import comparison_frame, frame_records, observe, predict

    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "id": case.id,
        **asdict(case),
        "status": "error",
        "error": None,
        "notes": [],
        "rows": {},
        "predicted_phase": None,
        "measured_phase": None,
    }
    try:
        prof, spec, options = measure(case)
        result["estimate_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        obs = expected_observation(case, spec, options)
        est = predict(obs)
        frame = comparison_frame(est, prof, missing_prediction="; ".join(obs.missing) or "not modelled")
        for row in frame_records(frame):
            if row["scope"] == "peak" and row["category"] in _CUDA_ONLY:
                continue  # a CPU run has none of these
            result["rows"][f"{row['scope']}.{row['category']}"] = {
                k: row[k] for k in ("predicted", "measured", "error_bytes", "error_pct")
            }
        result["notes"] = list(obs.missing)
        result["predicted_phase"] = frame.attrs.get("predicted_phase")
        result["measured_phase"] = frame.attrs.get("measured_phase")
        inferred = observe(prof).estimate_kwargs()
        expected = obs.estimate_kwargs()
        if case.checkpointing == "selective":  # a monkeypatched attention cannot be seen
            expected["checkpointing"] = "none"
        result["inferred_mismatch"] = {
            k: [inferred.get(k), expected.get(k)] for k in _INFERRED_KEYS if inferred.get(k) != expected.get(k)
        }
        result["status"] = judge(result["rows"])
    except Exception as exc:  # a case that cannot run is recorded, the matrix goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result["error"] = (
            f"{type(exc).__name__}: {str(exc)[:300]} (at {os.path.basename(where.filename)}:{where.lineno})"
        )
    result["duration_s"] = round(time.perf_counter() - t0, 3)
    return result


def judge(rows: dict[str, dict[str, Any]]) -> str:
    """ "pass": model states to the byte and the peak within tolerance; "fail": either is off;
    "no peak": model states exact but the peak is not predicted."""
    for cat in ("parameters", "gradients", "optimizer_states"):
        r = rows.get(f"model_states.{cat}") or {}
        if r.get("predicted") is None or r.get("predicted") != r.get("measured"):
            return "fail"
    peak = rows.get("peak.allocated") or {}
    if peak.get("predicted") is None:
        return "no peak"
    pct = peak.get("error_pct")
    return "pass" if pct is not None and abs(pct) <= PEAK_TOLERANCE_PCT else "fail"


# ---------------------------------------------------------------------------------- the run


def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "memprof": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    peaks = [
        abs(r["rows"]["peak.allocated"]["error_pct"])
        for r in results
        if (r["rows"].get("peak.allocated") or {}).get("error_pct") is not None
    ]
    peaks.sort()
    statuses = [r["status"] for r in results]
    return {
        "cases": len(results),
        "pass": statuses.count("pass"),
        "fail": statuses.count("fail"),
        "no_peak": statuses.count("no peak"),
        "error": statuses.count("error"),
        "model_states_exact": sum(
            1 for r in results if r["status"] in ("pass", "no peak") or (r["status"] == "fail" and _states_exact(r))
        ),
        "peak_predicted": len(peaks),
        "peak_within_tolerance": sum(1 for p in peaks if p <= PEAK_TOLERANCE_PCT),
        "peak_abs_error_pct_median": round(peaks[len(peaks) // 2], 4) if peaks else None,
        "peak_abs_error_pct_max": round(peaks[-1], 4) if peaks else None,
    }


def _states_exact(r: dict[str, Any]) -> bool:
    return all(
        (r["rows"].get(f"model_states.{c}") or {}).get("predicted") is not None
        and r["rows"][f"model_states.{c}"]["predicted"] == r["rows"][f"model_states.{c}"]["measured"]
        for c in ("parameters", "gradients", "optimizer_states")
    )


def run_cases(
    cases: Iterable[Any], run: Callable[[Any], dict[str, Any]], progress: Callable[[dict[str, Any]], None] | None
) -> tuple[list[dict[str, Any]], float]:
    """Run every case with warnings silenced (the record says what failed); the results and seconds taken.
    Shared by the matrices (this one, memprof.validate_trace, memprof.validate_workloads)."""
    t0 = time.perf_counter()
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in cases:
            results.append(run(case))
            if progress is not None:
                progress(results[-1])
    return results, round(time.perf_counter() - t0, 1)


def record_header(schema: str, subset: str, tolerance: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """The fields every validation record starts with: what ran, when, where, against which tolerance."""
    return {
        "schema": schema,
        "subset": subset,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "environment": environment(),
        "tolerance": tolerance,
        "duration_s": duration_s,
    }


def run_matrix(
    cases: Iterable[Case], subset: str, progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every case; the record `memprof validate --out` writes and scripts/render_accuracy.py reads."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # the quantized cases' reload prints progress bars
    torch.manual_seed(0)
    results, seconds = run_cases(cases, run_case, progress)
    tolerance = {"model_states": "exact (bytes)", "peak_allocated_pct": PEAK_TOLERANCE_PCT}
    return {
        **record_header(SCHEMA, subset, tolerance, seconds),
        "not_run": dict(NOT_RUN),
        "summary": summarize(results),
        "cases": results,
    }


def read_record(path: str | os.PathLike[str], schema: str, kind: str, cases_key: str = "cases") -> dict[str, Any]:
    """A recorded validation run of `schema`, read as every memprof input is (estimators.files: a regular
    file, size and JSON-depth limits); anything else raises MemprofUserError naming what it is.
    Shared by the matrices' `load_record` (this one, trace, workloads, distributed)."""
    from memprof.estimators.errors import MemprofUserError
    from memprof.estimators.files import loads_json, read_input

    try:
        data = loads_json(read_input(path))
    except FileNotFoundError:
        raise MemprofUserError(f"validation record {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise MemprofUserError(f"{str(path)!r} is not a validation record (not readable JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("schema") != schema or not isinstance(data.get(cases_key), list):
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise MemprofUserError(f"{str(path)!r} is not a {kind} record: schema is {found!r}, expected {schema!r}")
    return data


def load_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recorded validation run; anything else raises MemprofUserError."""
    return read_record(path, SCHEMA, "memprof validation")
