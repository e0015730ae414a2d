"""Tiny real transformers models and two measurements of their training memory.

Shared by tests/test_activations.py and tests/test_timeline.py:
- `build`, `batch`, `train_step`, `selective_checkpointing`: the tiny models of every family and
  their training step, from memprof.tiny_models (shared with `memprof validate`);
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
from torch.distributed._tools.mem_tracker import MemTracker

from memprof.estimators.activations import ActivationSettings
from memprof.estimators.dtypes import dtype_bytes
from memprof.tiny_models import FAMILIES, TASKS, VOCAB, batch, build, selective_checkpointing, train_step  # noqa: F401 (re-exported)
from memprof.tiny_models import autocast_context as _autocast


def settings(
    batch_size: int, seq_len: int, autocast: bool, attention: str, checkpointing: str = "none", **kw
) -> ActivationSettings:
    return ActivationSettings(
        batch_size=batch_size,
        seq_len=seq_len,
        compute_dtype="bfloat16" if autocast else "float32",
        param_dtype="float32",
        autocast=autocast,
        attention=attention,
        checkpointing=checkpointing,
        **kw,
    )


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


def measure_step(
    family: str,
    attention: str,
    autocast: bool,
    checkpointing: str,
    batch_size: int,
    seq_len: int,
    micro_batches: int = 1,
    warm: bool = True,
    hold_output: bool = True,
    dtype: torch.dtype = torch.float32,
):
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
    return dict(
        param_bytes=e * n,
        grad_bytes=e * n,
        grad_dtype=dtype,
        optimizer_state_bytes=2 * e * n + 4 * len(sizes),
        optimizer_temporaries_bytes=e * temps,
    )
