"""Per-operation activation accounting against what autograd really saves.

Ground truth: the forward of a tiny transformers model of each family (built from a config) is run
and the autograd graph walked from the loss; every tensor a node keeps (`_saved_*`) is collected, each
storage once, parameters and buffers excluded. The prediction must list exactly those sizes.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from activation_cases import FAMILIES, batch, build, measure_saved, settings
from memprof.estimators.activations import (
    ActivationSettings,
    activation_bytes,
    resolve_attention,
    saved_tensors,
)
from memprof.estimators.errors import MemprofUserError
from memprof.estimators.families import SUPPORTED_MODEL_TYPES
from memprof.estimators.models import ModelSpec

CASES = [(f, a, ac) for f in FAMILIES for a in ("eager", "sdpa") for ac in (False, True)]


@pytest.mark.parametrize(
    "family,attention,autocast", CASES, ids=[f"{f}-{a}-{'bf16mixed' if ac else 'fp32'}" for f, a, ac in CASES]
)
def test_saved_tensors_match_autograd(family, attention, autocast):
    # GIVEN a tiny real model and its spec
    model, spec = build(family, attention)
    # WHEN autograd's saved tensors are collected after a training forward
    measured = measure_saved(model, batch(family, 2, 32), autocast)
    predicted = saved_tensors(spec, settings(2, 32, autocast, attention))
    # THEN every saved storage is predicted, with its exact size
    assert Counter(t.nbytes for t in predicted) == Counter(n for _, _, n in measured)
    assert activation_bytes(spec, settings(2, 32, autocast, attention)) == sum(n for _, _, n in measured)


@pytest.mark.parametrize(
    "family,b,s",
    [("gpt2", 3, 17), ("llama", 1, 40), ("opt", 4, 9), ("bert", 3, 21), ("gpt_neox", 2, 13), ("vit", 5, 0)],
)
def test_saved_tensors_other_shapes(family, b, s):
    model, spec = build(family, "eager")
    measured = measure_saved(model, batch(family, b, s), autocast=False)
    predicted = saved_tensors(spec, settings(b, s or 1, False, "eager"))
    assert sorted(t.nbytes for t in predicted) == sorted(n for _, _, n in measured)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tensors_bf16_true(family):
    # GIVEN parameters in bfloat16 and no autocast (bf16-true)
    model, spec = build(family, "sdpa")
    model.to(torch.bfloat16)
    inputs = batch(family, 2, 32, dtype=torch.bfloat16)
    measured = measure_saved(model, inputs, autocast=False)
    st = ActivationSettings(2, 32, "bfloat16", "bfloat16", False, "sdpa", "none")
    assert sorted(t.nbytes for t in saved_tensors(spec, st)) == sorted(n for _, _, n in measured)


def test_eval_mode_has_no_dropout_masks():
    model, spec = build("gpt2", "eager")
    model.eval()
    measured = measure_saved(model, batch("gpt2", 2, 32), autocast=False)
    predicted = saved_tensors(spec, settings(2, 32, False, "eager", training=False))
    assert sorted(t.nbytes for t in predicted) == sorted(n for _, _, n in measured)
    assert not [t for t in predicted if t.op == "dropout"]


def _gpt2_spec(n_layer=2, h=64, a=4, **kw):
    cfg = dict(
        model_type="gpt2",
        n_layer=n_layer,
        n_embd=h,
        n_head=a,
        vocab_size=128,
        n_positions=512,
        activation_function="gelu",
        use_cache=False,
        **kw,
    )
    return ModelSpec("gpt2-test", "gpt2", cfg, "causal-lm")


def test_korthikanti_constant_is_the_gpt2_cuda_16bit_special_case():
    # GIVEN a GPT-2 block with fused GELU, dropout, everything in 16-bit on CUDA (bool masks)
    s, b, h, a = 128, 2, 64, 4
    spec = _gpt2_spec(h=h, a=a)
    st = ActivationSettings(b, s, "bfloat16", "bfloat16", False, "eager", "none", device="cuda")
    # WHEN the saved tensors of one layer are summed
    per_layer = sum(t.nbytes for t in saved_tensors(spec, st) if t.layer == 0)
    # THEN they are s*b*h*(34 + 5*a*s/h) bytes, plus the two LayerNorms' fp32 mean and rstd,
    # which the paper leaves out
    assert per_layer == s * b * h * 34 + 5 * a * s * s * b + 2 * 2 * 4 * s * b


def test_korthikanti_breakdown_by_block():
    s, b, h, a = 64, 2, 64, 4
    st = ActivationSettings(b, s, "bfloat16", "bfloat16", False, "eager", "none", device="cuda")
    layer0 = [t for t in saved_tensors(_gpt2_spec(h=h, a=a), st) if t.layer == 0]
    by_module = Counter()
    for t in layer0:
        by_module[t.module.rsplit(".", 1)[-1]] += t.nbytes
    assert by_module["attn"] == 11 * s * b * h + 5 * a * s * s * b  # attention block
    assert by_module["mlp"] == 19 * s * b * h  # MLP block
    assert by_module["ln_1"] + by_module["ln_2"] == 4 * s * b * h + 16 * s * b  # LayerNorm inputs


def test_flash_attention_drops_the_quadratic_term():
    spec = _gpt2_spec(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

    def per_layer(s):
        st = ActivationSettings(2, s, "bfloat16", "float32", True, "flash", "none", device="cuda")
        return sum(t.nbytes for t in saved_tensors(spec, st) if t.layer == 0)

    # affine in s (the constant: autocast's weight copies and the philox seed): no a*s^2 scores
    assert per_layer(384) - per_layer(256) == per_layer(256) - per_layer(128)
    st = ActivationSettings(2, 128, "bfloat16", "float32", True, "eager", "none", device="cuda")
    assert sum(t.nbytes for t in saved_tensors(spec, st) if t.layer == 0) > per_layer(128) + 2 * 4 * 128**2


def test_cpu_dropout_keeps_noise_in_the_input_dtype_cuda_keeps_bool():
    spec = _gpt2_spec()
    cpu = ActivationSettings(2, 16, "float32", "float32", False, "eager", "none", device="cpu")
    cuda = ActivationSettings(2, 16, "float32", "float32", False, "eager", "none", device="cuda")
    masks_cpu = {t.dtype for t in saved_tensors(spec, cpu) if t.op == "dropout"}
    masks_cuda = {t.dtype for t in saved_tensors(spec, cuda) if t.op == "dropout"}
    assert masks_cpu == {"float32"} and masks_cuda == {"bool"}


def test_full_checkpointing_keeps_layer_inputs_only():
    _, spec = build("llama", "sdpa")
    st = settings(2, 32, False, "sdpa", "full")
    inside = [t for t in saved_tensors(spec, st) if t.layer is not None]
    assert {t.op for t in inside} == {"checkpoint"}
    hidden = [t for t in inside if t.name == "embedding" or t.name == "add"]
    assert [t.nbytes for t in hidden] == [2 * 32 * 64 * 4] * 2  # one (b, s, h) input per layer


def test_selective_checkpointing_drops_scores_and_keeps_qkv():
    _, spec = build("gpt2", "eager")
    none = saved_tensors(spec, settings(2, 32, False, "eager", "none"))
    sel = saved_tensors(spec, settings(2, 32, False, "eager", "selective"))
    assert not [t for t in sel if t.op in ("softmax", "matmul")]
    assert [t for t in none if t.op == "softmax"]
    assert sum(t.nbytes for t in sel) < sum(t.nbytes for t in none)


def test_resolve_attention_picks_pytorch_backends():
    assert resolve_attention("eager", "cpu", "float32") == "eager"
    assert resolve_attention("sdpa", "cpu", "float32", dropout=0.0) == "flash"
    assert resolve_attention("sdpa", "cpu", "bfloat16", dropout=0.1) == "math"
    assert resolve_attention("sdpa", "cuda", "bfloat16", head_dim=64) == "flash"
    assert resolve_attention("sdpa", "cuda", "float32", head_dim=64) == "efficient"
    assert resolve_attention("flash", "cuda", "float16") == "flash"


@pytest.mark.parametrize(
    "args,match",
    [
        (("flash", "cpu", "bfloat16"), "needs a CUDA device"),
        (("flash", "cuda", "float32"), "float16/bfloat16 only"),
        (("xformers", "cuda", "float16"), "unknown attention implementation 'xformers'"),
    ],
)
def test_resolve_attention_rejects_impossible_combinations(args, match):
    with pytest.raises(MemprofUserError, match=match):
        resolve_attention(*args)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(compute_dtype="fp8"), "unknown compute dtype 'fp8'"),
        (dict(checkpointing="some"), "unknown checkpointing mode 'some'"),
        (dict(attention="flash2"), "unknown attention implementation 'flash2'; did you mean flash"),
    ],
)
def test_settings_validation(kw, match):
    base = dict(
        batch_size=1,
        seq_len=8,
        compute_dtype="float32",
        param_dtype="float32",
        autocast=False,
        attention="eager",
        checkpointing="none",
    )
    with pytest.raises(MemprofUserError, match=match):
        ActivationSettings(**{**base, **kw})


def test_unknown_model_type_names_the_supported_ones():
    class Spec:
        model_type, config = "mamba", {}

    with pytest.raises(MemprofUserError, match="unknown model type for activation accounting 'mamba'"):
        saved_tensors(Spec(), settings(1, 8, False, "eager"))
    assert set(SUPPORTED_MODEL_TYPES) >= {"gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt", "bert", "vit"}
