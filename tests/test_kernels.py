"""Kernel availability by compute capability and PyTorch's SDPA choice (memprof.estimators.kernels).

The expected answers restate torch 2.13's sdp_utils.cpp filters case by case; where the installed
torch can answer without a GPU (is_bf16_supported's logic, the SDPA priority order), it is asked.
"""

import pytest

from memprof.estimators.errors import MemprofUserError, UnknownNameError
from memprof.estimators.gpus import get_gpu
from memprof.estimators.kernels import (
    SDPA_DEFAULT_PRIORITY,
    bf16_support,
    check_request,
    cudnn_sdpa,
    efficient_sdpa,
    flash_attention_2,
    flash_sdpa,
    pick_attention_kernel,
    sdpa_priority,
    tf32_supported,
)

V100, T4, A100, A10, RTX4090, H100 = (
    get_gpu(n) for n in ("v100-16gb", "t4", "a100-80gb", "a10", "rtx-4090", "h100-80gb")
)


@pytest.mark.parametrize(
    "gpu, dtype, head_dim, kernel",
    [
        (A100, "bfloat16", 64, "flash"),
        (A100, "float16", 128, "flash"),
        (H100, "bfloat16", 128, "flash"),
        (RTX4090, "float16", 64, "flash"),
        (A100, "float32", 64, "efficient"),  # flash takes 16-bit only
        (V100, "float16", 64, "efficient"),  # flash needs sm80+
        (T4, "float16", 64, "efficient"),
        (V100, "float32", 64, "efficient"),  # no tensor cores for fp32 on sm70: alignment 1
        (V100, "bfloat16", 64, "math"),  # efficient takes {half, float} below sm80
        (T4, "bfloat16", 128, "math"),
        (A100, "bfloat16", 320, "efficient"),  # flash: head dim <= 256
        (A100, "float16", 60, "flash"),  # flash pads the head dim; no multiple-of-8 rule for dense inputs
        (V100, "float16", 60, "math"),  # efficient: 60 % 8 != 0 for 16-bit
    ],
)
def test_sdpa_choice_follows_sdp_utils(gpu, dtype, head_dim, kernel):
    assert pick_attention_kernel(gpu, dtype, head_dim).kernel == kernel
    assert pick_attention_kernel(gpu, dtype, head_dim, attention="auto").kernel == kernel


def test_an_explicit_mask_rules_out_flash():
    choice = pick_attention_kernel(A100, "bfloat16", 64, has_mask=True)
    assert choice.kernel == "efficient"
    assert [c.kernel for c in choice.skipped] == ["flash"]
    assert "attn_mask" in choice.skipped[0].reason


def test_head_dim_above_192_in_training_on_sm86_89():
    # check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120
    assert not flash_sdpa(A10, "bfloat16", 200).ok
    assert flash_sdpa(A10, "bfloat16", 200, requires_grad=False).ok
    assert flash_sdpa(A10, "bfloat16", 256).ok  # > 224 without dropout is supported
    assert not flash_sdpa(A10, "bfloat16", 256, dropout=0.1).ok
    assert flash_sdpa(A100, "bfloat16", 200).ok  # sm80 has no such limit
    assert pick_attention_kernel(RTX4090, "bfloat16", 200).kernel == "efficient"


def test_causal_with_different_lengths_rules_out_flash():
    assert not flash_sdpa(A100, "float16", 64, is_causal=True, seq_q=1, seq_k=128).ok
    assert flash_sdpa(A100, "float16", 64, is_causal=True, seq_q=128, seq_k=128).ok


def test_efficient_alignment_is_the_gemm_alignment():
    # minimum_gemm_alignment: sm80+ fp32 -> 4; 16-bit with tensor cores -> 8; sm7x fp32 -> 1
    assert efficient_sdpa(A100, "float32", 36).ok and not efficient_sdpa(A100, "float32", 34).ok
    assert efficient_sdpa(A100, "float16", 40).ok and not efficient_sdpa(A100, "float16", 36).ok
    assert efficient_sdpa(V100, "float32", 33).ok
    assert not efficient_sdpa((3, 7), "float16", 64).ok  # below sm50


def test_cudnn_backend_limits():
    assert not cudnn_sdpa(V100, "float16", 64).ok  # sm80+
    assert not cudnn_sdpa(A100, "float32", 64).ok
    assert cudnn_sdpa(A100, "bfloat16", 128).ok
    assert not cudnn_sdpa(A100, "bfloat16", 256).ok  # 128 unless sm90/sm10x with cuDNN > 9.22
    assert cudnn_sdpa(H100, "bfloat16", 256, cudnn_version=92300).ok
    assert not cudnn_sdpa(H100, "bfloat16", 256, head_dim_v=128, cudnn_version=92300).ok  # backward pairs
    assert not cudnn_sdpa(A100, "bfloat16", 60).ok  # multiple of 8
    assert not cudnn_sdpa(A100, "bfloat16", 64, dropout=0.1).ok  # 1/16 resolution
    assert cudnn_sdpa(A100, "bfloat16", 64, dropout=0.125).ok
    assert not cudnn_sdpa(A100, "bfloat16", 64, cudnn_version=89000).ok


