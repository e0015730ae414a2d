"""memprof against published GPU training-memory measurements (`profiles/published/`), torch-free.

The rows are what documentation pages, pull requests and issue threads measured on real GPUs
(nvidia-smi / NVML, `torch.cuda.max_memory_allocated` / `max_memory_reserved`, CUDA OOM), one JSON
file per source, fields documented in `profiles/published/README.md`. A row records only what its
source states (null otherwise); everything this module adds to make a row estimable is written down
per row, as a *proxy* (memprof estimates something close to, not the same as, what was run) or an
*assumption* (a detail the source leaves to a framework default). Nothing here is fitted to the rows:
the estimator runs unchanged and the errors are reported as they come out.

Parameter-efficient rows: LoRA is memprof's adapter knob (lora_rank, lora_targets, lora_dropout; quantize
and double_quant for bitsandbytes base weights). A LoRA row takes its rank, targets and dropout from
its training script's defaults, read in that script at the version the source ran (`_LORA_RECIPES`),
and its stated trainable-parameter count must equal what memprof's adapters hold. Other adapter
methods, LoRA under sharding (memprof refuses LoRA with ZeRO / FSDP) and quantized paths that are not
transformers' bitsandbytes loading are not expressible, each with its reason.

    score = score_published()             # every row under profiles/published/
    score.to_dict()["summary"]            # per source and per metric: median / max abs error, OOM agreement

Metrics and what each is compared with (the estimate's `peak`):
- `nvml_device_used`, `nvidia_smi_process`: `device_total` (CUDA context + reserved);
- `max_memory_allocated`, `peak_active`: `allocated` (active bytes also count blocks freed on one
  stream and still in use on another: none in a single-stream step);
- `max_memory_reserved`: `reserved`;
- `oom`: the GPU verdict (`gpu.fits is False` agrees with the OOM);
- `gpu_memory_unspecified`: not compared (the source does not say what it measured).
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprof.estimators.errors import MemprofError, RecordError
from memprof.estimators.gpus import get_gpu

__all__ = [
    "METRICS",
    "PublishedRow",
    "PublishedScore",
    "RowResult",
    "express",
    "load_published",
    "published_files",
    "score_published",
]

SCHEMA = "memprof.published/1"

# metric -> the estimate's peak field it is compared with (None: a verdict or nothing)
METRICS: Mapping[str, str | None] = {
    "nvml_device_used": "device_total",
    "nvidia_smi_process": "device_total",
    "max_memory_allocated": "allocated",
    "peak_active": "allocated",
    "max_memory_reserved": "reserved",
    "oom": None,
    "gpu_memory_unspecified": None,
}
_UNITS: Mapping[str, float] = {
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
}
_ROW_KEYS = frozenset(
    {
        "id", "quote", "source_url", "gpu", "gpu_count", "driver", "driver_cuda", "cuda", "torch", "framework",
        "model", "task", "optimizer", "precision", "batch_size", "batch_size_as_stated", "seq_len", "grad_accumulation",
        "checkpointing", "attention", "zero_grad", "parallel", "peft", "quantization", "loop", "metric",
        "metric_as_stated", "value", "unit", "unit_as_printed", "percent_of", "at_oom", "notes",
    }
)  # fmt: skip
_REQUIRED = ("id", "quote", "model", "metric", "value", "unit")
_SOURCE_KEYS = frozenset({"id", "title", "url", "urls", "kind", "date", "author", "where", "context"})


# ---------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class PublishedRow:
    """One published measurement: its source's `common` fields merged with the row's own."""

    id: str
    source: str  # the source file's `source.id`
    source_url: str  # where this row's figure is (the row's own source_url, else the source's)
    source_page: str  # the source's url
    source_date: str | None
    fields: Mapping[str, Any]  # every row key (null where the source states nothing)
    measured_bytes: int | None  # the value in bytes (None for OOM and unspecified metrics)

    @property
    def metric(self) -> str:
        return str(self.fields["metric"])

    def get(self, key: str) -> Any:
        return self.fields.get(key)


def published_files(directory: str | Path | None = None) -> list[Path]:
    """The row files of `directory` (default: profiles/published/ as shipped), sorted."""
    if directory is None:
        from memprof.profiles import data_path

        directory = data_path("published")
    return sorted(Path(directory).glob("*.json"))


def _bytes(row: Mapping[str, Any], where: str) -> int | None:
    value, unit = row["value"], row["unit"]
    if row["metric"] == "oom":
        if value is not None:
            raise RecordError(f"{where}: an 'oom' row has value null, got {value!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise RecordError(f"{where}: value must be a positive number, got {value!r}")
    if unit == "percent":
        of = row.get("percent_of")
        of_value = of.get("value") if isinstance(of, Mapping) else None
        if not isinstance(of, Mapping) or of.get("unit") not in _UNITS or not isinstance(of_value, (int, float)):
            raise RecordError(f"{where}: a 'percent' value needs percent_of {{value, unit}}")
        return round(value / 100 * float(of_value) * _UNITS[str(of["unit"])])
    if unit not in _UNITS:
        raise RecordError(f"{where}: unit {unit!r} is not one of {', '.join([*_UNITS, 'percent'])}")
    return round(value * _UNITS[unit])


def _rows_of(path: Path) -> list[PublishedRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or set(data) != {"source", "common", "rows"}:
        raise RecordError(f"{path}: expected an object with exactly 'source', 'common' and 'rows'")
    source, common, rows = data["source"], data["common"], data["rows"]
    if not isinstance(source, dict) or not source.get("id") or not source.get("url"):
        raise RecordError(f"{path}: source needs at least 'id' and 'url'")
    if set(source) - _SOURCE_KEYS:
        raise RecordError(f"{path}: unknown source field(s) {sorted(set(source) - _SOURCE_KEYS)}")
    if not isinstance(common, dict) or not isinstance(rows, list) or not rows:
        raise RecordError(f"{path}: 'common' must be an object and 'rows' a non-empty list")
    out = []
    for i, raw in enumerate(rows):
        where = f"{path.name}: row {i}"
        if not isinstance(raw, dict):
            raise RecordError(f"{where}: not an object")
        row = {**common, **raw}
        where = f"{path.name}: row {i} ({row.get('id', '?')})"
        unknown = set(row) - _ROW_KEYS
        if unknown:
            raise RecordError(f"{where}: unknown field(s) {sorted(unknown)}")
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise RecordError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(row["id"], str) or not row["id"] or not isinstance(row["quote"], str) or not row["quote"]:
            raise RecordError(f"{where}: id and quote must be non-empty strings")
        if row["metric"] not in METRICS:
            raise RecordError(f"{where}: metric {row['metric']!r} is not one of {', '.join(METRICS)}")
        for key in ("gpu_count", "batch_size", "seq_len", "grad_accumulation"):
            v = row.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise RecordError(f"{where}: {key} must be a positive integer or null, got {v!r}")
        measured = _bytes(row, where)
        full = {k: row.get(k) for k in sorted(_ROW_KEYS)}
        out.append(
            PublishedRow(
                id=row["id"],
                source=source["id"],
                source_url=row.get("source_url") or source["url"],
                source_page=source["url"],
                source_date=source.get("date"),
                fields=full,
                measured_bytes=measured,
            )
        )
    return out


def load_published(paths: str | Path | Iterable[str | Path] | None = None) -> tuple[PublishedRow, ...]:
    """Read and check row files: a directory, one file, several, or None (the shipped rows).

    A malformed file raises a RecordError whose one-line message names the file, the row and the field.
    """
    if paths is None or (isinstance(paths, (str, Path)) and Path(paths).is_dir()):
        files = published_files(None if paths is None else Path(paths))
    elif isinstance(paths, (str, Path)):
        files = [Path(paths)]
    else:
        files = [Path(p) for p in paths]
    rows = [r for f in files for r in _rows_of(f)]
    seen: set[str] = set()
    for r in rows:
        if r.id in seen:
            raise RecordError(f"published rows: duplicate id {r.id!r}")
        seen.add(r.id)
    return tuple(rows)


# ---------------------------------------------------------------------------- expressing a row


@dataclass(frozen=True)
class Expression:
    """How memprof estimates a row: `memprof.estimate` arguments plus what was substituted or assumed."""

    model: str
    knobs: Mapping[str, Any]
    proxies: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()


class NotExpressible(Exception):
    """A row memprof cannot estimate: `category` (a short, shared label) and the detail."""

    def __init__(self, category: str, detail: str | None = None) -> None:
        super().__init__(category if detail is None else f"{category}: {detail}")
        self.category = category


# Models as the rows name them -> (memprof preset, proxy note or None). A model absent here is not
# expressible. Proxies say what differs from what was trained.
_MODELS: Mapping[str, tuple[str, str | None]] = {
    "bert-large-uncased": ("bert-large-uncased", None),
    "gpt2": ("gpt2-124m", None),
    "llama-2-7b-hf": ("llama-2-7b", None),
    "llama 2 7 b": ("llama-2-7b", None),
    "llama 2 13 b": ("llama-2-13b", None),
    "llama-7b": (
        "llama-2-7b",
        "model: LLaMA-1 7B estimated as llama-2-7b (same tensor shapes: vocab 32000, hidden 4096, "
        "32 layers, intermediate 11008; only max_position_embeddings 2048 vs 4096 and rms_norm_eps differ)",
    ),
}
# (preset, task as the row states it) -> the head memprof estimates (estimators/heads.py)
_HEADS: Mapping[tuple[str, str], str] = {("bert-large-uncased", "sequence-classification"): "seq-cls"}
_PRECISIONS: Mapping[str, tuple[str, str | None]] = {
    "fp16=true (mixed precision)": ("16-mixed", None),
    "bf16-true": ("bf16-true", None),
    "--bf16 true": (
        "bf16-mixed",
        "precision: Trainer --bf16 with FSDP keeps fp32 parameters and runs bf16 compute (FSDP mixed precision "
        "rather than autocast): estimated as bf16-mixed",
    ),
    "--pure_bf16": ("bf16-true", None),
}
_OPTIMIZERS: Mapping[str, tuple[str, str | None]] = {
    'optim="adafactor" (transformers adafactor)': (
        "adafactor",
        "optimizer: transformers.optimization.Adafactor estimated as torch.optim.Adafactor (both keep "
        "factored row/column second moments; transformers' keeps no first moment by default either)",
    ),
    "bitsandbytes.optim.adam8bit": (
        "adamw8bit",
        "optimizer: bitsandbytes Adam8bit estimated as AdamW8bit (same 8-bit state tensors; "
        "only the weight-decay rule differs)",
    ),
}
_RUN_CLM_DEFAULTS = "run_clm.py (default arguments)"  # a framework value: the example script, no size arguments
_CHECKPOINTING: Mapping[str, str] = {"gradient_checkpointing=true": "full", "ac": "full", "sac": "selective"}
_TRANSFORMERS_SDPA_DATE = "2023-12-08"  # transformers v4.36.0: SDPA became the default attention
# before 2023, TrainingArguments.optim defaulted to "adamw_hf" (transformers.optimization.AdamW)
_TRANSFORMERS_TORCH_ADAMW_DATE = "2023-01-01"
# torch 2.0 (released 2023-03-15) made zero_grad(set_to_none=True) the default; the Trainer calls
# model.zero_grad(), so before it the gradients stayed allocated (zeroed) through the next forward
_TORCH_SET_TO_NONE_DATE = "2023-03-15"
_ZERO_GRAD: Mapping[str, str] = {"set_to_none": "set-to-none", "set-to-none": "set-to-none", "zeros": "zeros"}


def _key(value: Any) -> str:
    return str(value).strip().lower()


# ---- parameter-efficient finetuning. memprof's adapter knob is LoRA (memprof.estimators.adapters: peft's
# LoRA, bitsandbytes' quantized base weights as transformers loads them). A row's LoRA settings are its
# training script's defaults, read in the script the row names at the version it ran.
@dataclass(frozen=True)
class _LoraRecipe:
    """A training script's LoRA defaults and what else it fixes that the rows leave unstated."""

    script: str  # the script and the version whose code was read
    rank: int
    alpha: int  # only sets the LoRA scaling (a Python float): no tensor's size (adapters/lora.py)
    targets: str  # memprof's lora_targets
    dropout: float
    read: str  # the defaults as the script spells them
    proxy: str | None = None  # what differs from the Hugging Face model + peft memprof estimates
    multi_gpu: str | None = None  # how the script runs on several GPUs (why that is not expressible)
    quantized: str | None = None  # why its quantized path is not memprof's --quantize (None: not read)
    optimizer: tuple[str, str] | None = None  # (memprof optimizer, the script's line) when the row states none
    global_batch: tuple[int, str] | None = None  # (samples per optimizer step, where stated): accumulation
    seq_len: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # preset -> (tokens, where stated)
    keep_output: tuple[bool, str] | None = None
    checkpointing: tuple[str, str] | None = None  # (memprof checkpointing, the script's line) on one GPU


