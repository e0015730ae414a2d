"""`trace_capture` replays a recorded CUDA autocast on CPU tensors as the tracer runs it (memprof.tracer.live).

A captured CUDA run replayed on CPU tensors with `device="cuda"`: `torch.autocast("cuda")` would not touch
them (on this CPU-only torch it is even disabled), so the step ran in float32. The replay runs it as
`memprof.tracer.cuda_autocast.CudaAutocast` (CPU autocast under CUDA's op lists), like `memprof.trace`.
The capture here comes from a CPU run under CPU autocast whose recorded autocast entries are then made
CUDA's (a CUDA run cannot be recorded on this machine).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import memprof
from memprof.tracer.live import trace_capture


class Net(torch.nn.Module):
    """layer_norm and gelu: lower precision under CPU autocast, float32 / the input's dtype under CUDA's."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 256)
        self.ln = torch.nn.LayerNorm(256)
        self.b = torch.nn.Linear(256, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.gelu(self.ln(self.a(x))))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(32, 64), torch.randn(32, 8)


def _capture(autocast: bool):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters())
    x, y = _data()
    with memprof.track(model, opt, warmup=1) as run:
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = F.mse_loss(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
    return run.step_capture


def _as_cuda(state: tuple) -> tuple:
    """The recorded autocast of the same step run on CUDA: CUDA autocast on, CPU autocast off."""
    return tuple((("cuda", on, dtype) if device == "cpu" else ("cpu", False, dtype)) for device, on, dtype in state)


def _factory():
    x, y = _data()
    torch.manual_seed(0)
    return memprof.Workload(Net(), x, loss=lambda out, inputs: F.mse_loss(out.float(), y))


def test_a_recorded_cuda_autocast_runs_cuda_autocasts_op_lists():
    capture = _capture(autocast=True)
    cpu_policy = trace_capture(capture, device="cuda").record.activations_saved
    capture.autocast = _as_cuda(capture.autocast)
    for call in capture.calls:
        call.autocast = _as_cuda(call.autocast)
    assert any(on for device, on, _ in capture.autocast if device == "cuda")
    replayed = trace_capture(capture, device="cuda").record
    assert replayed.settings.precision == "bf16-mixed"
    # what memprof.trace saves for the same step on cuda (the loop keeps no output through backward)
    traced = memprof.trace(_factory, optimizer="adamw", precision="bf16-mixed", device="cuda", keep_output=False)
    assert replayed.activations_saved == traced.record.activations_saved
    # neither the float32 step (no autocast: what torch.autocast("cuda") did here) nor CPU autocast's lists
    float32 = trace_capture(_capture(autocast=False), device="cuda").record.activations_saved
    assert len({replayed.activations_saved, float32, cpu_policy}) == 3
    # nothing registered outlives the replay: CPU autocast runs its own lists again
    assert trace_capture(_capture(autocast=True), device="cuda").record.activations_saved == cpu_policy