def test_priority_moves_cudnn_first_only_on_hopper_and_blackwell_with_new_cudnn():
    assert sdpa_priority(A100, cudnn_version=92000) == SDPA_DEFAULT_PRIORITY == ("flash", "efficient", "math", "cudnn")
    assert sdpa_priority(H100) == SDPA_DEFAULT_PRIORITY  # cuDNN version unknown: the default
    assert sdpa_priority(H100, cudnn_version=91500) == SDPA_DEFAULT_PRIORITY  # needs > 9.15.0
    assert sdpa_priority(H100, cudnn_version=91600)[0] == "cudnn"
    assert sdpa_priority(H100, cudnn_version=91600, cudnn_deprioritized=True) == SDPA_DEFAULT_PRIORITY
    assert sdpa_priority((10, 1), cudnn_version=91600, cuda_version="12.8") == SDPA_DEFAULT_PRIORITY
    assert sdpa_priority((10, 1), cudnn_version=91600, cuda_version="13.0")[0] == "cudnn"
    choice = pick_attention_kernel(H100, "bfloat16", 128, cudnn_version=91600)
    assert choice.kernel == "cudnn" and choice.priority[0] == "cudnn"


def test_default_priority_matches_installed_torch():
    torch = pytest.importorskip("torch")
    if not hasattr(torch._C, "_get_sdp_priority_order"):
        pytest.skip("this torch exposes no SDPA priority order")
    # ints of at::SDPBackend, the order select_sdp_backend walks (overrideable is never chosen by default)
    order = [torch._C._SDPBackend(i).name for i in torch._C._get_sdp_priority_order()]
    names = {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient", "MATH": "math", "CUDNN_ATTENTION": "cudnn"}
    assert tuple(names[n] for n in order if n in names) == SDPA_DEFAULT_PRIORITY


def test_flash_attention_2_package():
    assert flash_attention_2(A100, "bfloat16").ok and flash_attention_2(H100, "float16").ok
    assert "Ampere" in flash_attention_2(V100, "float16").reason
    assert not flash_attention_2(T4, "float16").ok
    assert not flash_attention_2(A100, "float32").ok
    with pytest.raises(MemprofUserError, match="Ampere"):
        pick_attention_kernel(T4, "float16", 64, attention="flash")
    fa2 = pick_attention_kernel(A100, "bfloat16", 64, attention="flash")
    assert (fa2.kernel, fa2.implementation) == ("flash", "flash_attention_2")
    eager = pick_attention_kernel(T4, "float16", 64, attention="eager")
    assert (eager.kernel, eager.implementation) == ("eager", "eager")
    assert pick_attention_kernel(A100, "bfloat16", 64).implementation == "sdpa"


def test_bf16_and_tf32_follow_torch_cuda():
    # torch.cuda.is_bf16_supported(): major >= 8 natively, else emulation (a bf16 tensor can be made)
    assert bf16_support(A100) == "native" and bf16_support(RTX4090) == "native"
    assert bf16_support(V100) == "emulated" and bf16_support(T4) == "emulated"
    # is_tf32_supported() == is_bf16_supported(including_emulation=False)
    assert tf32_supported(A100) and not tf32_supported(T4) and not tf32_supported("7.0")


def test_requests_impossible_or_degraded():
    assert check_request(A100, "bf16-mixed").level == "ok"
    warn = check_request(V100, "bf16-mixed")
    assert warn.level == "warning" and "emulation" in warn.message
    assert check_request(T4, "bf16").level == "warning"  # an alias of bf16-true
    assert check_request(T4, "16-mixed").level == "ok"
    err = check_request(T4, "16-mixed", "flash")
    assert err.level == "error" and "Ampere" in err.message
    assert check_request(A100, "32-true", "flash").level == "error"  # flash-attn: fp16/bf16 only
    assert check_request(T4, "32-true", tf32=True).level == "warning"
    with pytest.raises(UnknownNameError):
        check_request(A100, "fp8")


@pytest.mark.parametrize("bad", [{"dtype": "int8"}, {"head_dim": 0}, {"head_dim": 64.0}])
def test_bad_inputs_are_user_errors(bad):
    args = {"gpu": A100, "dtype": "float16", "head_dim": 64, **bad}
    with pytest.raises(MemprofUserError):
        pick_attention_kernel(**args)
    with pytest.raises(MemprofUserError, match="attention"):
        pick_attention_kernel(A100, "float16", 64, attention="xformers")