_LORA_RECIPES: Mapping[str, _LoraRecipe] = {
    # llama-recipes configs/peft.py, lora_config, unchanged from the repository's first commit (2023-07-17)
    # to PR #41 (July 2023); llama_finetuning.py --use_peft --peft_method lora builds LoraConfig from it
    "llama-recipes": _LoraRecipe(
        script="llama-recipes configs/peft.py lora_config (first commit 2023-07-17, as PR #41 ran it)",
        rank=8,
        alpha=32,
        targets="q_proj,v_proj",
        dropout=0.05,
        read="r=8, lora_alpha=32, target_modules=['q_proj', 'v_proj'], lora_dropout=0.05",
        multi_gpu="--enable_fsdp wraps the peft model in FSDP",
    ),
    "litgpt": _LoraRecipe(
        script="litgpt finetune/lora.py at commit 8641822 (the version the tables' header names)",
        rank=8,
        alpha=16,
        targets="q_proj,v_proj",
        dropout=0.05,
        read="lora_r = 8, lora_alpha = 16, lora_dropout = 0.05, lora_query = True, lora_value = True "
        "(lora_key, lora_projection, lora_mlp, lora_head False)",
        proxy=(
            "model: litgpt's own GPT (lit_gpt/model.py, lit_gpt/lora.py at commit 8641822) estimated as the "
            "Hugging Face model of the same shapes with peft's LoRA on q_proj and v_proj: litgpt fuses q, k and v "
            "into one linear (LoRAQKVLinear: one dropout of the input, lora_A (2r x hidden), a grouped conv1d "
            "lora_B and a zero_pad to the fused width) where peft wraps q_proj and v_proj apart (a float32 copy "
            "and a dropout of the input each); litgpt's adapters are bf16 (Fabric's bf16-true converts the whole "
            "module) where peft's are float32; litgpt runs lm_head in chunks of 128 tokens into a chunked "
            "cross-entropy (lm_head_chunk_size=128, chunked_cross_entropy) where transformers computes one logits "
            "tensor and its loss; both attend with F.scaled_dot_product_attention (causal, no mask)"
        ),
        multi_gpu=(
            "with devices > 1 finetune/lora.py runs FSDPStrategy (auto_wrap_policy and "
            "activation_checkpointing_policy {Block}, limit_all_gathers=True)"
        ),
        quantized=(
            "finetune/lora.py passes --quantize bnb.* to Lightning Fabric's BitsandbytesPrecision(mode, bf16): "
            "its module_init_context makes every torch.nn.Linear, lm_head included, a bitsandbytes Linear4bit and "
            "keeps the other weights in bf16 (bf16-true, no autocast), and the optimizer becomes "
            "bnb.optim.PagedAdamW (states in paged, not caching-allocator, memory); memprof's --quantize models "
            "transformers' BitsAndBytesConfig + peft's prepare_model_for_kbit_training (output layer not "
            "quantized, the other weights float32: no bf16-true) and has no paged optimizer"
        ),
        optimizer=(
            "adamw",
            "finetune/lora.py without quantization: optimizer = torch.optim.AdamW(trainable_params, "
            "lr=learning_rate, weight_decay=weight_decay)",
        ),
        global_batch=(
            128,
            "the tables: 'a minibatch size of 128'; finetune/lora.py: gradient_accumulation_iters = "
            "batch_size // micro_batch_size",
        ),
        seq_len={
            # the tables' header: "the number of tokens in the longest training example ... Llama 2: 1304 tokens";
            # finetune/lora.py puts that example in the first batch (get_batch(..., longest_seq_ix if iter_num
            # == 0)) and pads each batch to its longest sample
            "llama-2-7b": (1304, "the longest Alpaca example in Llama 2 tokens, 1304 as the tables state"),
            "llama-2-13b": (1304, "the longest Alpaca example in Llama 2 tokens, 1304 as the tables state"),
        },
        keep_output=(
            True,
            "finetune/lora.py keeps `logits = model(input_ids, lm_head_chunk_size=128)` through fabric.backward",
        ),
        checkpointing=(
            "none",
            "finetune/lora.py: devices = 1 runs strategy 'auto'; only its FSDPStrategy checkpoints activations",
        ),
    ),
}


