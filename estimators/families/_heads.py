"""Classification heads on the families' backbones: sequence classification (`seq-cls`) and token
classification (`token-cls`), as transformers 5.24 builds them.

A family whose Dims carries `head` "seq-cls" or "token-cls" lists `tensors(...)` after its backbone
instead of its LM head and ends its forward with `classify(...)` on the backbone's last hidden state.
The variants (read from the modeling files):

- decoders' sequence classification (GPT2ForSequenceClassification, OPTForSequenceClassification,
  GPTNeoXForSequenceClassification, modeling_layers.GenericForSequenceClassification for Llama /
  Mistral / Qwen2): `score` = Linear(hidden, num_labels, bias=False) on every position, then the
  logits of each row's last non-pad token: `non_pad_mask = (input_ids != pad_token_id).to(int32)`,
  `token_indices = arange(seq, int32)`, `(token_indices * non_pad_mask).argmax(-1)`, and
  `logits[arange(batch), last_non_pad_token]` (index: saves only its int64 indices; its backward
  scatters into zeros of the per-token logits). Without a pad_token_id transformers refuses a batch
  larger than 1 ("Cannot handle batch sizes > 1 if no padding token is defined"). The output keeps
  the pooled logits and the key/value cache;
- BERT's (BertForSequenceClassification): BertModel with its pooler (`bert.pooler.dense` on the first
  token, tanh), dropout (classifier_dropout, else hidden_dropout_prob), `classifier` = Linear with bias;
- token classification: dropout then a per-token Linear with bias: `classifier` (GPT-2, GPT-NeoX,
  BERT) or `score` (GenericForTokenClassification, bias = config.token_classification_bias, default
  True). The dropout is classifier_dropout, else hidden_dropout (else 0.1) for GPT-2 and the generic
  class, classifier_dropout for GPT-NeoX, classifier_dropout else hidden_dropout_prob for BERT. The
  output (TokenClassifierOutput) has no cache: the key/value cache dies with the forward.

Loss, as transformers' problem_type logic decides it (num_labels > 1 and integer labels:
single_label_classification): cross-entropy. GPT-2, OPT and BERT call CrossEntropyLoss on the logits
as they are; the loss_function of the generic classes and GPT-NeoX (loss/loss_utils.py:
ForSequenceClassificationLoss on the pooled logits as they are, ForTokenClassification on
`logits.float()`). Regression (num_labels 1) and multi-label classification are not modelled (a
ParameterError says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..autograd import T, Trace
from ..errors import ParameterError
from ..tensors import ParamTensor
from . import _trace as t
from ._base import Dims, Linear

__all__ = ["CLASSIFIERS", "classify", "head_fields", "pooler_tensors", "tensors"]

CLASSIFIERS = ("seq-cls", "token-cls")
# model_type -> the prefix of the backbone in the head classes (base_model_prefix)
_PREFIX = {"bert": "bert."}
# token classification: the linear's name and whether its loss upcasts the logits (ForTokenClassification)
_TOKEN_LINEAR = {
    "gpt2": ("classifier", False),
    "gpt_neox": ("classifier", True),
    "bert": ("classifier", False),
    "llama": ("score", True),
    "mistral": ("score", True),
    "qwen2": ("score", True),
    # GenericForTokenClassification (transformers/modeling_layers.py): score, its loss upcasts the logits
    "qwen3": ("score", True),
    "phi3": ("score", True),
    "gemma2": ("score", True),
    "mixtral": ("score", True),
    "qwen3_moe": ("score", True),
}
# the families whose sequence classification pools the first token through a pooler (BERT) rather
# than taking the last non-pad token's logits
_POOLER = ("bert",)


def head_fields(model_type: str, config: Mapping[str, Any], head: str) -> dict[str, Any]:
    """The Dims fields a classification head reads from the config (ModelSpec fills them in)."""
    from ..heads import num_labels_of

    problem = config.get("problem_type")
    labels = num_labels_of(config)
    if problem not in (None, "single_label_classification") or labels < 2:
        raise ParameterError(
            f"{head} with problem_type {problem!r} and {labels} label(s) is not modelled (regression and "
            "multi-label losses); memprof models single-label classification (num_labels >= 2)",
            "head",
        )
    return {
        "head": head,
        "head_family": model_type,
        "num_labels": labels,
        "pad_token_id": config.get("pad_token_id"),
        "classifier_dropout": _classifier_dropout(model_type, config),
        "token_classification_bias": bool(config.get("token_classification_bias", True)),
    }


def _classifier_dropout(model_type: str, config: Mapping[str, Any]) -> float:
    """The classifier's dropout probability, as each head class picks it (module docstring)."""
    own = config.get("classifier_dropout")
    if own is not None:
        return float(own)
    if model_type == "bert":
        return float(config["hidden_dropout_prob"])
    if model_type == "gpt_neox":
        return 0.0  # nn.Dropout(config.classifier_dropout) with classifier_dropout set to None fails
    hidden = config.get("hidden_dropout")
    return float(hidden) if hidden is not None else 0.1


def _seq_linear(d: Dims, in_features: int) -> Linear:
    bias = d.head_family in _POOLER
    return Linear("classifier" if bias else "score", in_features, _labels(d), has_bias=bias)


def _token_linear(d: Dims, in_features: int) -> Linear:
    name, _ = _TOKEN_LINEAR[d.head_family]
    bias = d.token_classification_bias if name == "score" else True
    return Linear(name, in_features, _labels(d), has_bias=bias)


def _pooler(d: Dims) -> Linear:
    return Linear(_PREFIX.get(d.head_family, "") + "pooler.dense", d.hidden_size, d.hidden_size)


