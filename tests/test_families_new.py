"""The families of issue 11 (Qwen3, Phi-3, Gemma 2, Gemma 3 text, Mixtral, Qwen3-MoE, T5) against transformers.

- parameters: random small configs built by transformers on the meta device, `named_parameters()`
  equal to `ModelSpec.parameter_tensors()` (names, shapes, order);
- activations: what autograd saves in a real CPU forward of a tiny model (every storage once, walked
  from the loss as tests/activation_cases.measure_saved does) equals the replay, size by size, for
  each attention implementation the family runs, fp32, bf16 autocast and bf16 weights, and for the
  configurations that change the trace (sliding windows shorter and longer than the sequence, dense
  layers among experts, no top-k renormalization);
- the step's peak (MemTracker) against the timeline, one case per family;
- mixtures of experts: the routing split changes neither the saved bytes nor the peak (a router
  that sends every token to the same two experts against the random one);
- T5: a decoder length other than the encoder's (`target_len`), gated feed-forward, dropout off.
"""

from __future__ import annotations

import warnings
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.distributed._tools.mem_tracker import MemTracker  # noqa: E402

from activation_cases import adamw_bytes, batch, build, measure_saved, measure_step  # noqa: E402
from activation_cases import settings as act_settings  # noqa: E402
from memprof.estimators.activations import ActivationSettings, saved_tensors  # noqa: E402
from memprof.estimators.errors import MemprofUserError  # noqa: E402
from memprof.estimators.models import ModelSpec, load_model  # noqa: E402
from memprof.estimators.timeline import step_timeline  # noqa: E402
from memprof.tiny_models import ATTENTIONS, NEW_FAMILIES, train_step  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore:Module is None")


def _meta_parameters(model_type: str, config: dict) -> list[tuple[str, tuple[int, ...]]]:
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    auto = transformers.AutoModelForSeq2SeqLM if model_type == "t5" else transformers.AutoModelForCausalLM
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = auto.from_config(hf_config)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _check_parameters(model_type: str, config: dict) -> None:
    task = "seq2seq-lm" if model_type == "t5" else "causal-lm"
    spec = ModelSpec("random", model_type, {"model_type": model_type, **config}, task)
    assert [(t.name, t.shape) for t in spec.parameter_tensors()] == _meta_parameters(model_type, config)


SMALL = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def t5_configs(draw) -> dict:
    return {
        "num_heads": draw(st.sampled_from([1, 2, 4])),
        "d_model": draw(st.sampled_from([8, 16])),
        "d_kv": draw(st.sampled_from([4, 8])),
        "d_ff": draw(st.integers(1, 40)),
        "num_layers": draw(st.integers(1, 3)),
        "num_decoder_layers": draw(st.none() | st.integers(1, 3)),
        "vocab_size": draw(st.integers(5, 70)),
        "relative_attention_num_buckets": draw(st.sampled_from([8, 32])),
        "feed_forward_proj": draw(st.sampled_from(["relu", "gated-gelu", "gated-silu"])),
        "tie_word_embeddings": draw(st.booleans()),
        "decoder_start_token_id": 0,
    }


@st.composite
def decoder_configs(draw, model_type: str) -> dict:
    kv, per_kv = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    heads = kv * per_kv
    config = {
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_size": heads * draw(st.sampled_from([8, 16])),
        "intermediate_size": draw(st.integers(1, 40)),
        "num_hidden_layers": draw(st.integers(1, 3)),
        "vocab_size": draw(st.integers(5, 70)),
        "tie_word_embeddings": draw(st.booleans()),
        "pad_token_id": 0,  # Phi-3's default (32000) is outside the small vocabularies
    }
    if model_type in ("qwen3", "gemma2", "gemma3_text", "qwen3_moe") and draw(st.booleans()):
        config["head_dim"] = draw(st.sampled_from([4, 8]))
    if model_type in ("qwen3", "gemma2", "gemma3_text", "qwen3_moe"):
        config["attention_bias"] = draw(st.booleans())
    if model_type in ("mixtral", "qwen3_moe"):
        experts = draw(st.integers(1, 5))
        config["num_local_experts" if model_type == "mixtral" else "num_experts"] = experts
        config["num_experts_per_tok"] = draw(st.integers(1, experts))
    if model_type == "qwen3_moe":
        config["moe_intermediate_size"] = draw(st.integers(1, 20))
        config["decoder_sparse_step"] = draw(st.integers(1, 2))
        config["mlp_only_layers"] = draw(st.lists(st.integers(0, 2), max_size=2, unique=True))
    if model_type == "gemma3_text":
        config["sliding_window_pattern"] = draw(st.integers(1, 3))
    return config


@pytest.mark.parametrize("model_type", NEW_FAMILIES)
def test_random_configs_have_transformers_parameters(model_type):
    @SMALL
    @given(t5_configs() if model_type == "t5" else decoder_configs(model_type))
    def check(config):
        _check_parameters(model_type, config)

    check()


# ---------------------------------------------------------------------------------------------------
# activations against autograd