def _peft_kind(row: PublishedRow) -> str | None:
    """The row's adapter method: "lora", None without one; NotExpressible for any other method."""
    stated = row.get("peft")
    if stated is None:
        return None
    kind = re.split(r"[(;]", str(stated))[0].strip().lower()
    if kind != "lora":
        raise NotExpressible(
            "parameter-efficient finetuning: no memprof knob", f"{stated!r} (memprof's adapter knob is LoRA)"
        )
    return kind


def _lora_recipe(row: PublishedRow) -> _LoraRecipe:
    framework = _key(row.get("framework") or "")
    for name, recipe in _LORA_RECIPES.items():
        if name in framework:
            return recipe
    raise NotExpressible("LoRA settings not stated", f"{row.get('peft')!r} with framework {row.get('framework')!r}")


def _lora_count_note(row: PublishedRow, preset: str, precision: str, recipe: _LoraRecipe) -> str:
    """The LoRA note, with the trainable parameters memprof's adapters hold; NotExpressible when the
    row states a different count."""
    from memprof.estimators.adapters import adapt
    from memprof.estimators.models import load_model
    from memprof.estimators.precision import get_precision

    spec = adapt(
        load_model(preset),
        get_precision(precision),
        lora_rank=recipe.rank,
        lora_targets=recipe.targets,
        lora_dropout=recipe.dropout,
    )
    adapter = spec.adapter
    assert adapter is not None
    trainable = [t for t in spec.parameter_tensors() if t.trainable]
    count = sum(t.numel for t in trainable)
    shapes: dict[tuple[int, int], int] = {}
    for a, b in zip(trainable[::2], trainable[1::2], strict=True):  # lora_A (r, in), lora_B (out, r)
        shapes[(a.shape[1], b.shape[0])] = shapes.get((a.shape[1], b.shape[0]), 0) + 1
    formula = " + ".join(f"{n} modules x ({i}x{recipe.rank} + {recipe.rank}x{o})" for (i, o), n in shapes.items())
    stated = re.search(r"([\d,]+) trainable parameters", str(row.get("peft")))
    if stated is not None and int(stated.group(1).replace(",", "")) != count:
        raise NotExpressible(
            "LoRA not matched",
            f"the source states {stated.group(1)} trainable parameters; memprof's r={recipe.rank} LoRA on "
            f"{recipe.targets} of {preset} holds {count:,} ({formula})",
        )
    check = "as the source states" if stated is not None else "the source states no count"
    return (
        f"lora: r={recipe.rank} on {recipe.targets}, dropout {recipe.dropout:g} ({recipe.script}: {recipe.read}; "
        f"lora_alpha {recipe.alpha} only sets the scaling): {count:,} trainable parameters, {check} "
        f"({formula})"
    )


