"""Tiny real transformers models and two measurements of their training memory.

Shared by tests/test_activations.py and tests/test_timeline.py:
- `build(family, attention, **overrides)` -> (model, ModelSpec): a 2-layer, hidden-64 model of each
  supported family built from a config (no downloads);
- `measure_saved(...)`: every tensor autograd holds when the forward ends, found by walking the
  autograd graph from the loss and reading each node's `_saved_*` attributes, each storage once,
  parameters excluded (ground truth for `saved_tensors`);
- `measure_step(...)`: the peak of live tensor bytes of one steady-state training step (forward,
  backward, AdamW step, zero_grad) measured by torch.distributed._tools.mem_tracker.MemTracker,
  which counts CPU storages exactly.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import transformers
from torch.distributed._tools.mem_tracker import MemTracker

from memprof.estimators.activations import ActivationSettings
from memprof.estimators.dtypes import dtype_bytes
from memprof.estimators.models import ModelSpec

VOCAB = 128
TASKS = {"gpt2": "causal-lm", "llama": "causal-lm", "mistral": "causal-lm", "qwen2": "causal-lm",
         "gpt_neox": "causal-lm", "opt": "causal-lm", "bert": "masked-lm", "vit": "image-classification"}
FAMILIES = tuple(TASKS)


def _config(family: str, attention: str, **kw):
    common = dict(vocab_size=VOCAB, attn_implementation=attention)
    if family == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                       bos_token_id=0, eos_token_id=0, **common, **kw)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
        return cls(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, max_position_embeddings=128, **common, **kw)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                          intermediate_size=256, max_position_embeddings=128,
                                          bos_token_id=0, eos_token_id=0, **common, **kw)
    if family == "opt":
        return transformers.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      ffn_dim=256, word_embed_proj_dim=64, max_position_embeddings=128,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=1, **common, **kw)
    if family == "bert":
        return transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                       intermediate_size=256, max_position_embeddings=128, **common, **kw)
    if family == "vit":
        common.pop("vocab_size")
        return transformers.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      intermediate_size=256, image_size=32, patch_size=8, num_labels=10,
                                      **common, **kw)
    raise ValueError(family)


def build(family: str, attention: str = "eager", seed: int = 0, **overrides):
    """A tiny model of `family` in train mode and the ModelSpec of the same config."""
    torch.manual_seed(seed)
    cfg = _config(family, attention, **overrides)
    head = {"causal-lm": transformers.AutoModelForCausalLM, "masked-lm": transformers.AutoModelForMaskedLM,
            "image-classification": transformers.AutoModelForImageClassification}[TASKS[family]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = head.from_config(cfg)
    model.train()
    spec = ModelSpec(f"tiny-{family}", cfg.model_type, cfg.to_dict(), TASKS[family])
    return model, spec


def batch(family: str, batch_size: int, seq_len: int, seed: int = 1, dtype=torch.float32) -> dict:
    """Inputs and labels as a training loop holds them (the dict stays referenced all step)."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(batch_size, 3, 32, 32, generator=g, dtype=dtype),
                "labels": torch.randint(0, 10, (batch_size,), generator=g)}
    ids = torch.randint(2, VOCAB, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def settings(batch_size: int, seq_len: int, autocast: bool, attention: str, checkpointing: str = "none",
             **kw) -> ActivationSettings:
    return ActivationSettings(batch_size=batch_size, seq_len=seq_len,
                              compute_dtype="bfloat16" if autocast else "float32", param_dtype="float32",
                              autocast=autocast, attention=attention, checkpointing=checkpointing, **kw)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def measure_saved(model, inputs: dict, autocast: bool) -> list[tuple[str, str, int]]:
    """(node, attribute, bytes) of every distinct non-parameter storage autograd saved in forward."""
    with _autocast(autocast):
        out = model(**inputs)
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
    seen_nodes, seen_storages, rows = set(), set(), []
    stack = [out.loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen_nodes:
            continue
        seen_nodes.add(fn)
        for attr in dir(fn):
            if not attr.startswith("_saved_"):
                continue
            value = getattr(fn, attr)
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if not isinstance(t, torch.Tensor):
                    continue
                if t.dim() == 0 and t.dtype == torch.float64:
                    continue  # a python scalar wrapped for mul/div: not a storage the allocator sees
                st = t.untyped_storage()
                if st.data_ptr() in params or st.data_ptr() in seen_storages or st.nbytes() == 0:
                    continue
                seen_storages.add(st.data_ptr())
                rows.append((type(fn).__name__, attr, st.nbytes()))
        stack.extend(f for f, _ in fn.next_functions)
    return rows


def train_step(model, optimizer, inputs: dict, autocast: bool, micro_batches: int = 1,
               hold_output: bool = True, tracker=None) -> None:
    """The usual loop body: out = model(**batch); out.loss.backward(); step; zero_grad.
    hold_output=False: `loss = model(**batch).loss`, so the output (logits, cache) dies at once."""
    out = None
    for i in range(micro_batches):
        if i and tracker is not None:
            tracker.reset_mod_stats()   # MemTracker's per-module stats need this; the peak stays
        out = None
        with _autocast(autocast):
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


def measure_step(family: str, attention: str, autocast: bool, checkpointing: str, batch_size: int,
                 seq_len: int, micro_batches: int = 1, warm: bool = True, hold_output: bool = True,
                 dtype: torch.dtype = torch.float32):
    """Peak live tensor bytes (MemTracker) of one AdamW training step on a tiny model.

    warm: run one step first so the optimizer states exist (steady state); the batch is created
    inside the tracker, as a data loader would hand it over.
    Returns (peak bytes, model, spec, optimizer)."""
    model, spec = build(family, attention)
    model.to(dtype)
    if checkpointing == "full":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    selective = selective_checkpointing(model) if checkpointing == "selective" else contextlib.nullcontext()
    with selective:
        if warm:
            train_step(model, optimizer, batch(family, batch_size, seq_len, dtype=dtype), autocast)
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            inputs = {k: v.clone() for k, v in batch(family, batch_size, seq_len, dtype=dtype).items()}
            train_step(model, optimizer, inputs, autocast, micro_batches, hold_output, tracker)
            del inputs
    snap = tracker.get_tracker_snapshot("peak")
    return sum(d["Total"] for d in snap.values()), model, spec, optimizer


@contextlib.contextmanager
def selective_checkpointing(model):
    """Recompute only the attention core (Megatron's selective recomputation): while active, the
    model's eager attention function and transformers' sdpa function run under
    torch.utils.checkpoint (non-reentrant), which keeps q, k, v (and the mask) instead of scores,
    probabilities and dropout masks."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    modeling = sys.modules[type(model).__module__]
    orig_eager = modeling.eager_attention_forward
    orig_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def wrap(fn):
        def checkpointed(module, q, k, v, mask, **kw):
            return torch.utils.checkpoint.checkpoint(lambda q, k, v: fn(module, q, k, v, mask, **kw),
                                                     q, k, v, use_reentrant=False)
        return checkpointed

    modeling.eager_attention_forward = wrap(orig_eager)
    ALL_ATTENTION_FUNCTIONS["sdpa"] = wrap(orig_sdpa)
    try:
        yield
    finally:
        modeling.eager_attention_forward = orig_eager
        del ALL_ATTENTION_FUNCTIONS["sdpa"]


def adamw_bytes(spec, dtype: str = "float32") -> dict:
    """Model-state sizes for torch.optim.AdamW on the CPU (the single-tensor loop, no foreach):
    exp_avg and exp_avg_sq like each parameter plus a fp32 `step` scalar per parameter. Inside
    step(), `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)` holds sqrt and the
    quotient of parameter i while the previous parameter's `denom` is still referenced: the
    temporaries peak at max_i(2 * n_i + n_(i-1)) elements."""
    sizes = [t.numel for t in spec.parameter_tensors()]
    n = sum(sizes)
    temps = max(2 * size + (sizes[i - 1] if i else 0) for i, size in enumerate(sizes))
    e = dtype_bytes(dtype)
    return dict(param_bytes=e * n, grad_bytes=e * n, grad_dtype=dtype,
                optimizer_state_bytes=2 * e * n + 4 * len(sizes), optimizer_temporaries_bytes=e * temps)
