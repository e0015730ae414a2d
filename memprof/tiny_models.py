"""Tiny real Hugging Face models of every supported family, their batches and their training step.

Shared by the validation matrix (`memprof validate`) and the tests (tests/activation_cases.py):
- `build(family, attention, **overrides)` -> (model, ModelSpec): a 2-layer, hidden-64 model of each
  supported family built from a config (no downloads), and the ModelSpec of the same config;
- `batch(family, batch_size, seq_len)`: inputs and labels as a data loader hands them over;
- `train_step(...)`: the usual loop body (forward, backward, optimizer step, zero_grad);
- `selective_checkpointing(model)`: Megatron's selective recomputation of the attention core.

Imports torch and transformers: only the validation path and the tests load this module.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any

import torch

with warnings.catch_warnings():
    # transformers imports tqdm.auto, which warns in a notebook without ipywidgets: not memprof's to show
    warnings.simplefilter("ignore")
    import transformers

from memprof.estimators.models import ModelSpec

VOCAB = 128
TASKS = {
    "gpt2": "causal-lm",
    "llama": "causal-lm",
    "mistral": "causal-lm",
    "qwen2": "causal-lm",
    "gpt_neox": "causal-lm",
    "opt": "causal-lm",
    "bert": "masked-lm",
    "vit": "image-classification",
}
FAMILIES = tuple(TASKS)
IMAGE_SIZE = 32  # ViT: 32x32 images in 8x8 patches -> 16 patches + the class token


def _config(family: str, attention: str, **kw: Any) -> transformers.PreTrainedConfig:
    # keyword arguments every config takes at run time; attn_implementation is not in the configs'
    # typed signatures (PreTrainedConfig takes it), hence Any
    common: dict[str, Any] = dict(vocab_size=VOCAB, attn_implementation=attention)
    if family == "gpt2":
        return transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0, **common, **kw
        )
    if family in ("llama", "mistral", "qwen2"):
        cls = {
            "llama": transformers.LlamaConfig,
            "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config,
        }[family]
        return cls(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            **common,
            **kw,
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
            bos_token_id=0,
            eos_token_id=0,
            **common,
            **kw,
        )
    if family == "opt":
        return transformers.OPTConfig(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            ffn_dim=256,
            word_embed_proj_dim=64,
            max_position_embeddings=128,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
            **common,
            **kw,
        )
    if family == "bert":
        return transformers.BertConfig(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
            **common,
            **kw,
        )
    if family == "vit":
        common.pop("vocab_size")
        # num_labels: taken by PreTrainedConfig at run time, but missing from ViTConfig's typed signature
        return transformers.ViTConfig(  # type: ignore[call-arg]
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=256,
            image_size=IMAGE_SIZE,
            patch_size=8,
            num_labels=10,
            **common,
            **kw,
        )
    raise ValueError(family)


def build(family: str, attention: str = "eager", seed: int = 0, **overrides):
    """A tiny model of `family` in train mode and the ModelSpec of the same config."""
    torch.manual_seed(seed)
    cfg = _config(family, attention, **overrides)
    head = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "image-classification": transformers.AutoModelForImageClassification,
    }[TASKS[family]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = head.from_config(cfg)
    if getattr(model, "loss_type", "") is None:
        # transformers 5 leaves it unset on from_config, then logs at the first loss that it falls back
        # to ForCausalLM: set that same fallback, so the loss is unchanged and nothing is logged
        model.loss_type = "ForCausalLM"
    model.train()
    spec = ModelSpec(f"tiny-{family}", cfg.model_type, cfg.to_dict(), TASKS[family])
    return model, spec


def batch(family: str, batch_size: int, seq_len: int, seed: int = 1, dtype=torch.float32) -> dict:
    """Inputs and labels as a training loop holds them (the dict stays referenced all step)."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {
            "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g, dtype=dtype),
            "labels": torch.randint(0, 10, (batch_size,), generator=g),
        }
    ids = torch.randint(2, VOCAB, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def autocast_context(enabled: bool, dtype: torch.dtype = torch.bfloat16):
    """CPU autocast to `dtype` (bfloat16 unless told) when enabled."""
    return torch.autocast("cpu", dtype=dtype) if enabled else contextlib.nullcontext()


def train_step(
    model, optimizer, inputs: dict, autocast: bool, micro_batches: int = 1, hold_output: bool = True, tracker=None
) -> None:
    """The usual loop body: out = model(**batch); out.loss.backward(); step; zero_grad.
    hold_output=False: `loss = model(**batch).loss`, so the output (logits, cache) dies at once."""
    out = None
    for i in range(micro_batches):
        if i and tracker is not None:
            tracker.reset_mod_stats()  # MemTracker's per-module stats need this; the peak stays
        out = None
        with autocast_context(autocast):
            if hold_output:
                out = model(**inputs)
                loss = out.loss
            else:
                loss = model(**inputs).loss
        loss.backward()
        del loss
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    del out


@contextlib.contextmanager
def selective_checkpointing(model):
    """Recompute only the attention core (Megatron's selective recomputation): while active, the
    model's eager attention function and transformers' sdpa function run under
    torch.utils.checkpoint (non-reentrant), which keeps q, k, v (and the mask) instead of scores,
    probabilities and dropout masks."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    # the modeling module of the model's family (transformers.models.gpt2.modeling_gpt2, ...): its
    # attention function is looked up and swapped by name
    modeling: Any = sys.modules[type(model).__module__]
    orig_eager = modeling.eager_attention_forward
    orig_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def wrap(fn):
        def checkpointed(module, q, k, v, mask, **kw):
            return torch.utils.checkpoint.checkpoint(
                lambda q, k, v: fn(module, q, k, v, mask, **kw), q, k, v, use_reentrant=False
            )

        return checkpointed

    modeling.eager_attention_forward = wrap(orig_eager)
    ALL_ATTENTION_FUNCTIONS["sdpa"] = wrap(orig_sdpa)
    try:
        yield
    finally:
        modeling.eager_attention_forward = orig_eager
        del ALL_ATTENTION_FUNCTIONS["sdpa"]
