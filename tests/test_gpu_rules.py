"""A named GPU changes what PyTorch runs: its attention kernel, and warnings for what it lacks."""

import pytest

from memprof.estimators.errors import MemprofUserError
from memprof.estimators.estimation import estimate


@pytest.mark.parametrize(
    "gpu, precision, kernel",
    [
        (None, "bf16-mixed", "flash"),  # no GPU named: any sm80+ GPU
        ("a100-80gb", "bf16-mixed", "flash"),
        ("h100-80gb", "16-mixed", "flash"),
        ("v100-32gb", "16-mixed", "efficient"),  # no flash before sm80
        ("v100-32gb", "bf16-mixed", "math"),  # memory-efficient SDPA takes no bfloat16 before sm80
    ],
)
def test_attention_auto_is_pytorchs_choice_on_that_gpu(gpu, precision, kernel):
    result = estimate("gpt2-1.5b", precision=precision, gpu=gpu)
    assert result.record.settings.attention_kernel == kernel


def test_the_math_kernel_keeps_the_scores_so_a_v100_needs_more_activation_memory():
    a100 = estimate("gpt2-1.5b", gpu="a100-80gb").record
    v100 = estimate("gpt2-1.5b", gpu="v100-32gb").record
    # the math decomposition saves the s x s attention probabilities of every head and layer
    assert v100.activations_saved - a100.activations_saved >= 48 * 25 * 1024 * 1024 * 2


def test_bf16_before_sm80_is_a_warning_and_flash_attention_2_an_error():
    warnings = estimate("gpt2-1.5b", gpu="v100-32gb").record.warnings
    assert any("bf16-mixed on sm70" in w for w in warnings)
    assert not any("sm70" in w for w in estimate("gpt2-1.5b", gpu="v100-32gb", precision="16-mixed").record.warnings)
    with pytest.raises(MemprofUserError, match="FlashAttention only supports Ampere GPUs or newer"):
        estimate("gpt2-1.5b", gpu="v100-32gb", attention="flash")
