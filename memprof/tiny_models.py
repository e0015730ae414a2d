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
    "qwen3": "causal-lm",
    "phi3": "causal-lm",
    "gemma2": "causal-lm",
    "gemma3_text": "causal-lm",
    "mixtral": "causal-lm",
    "qwen3_moe": "causal-lm",
    "t5": "seq2seq-lm",
}
# the families issue 11 added (see _new_decoder_config) are trained by the validation matrix and checked by
# tests/test_families_new.py; FAMILIES, which tests/test_activations.py and test_timeline.py cross with
# both attention implementations, are the others
NEW_DECODERS = ("qwen3", "phi3", "gemma2", "gemma3_text", "mixtral", "qwen3_moe")
NEW_FAMILIES = (*NEW_DECODERS, "t5")
FAMILIES = tuple(f for f in TASKS if f not in NEW_FAMILIES)
# the attn_implementations transformers runs a family with (Gemma 2 refuses sdpa: _supports_sdpa = False)
ATTENTIONS: dict[str, tuple[str, ...]] = {"gemma2": ("eager",)}
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
    if family in NEW_DECODERS:
        return _new_decoder_config(family, common, **kw)
    if family == "t5":  # the encoder and the decoder 2 blocks each, T5's default dropout (0.1)
        fields: dict[str, Any] = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, **common)
        fields["decoder_start_token_id"] = 0  # as the published configs state it (T5Config has no default)
        return transformers.T5Config(**{**fields, **kw})
    raise ValueError(family)


# the families of issue 11 (estimators/families/_decoder.py): 2 layers, hidden 64, 4 heads over 2 kv
# heads; Gemma's sliding window (16) is shorter than the matrix's sequences (32), so both layer types
# and their masks run; Gemma 3 alternates sliding and global layers
def _new_decoder_config(family: str, common: dict[str, Any], **kw: Any) -> transformers.PreTrainedConfig:
    fields: dict[str, Any] = dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        **common,
    )
    if family in ("qwen3", "qwen3_moe", "gemma2", "gemma3_text"):
        fields["head_dim"] = 16
    if family == "phi3":
        fields.update(pad_token_id=0, bos_token_id=0, eos_token_id=0)
    # mixtures of experts: 4 experts, 2 per token, routed for real by the randomly initialised router
    if family == "mixtral":
        fields.update(num_local_experts=4, num_experts_per_tok=2)
    if family == "qwen3_moe":
        fields.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True)
    if family in ("gemma2", "gemma3_text"):
        fields.update(query_pre_attn_scalar=16, sliding_window=16, pad_token_id=0)
    if family == "gemma3_text":
        fields["layer_types"] = ["sliding_attention", "full_attention"]
    fields.update(kw)
    cls = {
        "qwen3": transformers.Qwen3Config,
        "phi3": transformers.Phi3Config,
        "gemma2": transformers.Gemma2Config,
        "gemma3_text": transformers.Gemma3TextConfig,
        "mixtral": transformers.MixtralConfig,
        "qwen3_moe": transformers.Qwen3MoeConfig,
    }[family]
    return cls(**fields)


# the auto class of each task head (memprof estimate --head)
AUTO_HEADS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "image-classification": "AutoModelForImageClassification",
    "image-cls": "AutoModelForImageClassification",
    "seq-cls": "AutoModelForSequenceClassification",
    "token-cls": "AutoModelForTokenClassification",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
}
NUM_LABELS = 3  # the classification heads' tiny models: 3 labels (not transformers' default 2)


def build(family: str, attention: str = "eager", seed: int = 0, head: str | None = None, **overrides):
    """A tiny model of `family` in train mode and the ModelSpec of the same config; `head`: a task head
    (seq-cls, token-cls) instead of the family's own. Sequence classification on a decoder gets
    pad_token_id 0 (no batch token is 0 or 1), which transformers needs for a batch larger than 1."""
    torch.manual_seed(seed)
    task = head or TASKS[family]
    if task in ("seq-cls", "token-cls"):
        overrides.setdefault("num_labels", NUM_LABELS)
        if task == "seq-cls" and family not in ("bert", "opt"):
            overrides.setdefault("pad_token_id", 0)
    cfg = _config(family, attention, **overrides)
    head_cls = getattr(transformers, AUTO_HEADS[task])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = head_cls.from_config(cfg)
    if getattr(model, "loss_type", "") is None:
        # transformers 5 leaves it unset on from_config, then logs at the first loss that it falls back
        # to ForCausalLM: set that same fallback, so the loss is unchanged and nothing is logged
        model.loss_type = "ForCausalLM"
    model.train()
    spec = ModelSpec(f"tiny-{family}", cfg.model_type, cfg.to_dict(), task)
    return model, spec


def batch(
    family: str, batch_size: int, seq_len: int, seed: int = 1, dtype=torch.float32, head: str | None = None
) -> dict:
    """Inputs and labels as a training loop holds them (the dict stays referenced all step); labels
    of a classification head: one class per sequence (seq-cls) or per token (token-cls)."""
    g = torch.Generator().manual_seed(seed)
    if head in ("seq-cls", "token-cls"):
        ids = torch.randint(2, VOCAB, (batch_size, seq_len), generator=g)
        shape = (batch_size,) if head == "seq-cls" else (batch_size, seq_len)
        return {"input_ids": ids, "labels": torch.randint(0, NUM_LABELS, shape, generator=g)}
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


def apply_lora(
    model,
    *,
    rank: int,
    targets: str | None = None,
    dropout: float = 0.0,
    quantize: str | None = None,
    double_quant: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    checkpointing: bool = False,
):
    """`model` trained through peft's LoRA, as its users write it (memprof.estimators.adapters):
    `get_peft_model(model, LoraConfig(r, target_modules, lora_dropout))`; with `quantize` the model is
    first reloaded through transformers' bitsandbytes integration (saved to a temporary folder and
    `from_pretrained(..., quantization_config=BitsAndBytesConfig(...))` on the CPU: no download) and
    prepared with `prepare_model_for_kbit_training` (non-reentrant checkpointing when `checkpointing`).
    targets: None (peft's default), "all-linear" or names separated by commas."""
    import tempfile

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantize is not None:
        from memprof._imports import import_quietly

        import_quietly("bitsandbytes")  # it logs at import (a kernel it cannot load on this CPU)
        if quantize == "int8":
            qconfig = transformers.BitsAndBytesConfig(load_in_8bit=True)
        else:
            qconfig = transformers.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=quantize,
                bnb_4bit_use_double_quant=double_quant,
                bnb_4bit_compute_dtype=compute_dtype,
            )
        loss_type = getattr(model, "loss_type", None)
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(folder)
            model = type(model).from_pretrained(
                folder,
                quantization_config=qconfig,
                device_map="cpu",
                dtype=next(model.parameters()).dtype,
                attn_implementation=model.config._attn_implementation,  # not saved with the config
            )
        model.loss_type = loss_type
        model.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
    target_modules: Any = None
    if targets is not None:
        target_modules = "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_modules, lora_dropout=dropout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
    peft_model.train()
    return peft_model