def _frameworks_trainer(row: PublishedRow) -> bool:
    return "transformers trainer" in _key(row.get("framework") or "")


def _model(row: PublishedRow, proxies: list[str]) -> str:
    stated = row.get("model")
    if stated is None:
        raise NotExpressible("model not stated")
    entry = _MODELS.get(_key(stated))
    if entry is None:
        raise NotExpressible("model not a memprof preset or family", repr(stated))
    preset, note = entry
    if note:
        proxies.append(note)
    return preset


def _torch_before_2(row: PublishedRow, date: str | None) -> str | None:
    """Why the row ran torch 1.x ("torch 1.13" / "source dated 2022-01-11"), or None when it did not or
    cannot be told."""
    stated = row.get("torch")
    if stated is not None:
        major = re.match(r"\s*(\d+)\.", str(stated))
        return f"torch {stated}" if major and int(major.group(1)) < 2 else None
    if date is not None and date < _TORCH_SET_TO_NONE_DATE:
        return f"source dated {date}"
    return None


def _head(row: PublishedRow, preset: str) -> str | None:
    """The head the row's task names, when it is not the preset's own (None: the preset's)."""
    task = _key(row.get("task") or "").split(" ")[0]
    return _HEADS.get((preset, task))


def _gpu(row: PublishedRow) -> str:
    stated = row.get("gpu")
    if stated is None:
        raise NotExpressible("GPU not stated")
    text = re.sub(r"\(.*?\)", "", str(stated)).strip()
    candidates = [text, str(stated)]
    if "(" in str(stated):  # "Tesla V100-SXM2 (16GB)" -> "v100-16gb"
        size = re.search(r"(\d+)\s*GB", str(stated))
        if size:
            candidates.append(f"{text.split()[-1].split('-')[0]}-{size.group(1)}gb")
    for name in candidates:
        try:
            return get_gpu(name).name
        except MemprofError:
            continue
    raise NotExpressible("GPU not a memprof preset", repr(stated))


