"""Llama-style decoders: Llama (`llama`), Mistral (`mistral`), Qwen2 / Qwen2.5 (`qwen2`).

One layout, as LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM build it: RMSNorm, rotary
positions (no position parameters), grouped-query attention, SwiGLU MLP. They differ in their config
defaults and biases: Llama's attention_bias / mlp_bias flags, none in Mistral, q/k/v biases in Qwen2.

Forward (transformers/models/llama/modeling_llama.py; mistral and qwen2 follow it; biases save
nothing): embed_tokens -> layers (input_layernorm, q/k/v_proj, rotary, attention, o_proj, residual
add; post_attention_layernorm, down_proj(act(gate_proj(x)) * up_proj(x)), residual add) -> norm ->
lm_head -> ForCausalLMLoss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..autograd import T, Trace
from ..tensors import ParamTensor
from . import _heads
from . import _trace as t
from ._base import Config, Dims, Embedding, Family, Linear, RMSNorm, require_divisible, tensors_of

# transformers LlamaConfig defaults (configuration_llama.py)
LLAMA_DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pretraining_tp": 1,
    "tie_word_embeddings": False,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "head_dim": None,
}
# transformers MistralConfig defaults (configuration_mistral.py)
MISTRAL_DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 4096 * 32,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "attention_dropout": 0.0,
}
# transformers Qwen2Config defaults (configuration_qwen2.py). Note num_key_value_heads defaults to 32, not
# to num_attention_heads, when the field is absent.
QWEN2_DEFAULTS = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings")


@dataclass(frozen=True, kw_only=True)
class DecoderDims(Dims):
    vocab_size: int
    max_positions: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    use_cache: bool


def finalize_gqa(config: dict[str, Any], where: str) -> None:
    """What every Llama-like __post_init__ does: head_dim and num_key_value_heads default from heads."""
    if config.get("head_dim") is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    if config.get("num_key_value_heads") is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    require_divisible(config, where, "num_attention_heads", "num_key_value_heads")


def _finalize_llama(config: dict[str, Any], where: str) -> None:
    require_divisible(config, where, "hidden_size", "num_attention_heads")  # LlamaConfig.validate_architecture
    finalize_gqa(config, where)


def _describe(config: Config, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> DecoderDims:
    return DecoderDims(
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        max_positions=config["max_position_embeddings"],
        tie_word_embeddings=config["tie_word_embeddings"],
        activation=config["hidden_act"],
        gated_mlp=True,
        norm="rmsnorm",
        attention_dropout=config.get("attention_dropout", 0.0) or 0.0,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        use_cache=config["use_cache"],
    )


def _describe_llama(config: Config) -> DecoderDims:
    bias = config["attention_bias"]
    return _describe(config, qkv_bias=bias, o_bias=bias, mlp_bias=config["mlp_bias"])


def _describe_mistral(config: Config) -> DecoderDims:
    return _describe(config, qkv_bias=False, o_bias=False, mlp_bias=False)


def _describe_qwen2(config: Config) -> DecoderDims:
    return _describe(config, qkv_bias=True, o_bias=False, mlp_bias=False)


# -- modules --------------------------------------------------------------------------------------


def _embed(d: DecoderDims) -> Embedding:
    return Embedding("model.embed_tokens", d.vocab_size, d.hidden_size)


def _norm(d: DecoderDims) -> RMSNorm:
    return RMSNorm("model.norm", d.hidden_size)


def _lm_head(d: DecoderDims) -> Linear:
    """Untied only: tied, lm_head.weight IS model.embed_tokens.weight."""
    return Linear("lm_head", d.hidden_size, d.vocab_size, has_bias=False)


ROTARY = "model.rotary_emb"  # buffers only


@dataclass(frozen=True)
class _Layer:
    prefix: str
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    gate_proj: Linear
    up_proj: Linear
    down_proj: Linear
    input_layernorm: RMSNorm
    post_attention_layernorm: RMSNorm

    def tensors(self) -> list[ParamTensor]:
        return tensors_of(
            self.q_proj,
            self.k_proj,
            self.v_proj,
            self.o_proj,
            self.gate_proj,
            self.up_proj,
            self.down_proj,
            self.input_layernorm,
            self.post_attention_layernorm,
        )


def _layer(d: DecoderDims, i: int) -> _Layer:
    p, h, inter = f"model.layers.{i}", d.hidden_size, d.intermediate_size
    q_out, kv_out = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    return _Layer(
        p,
        q_proj=Linear(f"{p}.self_attn.q_proj", h, q_out, d.qkv_bias),
        k_proj=Linear(f"{p}.self_attn.k_proj", h, kv_out, d.qkv_bias),
        v_proj=Linear(f"{p}.self_attn.v_proj", h, kv_out, d.qkv_bias),
        o_proj=Linear(f"{p}.self_attn.o_proj", q_out, h, d.o_bias),
        gate_proj=Linear(f"{p}.mlp.gate_proj", h, inter, d.mlp_bias),
        up_proj=Linear(f"{p}.mlp.up_proj", h, inter, d.mlp_bias),
        down_proj=Linear(f"{p}.mlp.down_proj", inter, h, d.mlp_bias),
        input_layernorm=RMSNorm(f"{p}.input_layernorm", h),
        post_attention_layernorm=RMSNorm(f"{p}.post_attention_layernorm", h),
    )


def _tensors(d: DecoderDims) -> list[ParamTensor]:
    out = _embed(d).tensors()
    for i in range(d.num_layers):
        out += _layer(d, i).tensors()
    out += _norm(d).tensors()
    if d.head in _heads.CLASSIFIERS:  # Generic{Sequence,Token}Classification (transformers/modeling_layers.py)
        return out + _heads.tensors(d, d.hidden_size)
    if not d.tie_word_embeddings:
        out += _lm_head(d).tensors()
    return out


# -- forward --------------------------------------------------------------------------------------


def rms_norm(tr: Trace, x: T, m: RMSNorm) -> T:
    """LlamaRMSNorm: x.float(); x * rsqrt(mean(x**2) + eps); weight * x.to(input dtype).

    Saves the fp32 input (pow and mul share it), the fp32 rstd per row, and the normalised tensor."""
    x32 = tr.to(x, "float32")
    sq = tr.unary("pow", x32, "self")
    var = tr.act(x.numel // m.dim, "float32", "variance")
    tr.record("mean", [sq], [var])
    rstd = tr.unary("rsqrt", tr.scale(var, "add_scalar"), "result")
    normed = tr.mul(x32, rstd)
    normed = tr.to(normed, x.dtype)
    return tr.mul(t.param(tr, m.weight), normed)


def rope(tr: Trace, x: T, cos: T, sin: T) -> T:
    """apply_rotary_pos_emb for one of q/k: x * cos + rotate_half(x) * sin (cos/sin are saved)."""
    a = tr.mul(x, cos)
    neg = tr.act(x.numel // 2, x.dtype, "neg")
    tr.record("neg", [x], [neg])
    rot = tr.act(x.numel, x.dtype, "rotate_half")
    tr.record("cat", [neg, x], [rot])
    return tr.add(a, tr.mul(rot, sin))


def _forward(tr: Trace, d: DecoderDims, attn_kernel: str) -> None:
    heads, kv_heads = d.num_heads, d.num_kv_heads
    p_attn = d.attention_dropout if tr.training else 0.0

    ids, labels = t.token_inputs(tr)
    tr.module = _embed(d).name
    emb = t.param(tr, _embed(d).weight)
    x = tr.embedding(emb, ids, d.hidden_size)
    tr.module = ROTARY
    pos, cos, sin = t.rotary(tr, ROTARY, d.head_dim, x.dtype)
    mask = t.make_mask(tr, attn_kernel)

    for i in range(d.num_layers):
        layer = _layer(d, i)
        tr.layer = i
        tr.module = layer.prefix
        tr.record("layer_inputs", [x, pos, cos, sin] + ([mask] if mask is not None else []), [])
        residual = x
        tr.module = layer.input_layernorm.name
        y = rms_norm(tr, x, layer.input_layernorm)
        tr.module = layer.prefix + ".self_attn"
        q = t.linear(tr, y, layer.q_proj)
        k = t.linear(tr, y, layer.k_proj)
        v = t.linear(tr, y, layer.v_proj)
        q = rope(tr, q, cos, sin)
        k = rope(tr, k, cos, sin)
        k, v = t.kv_cache(tr, d.use_cache, k, v, k.numel)
        a = t.attention(
            tr,
            q,
            k,
            v,
            heads,
            kv_heads,
            d.head_dim,
            attn_kernel,
            p_attn,
            mask,
            softmax_dtype="float32",
            probs_dtype=q.dtype,
        )
        o = t.linear(tr, a, layer.o_proj)
        t.module_returns(tr, y)  # self_attn(hidden_states=y) returns
        x = tr.add(residual, o)
        residual = x
        tr.module = layer.post_attention_layernorm.name
        y = rms_norm(tr, x, layer.post_attention_layernorm)
        tr.module = layer.prefix + ".mlp"
        g = t.activation(tr, d.activation, t.linear(tr, y, layer.gate_proj))
        u = t.linear(tr, y, layer.up_proj)
        m = t.linear(tr, tr.mul(g, u), layer.down_proj)
        t.module_returns(tr, y)  # mlp(y) returns
        x = tr.add(residual, m)
    tr.layer = None
    tr.module = _norm(d).name
    x = rms_norm(tr, x, _norm(d))
    if d.head in _heads.CLASSIFIERS:
        _heads.classify(tr, d, x, ids, labels, d.hidden_size)
        return
    head = emb if d.tie_word_embeddings else t.param(tr, _lm_head(d).weight)
    t.causal_lm_head(tr, x, head, d.vocab_size, labels)


LLAMA = Family(
    model_type="llama",
    task="causal-lm",
    head_class="LlamaForCausalLM",
    heads={
        "causal-lm": "LlamaForCausalLM",
        "seq-cls": "LlamaForSequenceClassification",
        "token-cls": "LlamaForTokenClassification",
    },
    defaults=LLAMA_DEFAULTS,
    required=REQUIRED,
    describe=_describe_llama,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings", "attention_bias", "mlp_bias"),
    finalize=_finalize_llama,
)
MISTRAL = Family(
    model_type="mistral",
    task="causal-lm",
    head_class="MistralForCausalLM",
    heads={
        "causal-lm": "MistralForCausalLM",
        "seq-cls": "MistralForSequenceClassification",
        "token-cls": "MistralForTokenClassification",
    },
    defaults=MISTRAL_DEFAULTS,
    required=REQUIRED,
    describe=_describe_mistral,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings",),
    finalize=finalize_gqa,
)
QWEN2 = Family(
    model_type="qwen2",
    task="causal-lm",
    head_class="Qwen2ForCausalLM",
    heads={
        "causal-lm": "Qwen2ForCausalLM",
        "seq-cls": "Qwen2ForSequenceClassification",
        "token-cls": "Qwen2ForTokenClassification",
    },
    defaults=QWEN2_DEFAULTS,
    required=REQUIRED,
    describe=_describe_qwen2,
    tensors=_tensors,
    forward=_forward,
    optional_ints=OPTIONAL_INTS,
    bools=("tie_word_embeddings",),
    finalize=finalize_gqa,
)
