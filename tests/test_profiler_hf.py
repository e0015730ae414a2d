"""A real Hugging Face model trained with a real AdamW, measured against PyTorch's MemTracker."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.distributed._tools.mem_tracker import MemTracker  # noqa: E402

import memprof  # noqa: E402

pytestmark = pytest.mark.slow


def _gpt2() -> tuple:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 128, (2, 16))

    def step() -> None:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    return model, opt, ids, step


def _storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def test_adamw_state_bytes_equal_the_sum_of_its_state_tensors() -> None:
    model, opt, _ids, step = _gpt2()
    with memprof.track(model, opt) as run:
        step()  # the first step creates the states inside the region
        step()
    d = run.to_dict()
    states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    params = list(model.parameters())  # the tied lm_head/wte weight appears once
    assert d["model_states"]["optimizer_states"] == _storage_bytes(states)
    # and that sum is exp_avg + exp_avg_sq (fp32, like the params) + one fp32 step per tensor
    n = sum(p.numel() for p in params)
    assert d["model_states"]["optimizer_states"] == 2 * 4 * n + 4 * len(params)
    assert d["optimizer_state_breakdown"] == {"step": 4 * len(params), "exp_avg": 4 * n, "exp_avg_sq": 4 * n}
    assert d["model_states"]["parameters"] == _storage_bytes(params) == 4 * n
    assert d["model_states"]["gradients"] == 4 * n
    assert d["settings"]["model"] == "GPT2LMHeadModel" and d["settings"]["parameters"] == n
    assert d["settings"]["input_shapes"] == [[2, 16]]
    assert d["settings"]["optimizer"] == "AdamW" and d["settings"]["optimizer_defaults"]["weight_decay"] == 0.01
    assert d["settings"]["optimizer_steps"] == 2
    assert sum(v for v in d["peak"]["by_category"].values() if v) == d["peak"]["allocated"]


def test_peak_equals_memtrackers_peak_on_the_same_step() -> None:
    model, opt, ids, step = _gpt2()
    step()  # warm up: states exist, as in steady training
    mt = MemTracker()
    mt.track_external(model, opt, ids)
    with mt:
        step()
    theirs = mt.get_tracker_snapshot("peak")[torch.device("cpu")]
    with memprof.track(model, opt) as run:
        step()
    ours = run.to_dict()["peak"]
    # the same step is deterministic, so both trackers see the same storages
    assert abs(ours["allocated"] - theirs["Total"]) <= 0.01 * theirs["Total"]
    by_cat = ours["by_category"]
    assert by_cat["parameters"] == theirs["Parameter"]
    assert by_cat["optimizer_states"] == theirs["Optstate"]
    print(f"\nmemprof peak {ours['allocated']} B, MemTracker peak {theirs['Total']} B, phase {ours['phase']}")


def _one_step(checkpointing: bool, autocast: bool) -> dict:
    model, opt, ids, _ = _gpt2()
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    with memprof.track(model, opt) as run:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
    return run.to_dict()


@pytest.mark.parametrize("autocast", [False, True])
def test_hf_gradient_checkpointing_moves_activations_into_backward(autocast: bool) -> None:
    plain, ckpt = _one_step(False, autocast), _one_step(True, autocast)
    # forward keeps far fewer activations; backward recreates them (and names them activations)
    assert (
        ckpt["phases"]["forward"]["peak"]["by_category"]["activations"]
        < plain["phases"]["forward"]["peak"]["by_category"]["activations"] / 4
    )
    assert plain["phases"]["backward"]["created_bytes"]["activations"] == 0
    assert (
        ckpt["phases"]["backward"]["created_bytes"]["activations"]
        > plain["phases"]["forward"]["peak"]["by_category"]["activations"]
    )
    assert ckpt["model_states"] == plain["model_states"]
    assert ckpt["settings"]["autocast_dtype"] == ("bfloat16" if autocast else None)