def _precision(row: PublishedRow, assumptions: list[str], proxies: list[str]) -> str:
    stated = row.get("precision")
    if stated is None:
        if _frameworks_trainer(row):
            assumptions.append("precision: 32-true (Trainer default: no fp16/bf16 flag given)")
            return "32-true"
        raise NotExpressible("precision not stated")
    entry = _PRECISIONS.get(_key(stated))
    if entry is None:
        raise NotExpressible("precision not mapped", repr(stated))
    if entry[1]:
        proxies.append(entry[1])
    return entry[0]


def _optimizer(row: PublishedRow, assumptions: list[str], proxies: list[str]) -> str:
    stated = row.get("optimizer")
    if stated is None:
        if _frameworks_trainer(row):
            assumptions.append("optimizer: adamw (Trainer's default optimizer is AdamW)")
            return "adamw"
        raise NotExpressible("optimizer not stated")
    entry = _OPTIMIZERS.get(_key(stated))
    if entry is None:
        raise NotExpressible("optimizer not mapped", repr(stated))
    if entry[1]:
        proxies.append(entry[1])
    return entry[0]


def _parallel(row: PublishedRow, proxies: list[str]) -> dict[str, Any]:
    stated, count = row.get("parallel"), row.get("gpu_count") or 1
    if stated is None:
        if count != 1:
            raise NotExpressible("parallel strategy not stated", f"{count} GPUs")
        return {}
    if "full_shard" in _key(stated) and "fsdp" in _key(stated):
        proxies.append(
            "parallel: the Trainer's FSDP (FSDP1, one FlatParameter per wrapped unit) estimated as FSDP2 full-shard "
            "(the same shards of parameters, gradients and optimizer states per GPU; the gathered units differ)"
        )
        return {"gpus": count, "zero": 3, "engine": "fsdp"}
    raise NotExpressible("parallel setup not mapped", repr(stated))