CASES = [(f, a, ac) for f in NEW_FAMILIES for a in ATTENTIONS.get(f, ("eager", "sdpa")) for ac in (False, True)]


def _assert_saved(model, spec, inputs, autocast: bool, st: ActivationSettings) -> None:
    measured = measure_saved(model, inputs, autocast)
    assert Counter(t.nbytes for t in saved_tensors(spec, st)) == Counter(n for _, _, n in measured)


@pytest.mark.parametrize(
    "family,attention,autocast", CASES, ids=[f"{f}-{a}-{'bf16mixed' if ac else 'fp32'}" for f, a, ac in CASES]
)
def test_saved_tensors_match_autograd(family, attention, autocast):
    model, spec = build(family, attention)
    _assert_saved(model, spec, batch(family, 2, 32), autocast, act_settings(2, 32, autocast, attention))


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_saved_tensors_bf16_weights(family):
    attention = ATTENTIONS.get(family, ("sdpa",))[-1]
    model, spec = build(family, attention)
    model.to(torch.bfloat16)
    st = ActivationSettings(2, 32, "bfloat16", "bfloat16", False, attention, "none")
    _assert_saved(model, spec, batch(family, 2, 32, dtype=torch.bfloat16), False, st)


VARIANTS = [
    # sliding-window layers from layer 1 on, the window shorter than the sequence: a second eager mask,
    # a boolean sdpa mask (k and v repeated to all heads, the float mask saved by the kernel)
    ("qwen3", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    # every layer sliding, no grouped kv heads
    ("phi3", dict(sliding_window=8, num_key_value_heads=4)),
    ("phi3", dict(sliding_window=8)),
    # a partial rotary embedding (the cat with the rest of each head)
    ("phi3", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    # the window longer than the sequence: no sdpa mask
    ("gemma3_text", dict(sliding_window=64)),
    # no soft-capping
    ("gemma2", dict(attn_logit_softcapping=None, final_logit_softcapping=None)),
    # a dense layer among the experts, weights not renormalized
    ("qwen3_moe", dict(mlp_only_layers=[1], norm_topk_prob=False)),
    ("mixtral", dict(num_experts_per_tok=1)),
    # T5's gated feed-forward (gelu_new) and an extra decoder block; without dropout (sdpa: the CPU flash
    # kernel for the cross-attention, math where the relative bias needs a gradient)
    ("t5", dict(feed_forward_proj="gated-gelu", num_decoder_layers=3)),
    ("t5", dict(dropout_rate=0.0)),
]


@pytest.mark.parametrize("family,overrides", VARIANTS, ids=[f"{f}-{'-'.join(o)}" for f, o in VARIANTS])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16mixed"])
def test_saved_tensors_variants(family, overrides, autocast):
    for attention in ATTENTIONS.get(family, ("eager", "sdpa")):
        model, spec = build(family, attention, **overrides)
        _assert_saved(model, spec, batch(family, 2, 32), autocast, act_settings(2, 32, autocast, attention))


# ---------------------------------------------------------------------------------------------------
# the step's peak


PEAKS = [
    ("qwen3", "sdpa", "bf16-mixed", "none"),
    ("phi3", "eager", "fp32", "selective"),
    ("gemma2", "eager", "fp32", "full"),
    ("gemma3_text", "sdpa", "bf16-true", "none"),
    ("mixtral", "sdpa", "fp32", "full"),
    ("qwen3_moe", "eager", "bf16-mixed", "none"),
    ("t5", "sdpa", "bf16-mixed", "none"),
]


@pytest.mark.parametrize("family,attention,precision,checkpointing", PEAKS, ids=["-".join(c) for c in PEAKS])
def test_predicted_peak_within_3_percent(family, attention, precision, checkpointing):
    autocast, dtype = precision == "bf16-mixed", "bfloat16" if precision == "bf16-true" else "float32"
    measured, _, spec, _ = measure_step(family, attention, autocast, checkpointing, 2, 32, dtype=getattr(torch, dtype))
    st = ActivationSettings(
        2, 32, "float32" if precision == "fp32" else "bfloat16", dtype, autocast, attention, checkpointing
    )
    predicted = step_timeline(spec, st, **adamw_bytes(spec, dtype)).peak.allocated
    assert abs(predicted - measured) / measured < 0.03, (predicted, measured)


# ---------------------------------------------------------------------------------------------------
# T5: the decoder's own length


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16mixed"])
@pytest.mark.parametrize("target_len", [9, 50])
def test_t5_decoder_length(attention, autocast, target_len):
    # GIVEN 32 encoder tokens and labels of another length
    model, spec = build("t5", attention)
    g = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(2, 128, (2, 32), generator=g)}
    inputs["labels"] = torch.randint(2, 128, (2, target_len), generator=g)
    # THEN the replay with target_len saves what autograd saves, and not what the same length would
    st = act_settings(2, 32, autocast, attention, target_len=target_len)
    _assert_saved(model, spec, inputs, autocast, st)
    assert sum(t.nbytes for t in saved_tensors(spec, st)) != sum(
        t.nbytes for t in saved_tensors(spec, act_settings(2, 32, autocast, attention))
    )


def test_target_len_is_for_encoder_decoders():
    from memprof.estimators.errors import ParameterError
    from memprof.estimators.estimation import estimate

    record = estimate("t5-base", seq_len=128, target_len=16, device="cpu").record
    assert (record.settings.seq_len, record.settings.target_len) == (128, 16)
    assert estimate("t5-base", seq_len=64, device="cpu").record.settings.target_len == 64
    assert estimate("llama-3.2-1b", seq_len=64, device="cpu").record.settings.target_len is None
    with pytest.raises(ParameterError, match="decoder's length of an encoder-decoder"):
        estimate("llama-3.2-1b", seq_len=64, target_len=16, device="cpu")


# ---------------------------------------------------------------------------------------------------
# mixtures of experts: the routing split


def _step_peak(model, family: str) -> int:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the router stays as set
    train_step(model, optimizer, batch(family, 2, 32), False)
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        train_step(model, optimizer, batch(family, 2, 32), False)
    return sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())


