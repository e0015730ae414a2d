"""Model states summed tensor by tensor: each tensor's dtype, gradients and states only where trainable."""

from memprof.estimators.estimation import model_state_bytes
from memprof.estimators.optimizers import get_optimizer
from memprof.estimators.precision import get_precision
from memprof.estimators.tensors import ParamTensor


class _Model:
    def __init__(self, *tensors: ParamTensor) -> None:
        self._tensors = tensors

    def parameter_tensors(self) -> tuple[ParamTensor, ...]:
        return self._tensors


def test_frozen_tensors_have_no_gradient_and_no_optimizer_state():
    # GIVEN a 1000 x 100 frozen base weight stored as uint8, and two trainable fp32 adapters
    model = _Model(
        ParamTensor("base.weight", (1000, 100), dtype="uint8", trainable=False),
        ParamTensor("lora_A.weight", (8, 100), dtype="float32"),
        ParamTensor("lora_B.weight", (1000, 8), dtype="float32"),
    )
    # WHEN AdamW trains it in 32-true on the CPU
    by_cat, breakdown = model_state_bytes(model, get_optimizer("adamw"), get_precision("32-true"), "cpu")
    adapters = 8 * 100 + 1000 * 8
    # THEN parameters are each tensor at its own dtype; gradients and states cover the adapters only
    assert by_cat["parameters"] == 1000 * 100 * 1 + adapters * 4
    assert by_cat["gradients"] == adapters * 4
    assert breakdown == {"step": 2 * 4, "exp_avg": adapters * 4, "exp_avg_sq": adapters * 4}


def test_tensors_without_a_dtype_take_the_precisions():
    model = _Model(ParamTensor("w", (10, 10)), ParamTensor("b", (10,), trainable=False))
    by_cat, breakdown = model_state_bytes(model, get_optimizer("sgd-momentum"), get_precision("16-master"), "cuda")
    assert by_cat == {"parameters": 110 * 2, "gradients": 100 * 2, "optimizer_states": 100 * 4 + 100 * 4}
    assert breakdown == {"momentum_buffer": 100 * 4, "master_weights": 100 * 4}