def express(row: PublishedRow) -> Expression:
    """The `memprof.estimate` call for `row`, or NotExpressible with the reason."""
    if row.metric == "gpu_memory_unspecified":
        raise NotExpressible("metric not stated by the source")
    peft = _peft_kind(row)
    if peft is None and row.get("quantization") is not None:
        raise NotExpressible("quantized weights without LoRA", str(row.get("quantization")))
    proxies: list[str] = []
    assumptions: list[str] = []
    model = _model(row, proxies)
    recipe = None if peft is None else _lora_recipe(row)
    if recipe is not None:
        count = row.get("gpu_count") or 1
        if count > 1 or row.get("parallel") is not None:
            how = f"; {recipe.multi_gpu}" if recipe.multi_gpu else ""
            raise NotExpressible(
                "LoRA with sharding not modelled",
                f"{row.get('parallel')!r} on {count} GPUs{how}: memprof refuses LoRA with ZeRO / FSDP (the LoRA: "
                f"{recipe.script}: {recipe.read})",
            )
        if row.get("quantization") is not None:
            if recipe.quantized is None:
                raise NotExpressible("quantization not mapped", repr(row.get("quantization")))
            raise NotExpressible("quantization setup not modelled", f"{row.get('quantization')!r}: {recipe.quantized}")
        if recipe.proxy:
            proxies.append(recipe.proxy)
    knobs: dict[str, Any] = {"gpu": _gpu(row), "precision": _precision(row, assumptions, proxies)}
    head = _head(row, model)
    if head is not None:
        knobs["head"] = head
    if recipe is not None and row.get("optimizer") is None and recipe.optimizer is not None:
        assumptions.append(f"optimizer: {recipe.optimizer[0]} ({recipe.optimizer[1]})")
        knobs["optimizer"] = recipe.optimizer[0]
    else:
        knobs["optimizer"] = _optimizer(row, assumptions, proxies)
    knobs.update(_parallel(row, proxies))
    if recipe is not None:
        assumptions.append(_lora_count_note(row, model, knobs["precision"], recipe))
        knobs.update(lora_rank=recipe.rank, lora_targets=recipe.targets, lora_dropout=recipe.dropout)
    example_defaults = _RUN_CLM_DEFAULTS in _key(row.get("framework") or "")
    batch = row.get("batch_size")
    if batch is None and example_defaults:
        assumptions.append("batch_size: 8 (TrainingArguments.per_device_train_batch_size's default)")
        batch = 8
    if batch is None:
        raise NotExpressible("batch size not stated")
    knobs["batch_size"] = batch
    seq = row.get("seq_len")
    if seq is None and recipe is not None and model in recipe.seq_len:
        seq, where = recipe.seq_len[model]
        assumptions.append(
            f"seq_len: {seq} ({where}; the script puts the longest example in the first batch and pads every "
            "batch to its longest sample)"
        )
    if seq is None and example_defaults:
        assumptions.append(
            "seq_len: 1024 (run_clm.py's default block_size: the tokenizer's model_max_length, 1024 for GPT-2, "
            "capped at 1024)"
        )
        seq = 1024
    if seq is None:
        if row.metric != "oom":
            raise NotExpressible("sequence length not stated")
        assumptions.append(
            "seq_len: not stated; scored at seq_len=1, a lower bound (a does-not-fit verdict there holds for "
            "any length; a fits verdict is inconclusive)"
        )
        seq = 1
    knobs["seq_len"] = seq
    ga = row.get("grad_accumulation")
    if ga is None and recipe is not None and recipe.global_batch is not None:
        samples, where = recipe.global_batch
        ga = max(samples // batch, 1)
        assumptions.append(f"grad_accumulation: {ga} ({samples} // {batch}: {where})")
    if ga is None:
        assumptions.append("grad_accumulation: 1 (not stated)")
        ga = 1
    knobs["grad_accumulation"] = ga
    ckpt = row.get("checkpointing")
    if ckpt is not None and _key(ckpt) not in _CHECKPOINTING:
        raise NotExpressible("checkpointing not mapped", repr(ckpt))
    knobs["checkpointing"] = "none" if ckpt is None else _CHECKPOINTING[_key(ckpt)]
    if ckpt is None and recipe is not None and recipe.checkpointing is not None:
        knobs["checkpointing"] = recipe.checkpointing[0]
        assumptions.append(f"checkpointing: {recipe.checkpointing[0]} ({recipe.checkpointing[1]})")
    attention = row.get("attention")
    if attention is not None:
        raise NotExpressible("attention not mapped", repr(attention))
    date = row.source_date
    trainer_own = knobs["optimizer"] in ("adamw", "adafactor")
    if _frameworks_trainer(row) and trainer_own and date is not None and date < _TRANSFORMERS_TORCH_ADAMW_DATE:
        assumptions.append(
            f"optimizer_impl: single_tensor (source dated {date}: the Trainer's optimizers were transformers' own "
            "AdamW (optim='adamw_hf', the default once the option existed) and Adafactor, loops over parameters "
            "without foreach buffers)"
        )
        knobs["optimizer_impl"] = "single_tensor"
    if _frameworks_trainer(row) and date is not None and date < _TRANSFORMERS_SDPA_DATE:
        assumptions.append(f"attention: eager (source dated {date}, before transformers v4.36 made SDPA the default)")
        knobs["attention"] = "eager"
    if _frameworks_trainer(row):
        assumptions.append(
            "keep_output: False (the Trainer's compute_loss returns the loss alone: the logits die before backward)"
        )
        knobs["keep_output"] = False
    if recipe is not None and recipe.keep_output is not None:
        assumptions.append(f"keep_output: {recipe.keep_output[0]} ({recipe.keep_output[1]})")
        knobs["keep_output"] = recipe.keep_output[0]
    zero_grad = row.get("zero_grad")
    if zero_grad is not None:
        if _key(zero_grad) not in _ZERO_GRAD:
            raise NotExpressible("zero_grad not mapped", repr(zero_grad))
        knobs["zero_grad"] = _ZERO_GRAD[_key(zero_grad)]
    elif _frameworks_trainer(row) and _torch_before_2(row, date):
        assumptions.append(
            f"zero_grad: zeros ({_torch_before_2(row, date)}, before torch 2.0 made set_to_none the default: the "
            "Trainer's model.zero_grad() kept the gradients allocated through the next forward)"
        )
        knobs["zero_grad"] = "zeros"
    cuda, driver_cuda = row.get("cuda"), row.get("driver_cuda")
    if isinstance(cuda, str) and re.fullmatch(r"\d+\.\d+", cuda.strip()):
        knobs["cuda_version"] = cuda.strip()
    elif isinstance(driver_cuda, str) and re.fullmatch(r"\d+\.\d+", driver_cuda.strip()):
        knobs["cuda_version"] = driver_cuda.strip()
        assumptions.append(
            f"cuda_version: {driver_cuda} for the context estimate, the driver's CUDA version (the build's is not "
            "stated; it cannot load kernels lazily on that driver)"
        )
    return Expression(model=model, knobs=knobs, proxies=tuple(proxies), assumptions=tuple(assumptions))


# ---------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class RowResult:
    """One row: what was measured, what memprof predicts, or why it cannot."""

    id: str
    source: str
    metric: str
    measured: int | None  # bytes
    predicted: int | None  # bytes of the compared peak field
    error_pct: float | None  # (predicted - measured) / measured * 100
    oom_measured: bool
    predicted_fits: bool | None  # the GPU verdict (every scored row)
    oom_agrees: bool | None  # OOM rows: the estimate says does-not-fit; None: inconclusive or not OOM
    model: str | None = None
    knobs: Mapping[str, Any] = field(default_factory=dict)
    proxies: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()
    reason: str | None = None  # set when not expressible: "category: detail"
    reason_category: str | None = None  # the short label the summary counts

    @property
    def scored(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "metric": self.metric,
            "measured": self.measured,
            "predicted": self.predicted,
            "error_pct": None if self.error_pct is None else round(self.error_pct, 2),
            "oom_measured": self.oom_measured,
            "predicted_fits": self.predicted_fits,
            "oom_agrees": self.oom_agrees,
            "model": self.model,
            "knobs": dict(self.knobs),
            "proxies": list(self.proxies),
            "assumptions": list(self.assumptions),
            "reason": self.reason,
            "reason_category": self.reason_category,
        }


def _summary(results: Sequence[RowResult]) -> dict[str, Any]:
    errors = [abs(r.error_pct) for r in results if r.error_pct is not None]
    ooms = [r for r in results if r.oom_measured and r.scored]
    return {
        "rows": len(results),
        "scored": sum(r.scored for r in results),
        "compared": len(errors),
        "median_abs_error_pct": round(statistics.median(errors), 2) if errors else None,
        "max_abs_error_pct": round(max(errors), 2) if errors else None,
        "oom_rows": sum(r.oom_measured for r in results),
        "oom_scored": len(ooms),
        "oom_agree": sum(r.oom_agrees is True for r in ooms),
        "oom_inconclusive": sum(r.oom_agrees is None for r in ooms),
    }


@dataclass(frozen=True)
class PublishedScore:
    """Every row's result and the summaries; `to_dict()` is JSON (schema `memprof.published/1`)."""

    rows: tuple[RowResult, ...]

    @property
    def scored(self) -> tuple[RowResult, ...]:
        return tuple(r for r in self.rows if r.scored)

    @property
    def not_expressible(self) -> tuple[RowResult, ...]:
        return tuple(r for r in self.rows if not r.scored)

    def summary(self) -> dict[str, Any]:
        by_source: dict[str, list[RowResult]] = {}
        by_metric: dict[str, list[RowResult]] = {}
        for r in self.rows:
            by_source.setdefault(r.source, []).append(r)
            by_metric.setdefault(r.metric, []).append(r)
        reasons: dict[str, int] = {}
        for r in self.not_expressible:
            key = r.reason_category or ""
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "total": _summary(self.rows),
            "by_source": {k: _summary(v) for k, v in by_source.items()},
            "by_metric": {k: _summary(v) for k, v in by_metric.items()},
            "not_expressible_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "summary": self.summary(), "rows": [r.to_dict() for r in self.rows]}


Estimator = Callable[..., Any]  # memprof.estimate's signature; returns an object with `.record`


def _unscored(row: PublishedRow, category: str, reason: str) -> RowResult:
    return RowResult(
        id=row.id,
        source=row.source,
        metric=row.metric,
        measured=row.measured_bytes,
        predicted=None,
        error_pct=None,
        oom_measured=row.metric == "oom",
        predicted_fits=None,
        oom_agrees=None,
        reason=reason,
        reason_category=category,
    )


def _score_row(row: PublishedRow, estimator: Estimator) -> RowResult:
    try:
        how = express(row)
        knobs = dict(how.knobs)
        optimizer, precision = knobs.pop("optimizer"), knobs.pop("precision")
        record = estimator(how.model, optimizer, precision, **knobs).record
    except NotExpressible as exc:
        return _unscored(row, exc.category, str(exc))
    except MemprofError as exc:
        return _unscored(row, "memprof cannot estimate it", f"memprof cannot estimate it: {exc}")
    fits = None if record.gpu is None else record.gpu.fits
    peak_field = METRICS[row.metric]
    predicted = None if peak_field is None else getattr(record.peak, peak_field)
    error = None
    if predicted is not None and row.measured_bytes:
        error = (predicted - row.measured_bytes) / row.measured_bytes * 100
    oom = row.metric == "oom"
    agrees = None
    if oom:
        lower_bound = any(a.startswith("seq_len: not stated") for a in how.assumptions)
        agrees = True if fits is False else (None if lower_bound else False)
    return RowResult(
        id=row.id,
        source=row.source,
        metric=row.metric,
        measured=row.measured_bytes,
        predicted=predicted,
        error_pct=error,
        oom_measured=oom,
        predicted_fits=fits,
        oom_agrees=agrees,
        model=how.model,
        knobs=how.knobs,
        proxies=how.proxies,
        assumptions=how.assumptions,
    )


def score_published(
    paths: str | Path | Iterable[str | Path] | None = None,
    *,
    only: str | None = None,
    estimator: Estimator | None = None,
) -> PublishedScore:
    """Estimate every expressible published row and compare with what its source measured.

    paths: row files or a directory (default: the shipped profiles/published/). only: keep rows of
    this source id (or whose id starts with it). estimator: `memprof.estimate` unless given (tests).
    """
    rows = load_published(paths)
    if only is not None:
        rows = tuple(r for r in rows if r.source == only or r.id.startswith(only))
        if not rows:
            raise RecordError(f"no published row matches {only!r}")
    if estimator is None:
        from memprof.predict import estimate

        estimator = estimate
    return PublishedScore(rows=tuple(_score_row(r, estimator) for r in rows))