def _tokens_per_expert(model, family: str) -> list[int]:
    counts: Counter[int] = Counter()

    def hook(_module, _inputs, output):
        counts.update(output[2].flatten().tolist())  # router: (logits, weights, indices)

    handles = [m.register_forward_hook(hook) for name, m in model.named_modules() if name.endswith("mlp.gate")]
    with torch.no_grad():
        model(**batch(family, 2, 32))
    for h in handles:
        h.remove()
    return [counts[e] for e in range(4)]


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_routing_split_changes_no_byte(family):
    # GIVEN the tiny model's random router, and the same model whose router sends every token to the
    # same two experts (zero router weights: equal logits, topk breaks the tie the same way every time)
    routed, spec = build(family, "sdpa")
    skewed, _ = build(family, "sdpa")
    with torch.no_grad():
        for name, p in skewed.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.zero_()
    split_routed, split_skewed = _tokens_per_expert(routed, family), _tokens_per_expert(skewed, family)
    tokens = 2 * 32 * 2  # per layer, tokens x top_k, over both layers
    assert sorted(split_skewed) == [0, 0, tokens, tokens] and split_routed != split_skewed  # different splits
    # WHEN both train, THEN autograd saves the same bytes, which the replay predicts, and the peaks agree
    inputs = batch(family, 2, 32)
    saved = [sorted(n for _, _, n in measure_saved(m, inputs, False)) for m in (routed, skewed)]
    assert saved[0] == saved[1] == sorted(t.nbytes for t in saved_tensors(spec, act_settings(2, 32, False, "sdpa")))
    assert _step_peak(routed, family) == _step_peak(skewed, family)


# ---------------------------------------------------------------------------------------------------
# estimates and bad input


def test_gemma2_defaults_to_eager_and_refuses_sdpa():
    from memprof.estimators.estimation import estimate

    record = estimate("gemma-2-9b", seq_len=256, device="cpu").record
    assert record.settings.attention == "eager"
    with pytest.raises(MemprofUserError, match="gemma2 does not run with sdpa"):
        estimate("gemma-2-9b", seq_len=256, attention="sdpa", device="cpu")


def test_moe_estimate_says_how_the_split_is_accounted():
    from memprof.estimators.estimation import estimate

    record = estimate("qwen3-30b-a3b", seq_len=256, device="cpu").record
    assert any("whatever the router's split" in w for w in record.warnings)


@pytest.mark.parametrize(
    "model_type,config,match",
    [
        ("mixtral", {"output_router_logits": True}, "output_router_logits .* is not modelled"),
        ("mixtral", {"router_jitter_noise": 0.1}, "router_jitter_noise is not modelled"),
        ("qwen3_moe", {"num_experts": 2, "num_experts_per_tok": 4}, "num_experts_per_tok \\(4\\) is more than"),
        ("gemma3_text", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ("gemma2", {"layer_types": ["full_attention"]}, "must list one of"),
        ("phi3", {"partial_rotary_factor": 2}, "partial_rotary_factor must be a number in"),
    ],
)
def test_configs_memprof_does_not_model_are_refused(model_type, config, match):
    base = {"model_type": model_type, "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 2}
    base |= {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64}
    with pytest.raises(MemprofUserError, match=match):
        ModelSpec("x", model_type, {**base, **config}, "causal-lm")


def test_presets_are_their_families():
    assert {
        n: load_model(n).model_type for n in ("qwen3-8b", "phi-3-mini", "gemma-2-9b", "gemma-3-12b", "t5-base")
    } == {
        "qwen3-8b": "qwen3",
        "phi-3-mini": "phi3",
        "gemma-2-9b": "gemma2",
        "gemma-3-12b": "gemma3_text",
        "t5-base": "t5",
    }
    assert load_model("t5-large").head_class == "T5ForConditionalGeneration"
    assert load_model("mixtral-8x7b").dims.num_experts == 8  # type: ignore[attr-defined]
    assert load_model("qwen3-30b-a3b").dims.top_k == 8  # type: ignore[attr-defined]
