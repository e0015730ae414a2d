"""Models as plain data: presets and Hugging Face config.json files read into a `ModelSpec`.

A `ModelSpec` knows the exact parameter tensors of the Hugging Face head class training uses
(names, shapes and order of `model.named_parameters()`, tied weights listed once), derived without
importing torch or transformers from its family's description (memprof.estimators.families).
`load_model` accepts a preset name or alias, a config.json path, or a folder holding one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..profiles import data_path
from .errors import MemprofUserError, unknown_name
from .families import FAMILIES, SUPPORTED_MODEL_TYPES, Dims
from .files import loads_json, read_input
from .heads import canonical as head_name
from .heads import check_head, family_heads, head_from_architectures
from .tensors import ParamTensor

__all__ = [
    "ModelSpec",
    "SUPPORTED_MODEL_TYPES",
    "TASKS",
    "FACTORY_REF",
    "MAX_CONFIG_INT",
    "MAX_LAYERS",
    "MAX_PARAMETER_TENSORS",
    "is_factory_ref",
    "load_model",
    "normalize_config",
    "preset_aliases",
    "preset_info",
    "preset_names",
    "spec_from_config",
    "spec_from_config_file",
]

TASKS = ("causal-lm", "masked-lm", "image-classification")  # the heads presets name (estimators/heads.py: HEADS)

# Limits on what a config.json may describe (docs/architecture.md, "Input files"). The deepest
# published models have ~130 layers (Llama 3.1 405B: 126); 512 leaves room for the next ones while
# bounding the work: `memprof estimate` replays every layer (~1 s at 512 on one core) and `memprof
# fit` runs ~20 estimates. A BERT layer has 16 parameter tensors, so 512 of them stay under 16,384.
# Sizes (hidden, vocabulary, heads, ...) are whole numbers up to 2**32: every tensor dimension of a
# real model fits in 32 bits, and bigger ones only overflow downstream arithmetic.
MAX_LAYERS = 512
MAX_PARAMETER_TENSORS = 16_384
MAX_CONFIG_INT = 1 << 32
# MODEL as `package.module:factory` (memprof.factory builds it; that needs torch, so not here)
FACTORY_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory_ref(ref: str) -> bool:
    """Whether `ref` reads as `package.module:factory` (whether or not such a module exists)."""
    return bool(FACTORY_REF.match(ref))


@dataclass(frozen=True)
class ModelSpec:
    """One model: its normalized Hugging Face config and the parameters of its training head class."""

    name: str  # preset name ("gpt2-1.5b") or the config path given
    model_type: str  # HF model_type
    config: Mapping[str, Any]  # config.json fields with transformers' defaults applied (read-only)
    task: str  # "causal-lm" | "masked-lm" | "image-classification"
    hf_id: str | None = None
    source: str = ""  # where the figures come from
    # LoRA / quantized base weights (memprof.estimators.adapters.Adapter): None for full training
    adapter: Any = None
    _dims: Dims = field(init=False, repr=False, compare=False)
    _params: tuple[ParamTensor, ...] = field(init=False, repr=False, compare=False)
    _num_parameters: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model_type not in FAMILIES:
            raise _unsupported(self.model_type, self.name)
        family = FAMILIES[self.model_type]
        heads = family_heads(family)
        if head_name(self.task) not in heads:
            listed = ", ".join(f"{h} ({cls})" for h, cls in heads.items())
            raise MemprofUserError(
                f"{self.name}: head {self.task!r} is not modelled for {self.model_type}; its heads: {listed}"
            )
        config = dict(self.config)
        if config.setdefault("model_type", self.model_type) != self.model_type:
            raise MemprofUserError(
                f"{self.name}: config model_type {config['model_type']!r} differs from {self.model_type!r}"
            )
        # idempotent: a raw config.json dict and an already normalized one give the same result
        config = normalize_config(config, where=self.name)
        object.__setattr__(self, "config", MappingProxyType(config))
        dims = family.describe(self.config)  # one description feeds the parameters and the replay
        if head_name(self.task) in ("seq-cls", "token-cls"):  # a classification head on the backbone
            from .families._heads import head_fields

            dims = replace(dims, **head_fields(self.model_type, self.config, head_name(self.task)))
        if dims.num_layers > MAX_LAYERS:
            raise MemprofUserError(
                f"{self.name}: {dims.num_layers:,} layers is more than memprof models ({MAX_LAYERS}, MAX_LAYERS)"
            )
        object.__setattr__(self, "_dims", dims)
        params = tuple(family.tensors(dims))
        if len(params) > MAX_PARAMETER_TENSORS:
            raise MemprofUserError(
                f"{self.name}: {len(params):,} parameter tensors is more than memprof models "
                f"({MAX_PARAMETER_TENSORS:,}, MAX_PARAMETER_TENSORS)"
            )
        # the model's own parameters; an adapter adds its own and stores quantized weights packed
        count = sum(t.numel for t in params)
        if self.adapter is not None:  # an adapters.Adapter
            params = tuple(self.adapter.model_tensors(self, params))
            count += sum(t.numel for t in params if ".lora_" in t.name)
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_num_parameters", count)

    def __hash__(self) -> int:
        return hash((self.name, self.model_type, self.num_parameters, self.adapter))

    @property
    def head_class(self) -> str:
        """The transformers class whose parameters `parameter_tensors` lists (e.g. "GPT2LMHeadModel")."""
        return family_heads(FAMILIES[self.model_type])[head_name(self.task)]

    @property
    def head(self) -> str:
        """The task head trained, as `--head` names it ("causal-lm", "seq-cls", ...)."""
        return head_name(self.task)

    def with_head(self, head: str | None) -> ModelSpec:
        """The same model with task head `head` (None: this one); an unmodelled head is a ParameterError."""
        if head is None or head_name(head) == self.head:
            return self
        return replace(self, task=check_head(FAMILIES[self.model_type], head))

    def parameter_tensors(self) -> tuple[ParamTensor, ...]:
        """Exactly `model.named_parameters()` of the head class: names, shapes and order."""
        return self._params

    @property
    def num_parameters(self) -> int:
        """The model's parameters (LoRA's included), counted unquantized."""
        return self._num_parameters

    @property
    def dims(self) -> Dims:
        """The family's description record (a `Dims` subclass): what `parameter_tensors` and the
        activation replay are both derived from."""
        return self._dims

    # Derived sizes in one vocabulary across families (used by the activation estimator).
    @property
    def hidden_size(self) -> int:
        return self._dims.hidden_size

    @property
    def num_layers(self) -> int:
        return self._dims.num_layers

    @property
    def num_heads(self) -> int:
        return self._dims.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self._dims.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self._dims.head_dim

    @property
    def intermediate_size(self) -> int:
        return self._dims.intermediate_size

    @property
    def vocab_size(self) -> int | None:
        """None for ViT."""
        return self._dims.vocab_size

    @property
    def max_positions(self) -> int | None:
        """None for ViT."""
        return self._dims.max_positions

    @property
    def tie_word_embeddings(self) -> bool:
        return self._dims.tie_word_embeddings

    @property
    def activation(self) -> str:
        """hidden_act / activation_function."""
        return self._dims.activation

    @property
    def gated_mlp(self) -> bool:
        """SwiGLU gate_proj * up_proj MLP."""
        return self._dims.gated_mlp

    @property
    def norm(self) -> str:
        """ "layernorm" or "rmsnorm"."""
        return self._dims.norm

    @property
    def num_patches(self) -> int | None:
        """ViT: patches per image; else None."""
        return self._dims.num_patches

    @property
    def num_labels(self) -> int | None:
        """ViT: classifier width; else None."""
        return self._dims.num_labels


# ---------------------------------------------------------------------------------------------------
# Loading


def load_model(ref: str, head: str | None = None) -> ModelSpec:
    """A preset name or alias (case-insensitive), a path to a config.json, or a folder holding one.

    head: the task head to build (estimators/heads.py); None: the one the config's `architectures`
    names, else the preset's or family's own.

    `package.module:factory` references need torch (memprof.factory builds the model): they are
    resolved by memprof.estimate and the memprof CLI, not here."""
    if not isinstance(ref, str) or not ref.strip():
        raise MemprofUserError(f"model must be a preset name or a config.json path, got {ref!r}")
    ref = ref.strip()
    key = ref.lower()
    aliases = preset_aliases()
    path = Path(ref).expanduser()
    if is_factory_ref(ref) and not path.exists():
        raise MemprofUserError(
            f"model {ref!r} is a factory reference: it needs torch, so resolve it with "
            "memprof.estimate(...) or the memprof CLI, not memprof.estimators"
        )
    # an existing config file or model folder wins over a preset of the same spelling (a device or a
    # pipe too: its reader says it is not a file)
    if path.is_file() or (path.exists() and not path.is_dir()):
        return spec_from_config_file(path, name=ref, head=head)
    if path.is_dir() and (path / "config.json").is_file():
        return spec_from_config_file(path / "config.json", name=ref, head=head)
    if key in aliases:
        return _load_preset(aliases[key]).with_head(head)
    if path.is_dir():
        raise MemprofUserError(f"no config.json in folder {path}")
    if key.endswith(".json") or (path.parent != Path(".") and path.parent.exists()):
        raise MemprofUserError(f"config file not found: {path}")
    # a bare name or a Hub id ("org/model") that is not a preset
    raise unknown_name("model", ref, list(aliases))


def spec_from_config_file(path: str | Path, name: str | None = None, head: str | None = None) -> ModelSpec:
    """Read a Hugging Face config.json into a ModelSpec (pure JSON: transformers is not imported)."""
    path = Path(path)
    try:
        text = read_input(path).decode("utf-8-sig")
    except FileNotFoundError:
        raise MemprofUserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MemprofUserError(f"cannot read config file {path}: {exc}") from None
    try:
        raw = loads_json(text)
    except json.JSONDecodeError as exc:
        raise MemprofUserError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise MemprofUserError(f"{path}: a config.json must hold a JSON object, found {type(raw).__name__}")
    return spec_from_config(raw, name=name or str(path), where=str(path), source=f"config file {path}", head=head)


def spec_from_config(
    raw: Mapping[str, Any], *, name: str, where: str, source: str, head: str | None = None
) -> ModelSpec:
    """A ModelSpec from a Hugging Face config as a dict (config.json's fields, `config.to_dict()`)."""
    if raw.get("model_type") is None:
        raise MemprofUserError(f"{where}: no 'model_type' field; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    config = normalize_config(raw, where=where)
    family = FAMILIES[config["model_type"]]
    return ModelSpec(
        name=name,
        model_type=family.model_type,
        config=config,
        task=check_head(family, head) if head is not None else _configured_head(family, raw, where),
        hf_id=raw.get("_name_or_path") or None,
        source=source,
    )


def _configured_head(family: Any, raw: Mapping[str, Any], where: str) -> str:
    """The head a config's `architectures` names (BertForSequenceClassification -> seq-cls), else the
    family's own. A head memprof does not model for the family is an error, not another head's figures."""
    found = head_from_architectures(raw.get("architectures"))
    if found is None:
        return str(family.task)
    head, cls = found
    heads = family_heads(family)
    if head not in heads:
        listed = ", ".join(f"{h} ({c})" for h, c in heads.items())
        raise MemprofUserError(
            f"{where}: architectures names {cls} (head {head}), which memprof does not model for "
            f"{family.model_type}; its heads: {listed} (pass --head to estimate one of them)"
        )
    return head


def normalize_config(raw: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """Validate a config.json dict and apply transformers' defaults for its model_type.

    Required structural sizes must be present, integers and positive; optional integers and flags are
    type-checked when present; missing fields take the config class's defaults; derived fields
    (head_dim, num_key_value_heads, word_embed_proj_dim, num_labels) are filled in as the config
    class's __post_init__ does. `where` names the source in error messages.
    """
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise _unsupported(model_type, where)
    family = FAMILIES[model_type]
    config = dict(raw)
    for alias, canonical in family.attribute_map.items():  # e.g. GPT-2's hidden_size -> n_embd
        if alias in config:
            value = config.pop(alias)
            config.setdefault(canonical, value)
    for key in family.required:
        if key not in config or config[key] is None:
            raise MemprofUserError(
                f"{where}: required field {key!r} is missing ({model_type} needs {', '.join(family.required)})"
            )
        _check_positive_int(config, key, where)
    for key in family.optional_ints:
        if config.get(key) is not None:
            _check_positive_int(config, key, where)
        elif key in config and family.defaults.get(key) is not None:  # a size the model cannot go without
            raise MemprofUserError(
                f"{where}: field {key!r} is null; give a whole number or leave it out (default {family.defaults[key]})"
            )
    for key, value in family.defaults.items():
        config.setdefault(key, value)
    for key, value in config.items():  # the fields no family checks (image_size, rope_theta, ...) too
        _check_bounded(key, value, where)
    for key in family.bools:
        if not isinstance(config[key], bool):
            raise MemprofUserError(f"{where}: field {key!r} must be true or false, got {config[key]!r}")
    family.finalize(config, where)
    return config


def _check_positive_int(config: Mapping[str, Any], key: str, where: str) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemprofUserError(f"{where}: field {key!r} must be an integer, got {value!r}")
    if value <= 0:
        raise MemprofUserError(f"{where}: field {key!r} must be positive, got {value}")
    if value > MAX_CONFIG_INT:
        raise MemprofUserError(f"{where}: field {key!r} is {value:,}, more than memprof models (2**32, MAX_CONFIG_INT)")


def _check_bounded(key: str, value: Any, where: str) -> None:
    """A number in a config is at most MAX_CONFIG_INT in size, and finite: no real config holds more,
    and a bigger one only overflows the arithmetic downstream."""
    if isinstance(value, list):  # image_size = [224, 224], ...
        for i, item in enumerate(value):
            _check_bounded(f"{key}[{i}]", item, where)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise MemprofUserError(f"{where}: field {key!r} must be a finite number, got {value!r}")
    if abs(value) > MAX_CONFIG_INT:
        shown = f"{value:.3g}" if isinstance(value, float) else f"{str(value)[:12]}... ({len(str(value))} digits)"
        raise MemprofUserError(f"{where}: field {key!r} is {shown}, more than memprof models (2**32, MAX_CONFIG_INT)")


def _unsupported(model_type: Any, where: str) -> MemprofUserError:
    return MemprofUserError(
        f"{where}: unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


# ---------------------------------------------------------------------------------------------------
# Presets (profiles/models/*.json)

_PRESET_KEYS = {"name", "aliases", "hf_id", "task", "source", "notes", "config"}


@cache
def _preset_files() -> dict[str, Path]:
    folder = data_path("models")
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")):
        data = _read_preset_json(path)
        files[data["name"]] = path
    return files


def _read_preset_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MemprofUserError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    missing = _PRESET_KEYS - set(data)
    if missing:
        raise MemprofUserError(f"{path}: preset is missing {', '.join(sorted(missing))}")
    return data


def preset_names() -> list[str]:
    """Names of the shipped model presets, sorted."""
    return sorted(_preset_files())


@cache
def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, path in _preset_files().items():
        data = _read_preset_json(path)
        for alias in [name, *data["aliases"]]:
            key = alias.lower()
            if table.get(key, name) != name:
                raise MemprofUserError(f"{path}: alias {alias!r} also names preset {table[key]!r}")
            table[key] = name
    return table


def preset_aliases() -> dict[str, str]:
    """Every accepted spelling (lower-cased; names included) -> preset name."""
    return dict(_aliases())


@cache
def _load_preset(name: str) -> ModelSpec:
    path = _preset_files()[name]
    data = _read_preset_json(path)
    config = normalize_config(data["config"], where=str(path))
    return ModelSpec(
        name=name,
        model_type=config["model_type"],
        config=config,
        task=data["task"],
        hf_id=data["hf_id"],
        source=data["source"],
    )


def preset_info(name: str) -> dict[str, Any]:
    """The preset file's metadata (name, aliases, hf_id, task, source, notes) without the config."""
    key = name.lower()
    if key not in _aliases():
        raise unknown_name("model", name, list(_aliases()))
    data = _read_preset_json(_preset_files()[_aliases()[key]])
    return {k: v for k, v in data.items() if k != "config"}