def _labels(d: Dims) -> int:
    assert d.num_labels is not None  # head_fields sets it with the head
    return d.num_labels


def tensors(d: Dims, in_features: int) -> list[ParamTensor]:
    """The head's parameters after the backbone's (BERT's pooler belongs to the backbone: `pooler`)."""
    if d.head == "seq-cls":
        return _seq_linear(d, in_features).tensors()
    return _token_linear(d, in_features).tensors()


def pooler_tensors(d: Dims) -> list[ParamTensor]:
    """BertModel's pooler, built for sequence classification only (BertForMaskedLM and
    BertForTokenClassification pass add_pooling_layer=False)."""
    return _pooler(d).tensors() if d.head == "seq-cls" and d.head_family in _POOLER else []


def _first_token_dense(tr: Trace, x: T, m: Linear) -> T:
    """BertPooler's `self.dense(hidden_states[:, 0])`: the first token's row is a strided view of the
    last hidden state, so an fp32 linear saves that view and keeps the whole (b, s, h) storage; under
    autocast the linear's input is a compact low-precision copy of the (b, h) rows, saved instead."""
    b = tr.batch_size
    weight, bias = t.param(tr, m.weight), t.param(tr, m.bias) if m.bias is not None else None
    xin = x
    if tr.autocast and x.dtype != tr.compute_dtype:
        xin = tr.act(b * m.in_features, tr.compute_dtype, "first_token." + tr.compute_dtype)
        tr.record("to_copy", [x], [xin])
    wi = tr.lowp(weight)
    ins = [xin, wi] + ([tr.lowp(bias)] if bias is not None else [])
    out = tr.act(b * m.out_features, xin.dtype if tr.autocast else x.dtype, "linear")
    saved = [("input", xin)] if weight.requires_grad else []
    if wi.kind != "param" and xin.requires_grad:
        saved.append(("weight", wi))
    tr.record("linear", ins, [out], saved)
    return out


def classify(tr: Trace, d: Dims, x: T, ids: T, labels: T, in_features: int) -> None:
    """The classification head on the last hidden state `x` (b, s, in_features), then its loss."""
    b, s = tr.batch_size, tr.seq_len
    tr.layer = None
    x.forward_local = True  # type: ignore[attr-defined]  # the base model's output lives until the head returns
    if d.head == "token-cls":
        # TokenClassifierOutput carries no cache: the key/value copies die with the forward
        tr.held = [h for h in tr.held if h.name not in ("cache_keys", "cache_values")]
        name, upcast = _TOKEN_LINEAR[d.head_family]
        tr.module = "dropout"
        x = tr.dropout(x, d.classifier_dropout if tr.training else 0.0)
        x.forward_local = True  # type: ignore[attr-defined]  # `sequence_output = self.dropout(...)`, a local
        tr.module = name
        logits = t.linear(tr, x, _token_linear(d, in_features))
        tr.held.append(logits)
        tr.module = "loss"
        loss = tr.cross_entropy(logits, _labels(d), b * s, labels=labels, upcast=upcast)
        tr.held.append(loss)
        return
    labels.numel = b  # one label per sequence (the batch's labels are (batch,))
    if d.head_family in _POOLER:
        tr.module = _PREFIX.get(d.head_family, "") + "pooler"
        pooled = tr.unary("tanh", _first_token_dense(tr, x, _pooler(d)), "result")
        tr.module = "dropout"
        pooled = tr.dropout(pooled, d.classifier_dropout if tr.training else 0.0)
        pooled.forward_local = True  # type: ignore[attr-defined]  # `pooled_output = self.dropout(...)`, a local
        tr.module = "classifier"
        logits = t.linear(tr, pooled, _seq_linear(d, in_features))
    else:
        tr.module = "score"
        per_token = t.linear(tr, x, _seq_linear(d, in_features))
        per_token.forward_local = True  # type: ignore[attr-defined]  # `logits = self.score(...)`, a local
        tr.module = "pooling"
        rows = tr.act(b, "int64", "batch_arange", "index")
        tr.record("arange", [], [rows])
        if d.pad_token_id is None:
            if b != 1:
                raise ParameterError(
                    f"{d.head} on a decoder needs the config's pad_token_id to find each row's last token "
                    f"(transformers: 'Cannot handle batch sizes > 1 if no padding token is defined'); "
                    f"give pad_token_id or use {{batch_size}} 1",
                    "batch_size",
                )
            last = tr.act(1, "int64", "last_token", "index")  # the -1 of logits[arange, -1]
            tr.record("full", [], [last])
        else:
            not_pad = tr.act(b * s, "bool", "non_pad_mask", "index")
            tr.record("ne", [ids], [not_pad])
            as_int = tr.act(b * s, "int32", "non_pad_mask.int32", "index")
            tr.record("to_copy", [not_pad], [as_int])
            positions = tr.act(s, "int32", "token_indices", "index")
            tr.record("arange", [], [positions])
            weighted = tr.act(b * s, "int32", "token_indices * non_pad_mask", "index")
            tr.record("mul", [positions, as_int], [weighted])
            last = tr.act(b, "int64", "last_non_pad_token", "index")
            tr.record("argmax", [weighted], [last])
        logits = tr.act(b * _labels(d), per_token.dtype, "pooled_logits")
        # IndexBackward0 keeps the indices only; its backward scatters into zeros of per_token's size
        tr.record("index", [per_token, rows, last], [logits], [("indices", rows), ("indices", last)])
    tr.held.append(logits)
    tr.module = "loss"
    loss = tr.cross_entropy(logits, _labels(d), b, labels=labels, upcast=False)
    tr.held.append(loss)
