"""The activation replay under CUDA autocast against CUDA autocast's policy run on real tensors.

Ground truth: a tiny transformers model of each family runs its forward under
`cuda_policy_on_cpu` (tests/cuda_autocast_policy.py): CUDA autocast's casting policies, read from
torch's own header and dispatcher (not from memprof.estimators.autocast), applied at the autocast
dispatch key to real CPU tensors. Autograd's saved tensors (each storage once, parameters excluded)
are then compared, size and dtype, with the replay's `device="cuda"` saved tensors. This checks the
policy's application (which op runs and saves in which dtype), not a GPU: the kernels below autocast
are the CPU's, so the models run eager attention in eval mode (no dropout), where CPU and CUDA kernels
save the same tensors.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

from activation_cases import FAMILIES, batch, build, measure_saved
from cuda_autocast_policy import HEADER, cuda_policy_on_cpu
from memprof.estimators.activations import ActivationSettings, saved_tensors

pytestmark = pytest.mark.skipif(not os.path.exists(HEADER), reason="torch wheel without headers")


def _measure(model, inputs) -> Counter:
    """(bytes, dtype) of every storage autograd saved, as measure_saved finds them (dtype added)."""
    rows: list[tuple[int, str]] = []
    out = model(**inputs)
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
    seen_nodes, seen, stack = set(), set(), [out.loss.grad_fn]
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
                if not isinstance(t, torch.Tensor) or (t.dim() == 0 and t.dtype == torch.float64):
                    continue
                st = t.untyped_storage()
                if st.data_ptr() in params or st.data_ptr() in seen or st.nbytes() == 0:
                    continue
                seen.add(st.data_ptr())
                rows.append((st.nbytes(), str(t.dtype).removeprefix("torch.")))
        stack.extend(f for f, _ in fn.next_functions)
    return Counter(rows)


def _replay(spec, dtype: str, device: str) -> Counter:
    settings = ActivationSettings(2, 32, dtype, "float32", True, "eager", "none", training=False, device=device)
    return Counter((t.nbytes, t.dtype) for t in saved_tensors(spec, settings))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_replay_saves_what_cuda_autocast_saves(family, dtype):
    # GIVEN a tiny model in eval mode (no dropout: the CPU keeps noise where CUDA keeps a bool mask)
    model, spec = build(family, "eager")
    model.eval()
    # WHEN its forward runs under CUDA autocast's policy
    with cuda_policy_on_cpu(getattr(torch, dtype)):
        measured = _measure(model, batch(family, 2, 32))
    # THEN the replay for CUDA saves exactly those tensors, size and dtype
    assert _replay(spec, dtype, "cuda") == measured


def test_cuda_and_cpu_autocast_differ_where_the_lists_differ():
    # GPT-2's gelu_new (pow is on CUDA's fp32 list) and BERT's unmasked softmax, MLM-head layer_norm
    # and cross-entropy run in float32 on CUDA, in bfloat16 under CPU autocast
    for family, extra in (("gpt2", 196608), ("bert", 90112)):
        model, spec = build(family, "eager")
        model.eval()
        with cuda_policy_on_cpu(torch.bfloat16):
            cuda = sum(n * c for (n, _), c in _measure(model, batch(family, 2, 32)).items())
        cpu = sum(n for _, _, n in measure_saved(model, batch(family, 2, 32), autocast=True))
        assert cuda - cpu == extra
        assert sum(n * c for (n, _), c in _replay(spec, "bfloat16", "cuda").items()) == cuda
        assert sum(n * c for (n, _), c in _replay(spec, "bfloat16", "cpu").items()) == cpu


def test_the_policy_kernels_are_cuda_autocasts_and_go_away():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with cuda_policy_on_cpu(torch.bfloat16) as policies:
        assert policies["aten::layer_norm"] == "fp32" and policies["aten::softmax.int"] == "fp32_set_opt_dtype"
        assert torch.softmax(x, -1).dtype == torch.float32
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.float32
        assert torch.mm(torch.randn(4, 4), torch.randn(4, 4)).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast's own table again
        assert torch.softmax(x, -1).dtype == torch.bfloat16
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.bfloat16
