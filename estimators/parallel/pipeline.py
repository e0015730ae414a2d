"""Pipeline parallelism: one stage of `--pp N` stages, its layers, its micro-batches in flight.

The split (`split_layers`): the transformer blocks are cut into N·v contiguous chunks in order, as
even as possible, the earlier chunks taking one block more when the count does not divide (the rule
of `numpy.array_split`, which torchtitan's even split follows; Megatron requires it to divide); chunk
c runs on stage c mod N (v virtual stages per rank with interleaved 1F1B). The embeddings (and the
rotary / mask setup before the first block) live on the first stage, the final norm, head and loss on
the last, each weight once (a tied head keeps its own copy on the last stage, as Megatron does; not
modelled for tied models: an error).

What a stage holds at its peak: its model states, and the activations of the micro-batches it has
run forward but not yet backward (`in_flight`):
- GPipe (`ScheduleGPipe`): every micro-batch's forward, then every backward: M in flight;
- 1F1B (`Schedule1F1B`): stage s warms up with N − s forwards, then alternates: min(N − s, M);
- interleaved 1F1B (`ScheduleInterleaved1F1B`, v chunks per rank): the first rank warms up with
  (N − 1)·2 + (v − 1)·N chunk-forwards (Megatron's `get_num_warmup_microbatches`, torch's
  `_get_1f1b_rank_ops` with the same count), each a chunk of L / (N·v) blocks, so min(warmup + 1, M·v)
  chunks' activations are in flight.
Each micro-batch in flight holds what its forward saved, the stage's input (received, kept for the
backward: `fwd_cache`) and its output (sent, kept until its backward). A stage whose backward runs
while earlier micro-batches' gradients exist (every stage after its first backward) accumulates into
them, as gradient accumulation does: the estimate replays two micro-batches (the second with the
gradients resident) and adds the other micro-batches in flight to each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..autograd import Op, T, Trace
from ..errors import ParameterError
from ..tensors import ParamTensor
from ._base import layer_of

__all__ = ["PP_SCHEDULES", "PipelineStage", "in_flight", "split_layers"]

PP_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
MAX_STAGES = 4096


def split_layers(num_layers: int, chunks: int) -> list[range]:
    """The blocks of each of `chunks` contiguous chunks (module docstring: earlier chunks one more)."""
    base, extra = divmod(num_layers, chunks)
    out, start = [], 0
    for c in range(chunks):
        n = base + (1 if c < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def in_flight(schedule: str, stages: int, stage: int, microbatches: int, virtual: int = 1) -> int:
    """Micro-batch forwards (chunk forwards, interleaved) whose activations a stage holds at once."""
    if schedule == "gpipe":
        return microbatches
    if schedule == "1f1b":
        return min(stages - stage, microbatches)
    warmup = (stages - stage - 1) * 2 + (virtual - 1) * stages
    return min(warmup + 1, microbatches * virtual)


@dataclass(frozen=True)
class PipelineStage:
    """Stage `stage` of `stages` (`schedule`, `microbatches` per step, `virtual` chunks per rank)."""

    stages: int
    stage: int
    schedule: str = "1f1b"
    microbatches: int = 1
    virtual: int = 1

    def validate(self, num_layers: int) -> None:
        for name, value, low, high in (
            ("pp", self.stages, 1, MAX_STAGES),
            ("microbatches", self.microbatches, 1, 1 << 20),
            ("virtual_stages", self.virtual, 1, 64),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ParameterError(f"{{{name}}} must be a whole number from {low} to {high:,}, got {value!r}", name)
        if self.schedule not in PP_SCHEDULES:
            raise ParameterError(
                f"invalid {{pp_schedule}} {self.schedule!r}; valid: {', '.join(PP_SCHEDULES)}", "pp_schedule"
            )
        if not 0 <= self.stage < self.stages:
            raise ParameterError(f"{{pp_stage}} must be from 0 to {self.stages - 1}, got {self.stage!r}", "pp_stage")
        if self.virtual > 1 and self.schedule != "interleaved-1f1b":
            raise ParameterError("virtual stages need {pp_schedule} interleaved-1f1b", "virtual_stages", "pp_schedule")
        if self.stages * self.virtual > num_layers:
            raise ParameterError(
                f"{{pp}} {self.stages} x {self.virtual} virtual stage(s) needs at least that many layers; "
                f"the model has {num_layers}",
                "pp",
            )

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def layers(self, num_layers: int) -> list[int]:
        chunks = split_layers(num_layers, self.stages * self.virtual)
        return [i for c, r in enumerate(chunks) if c % self.stages == self.stage for i in r]

    @property
    def in_flight(self) -> int:
        return in_flight(self.schedule, self.stages, self.stage, self.microbatches, self.virtual)

    @property
    def accumulates(self) -> bool:
        """Whether some backward of the step runs with earlier micro-batches' gradients resident."""
        return self.microbatches > 1

    def tensors(self, tensors: Sequence[ParamTensor], num_layers: int) -> list[ParamTensor]:
        """The stage's parameters: its blocks', the embeddings on the first, the rest on the last."""
        mine = set(self.layers(num_layers))
        out, seen_layer = [], False
        for t in tensors:
            layer = layer_of(t.name)
            if layer is not None:
                seen_layer = True
                if layer in mine:
                    out.append(t)
            elif (not seen_layer and self.first) or (seen_layer and self.last):
                out.append(t)
        return out

    def schedule_buffers(self, tr: Trace, num_layers: int) -> tuple[int, int]:
        """(bytes the schedule keeps all step, bytes of one micro-batch's output the last stage keeps).

        torch.distributed.pipelining (stage.py, `_PipelineStage`): a stage that receives keeps one
        receive buffer per micro-batch for its input (`args_recv_info`), a stage that sends keeps one
        per micro-batch for its output's gradient (`grad_recv_info`), both made at the first step and
        reused; the last stage keeps every micro-batch's output (`output_chunks`, the logits, for
        `step(return_outputs=True)`, the default) until the next step starts (`clear_runtime_states`)."""
        sub = self.filter_trace(tr, num_layers)
        persistent = 0
        if not self.first:
            persistent += self.microbatches * next(op for op in sub.ops if op.op == "recv").outputs[0].nbytes
        if not self.last:
            persistent += self.microbatches * sub.held[-1].nbytes
        output = 0
        if self.last:
            logits = [op.outputs[0] for op in sub.ops if op.layer is None and op.op == "linear" and op.outputs]
            output = logits[-1].nbytes if logits else 0
        return persistent, output

    def outputs_kept(self, replayed: int) -> int:
        """Micro-batch outputs the last stage keeps during the `replayed`-th (1 or 2) replayed
        micro-batch: GPipe every forward's by the first backward; 1F1B one more per micro-batch, all M
        by the last backward (the second replayed one stands for the steady state and the last)."""
        if not self.last:
            return 0
        if self.schedule == "gpipe" or replayed == 2:
            return self.microbatches
        return self.in_flight

    def filter_trace(self, tr: Trace, num_layers: int) -> Trace:
        """The stage's part of one micro-batch's forward (module docstring), as its own trace."""
        mine = set(self.layers(num_layers))
        first_layer = next((i for i, op in enumerate(tr.ops) if op.layer is not None), len(tr.ops))
        last_layer = max((i for i, op in enumerate(tr.ops) if op.layer is not None), default=-1)
        ops: list[Op] = []
        for i, op in enumerate(tr.ops):
            edge = op.layer is None and ((i < first_layer and self.first) or (i > last_layer and self.last))
            if op.op == "inputs" or op.layer in mine or edge:
                ops.append(op)
        produced = {id(t) for op in ops for t in op.outputs}
        held: list[T] = [t for t in tr.held if t.is_input]
        if not self.first:
            # the input received from the previous stage (the hidden state entering its first block),
            # a buffer the schedule keeps with requires_grad for the backward
            entry = next(op for op in ops if op.op == "layer_inputs")
            received = entry.inputs[0]
            ops.insert(1, Op("recv", "pipeline", entry.layer, (), (received,), ()))
            held.append(received)
            produced.add(id(received))
        if not self.last:
            # the output sent to the next stage, kept until its backward
            out = next(t for op in reversed(ops) for t in op.outputs if t.kind == "act")
            held.append(out)
        elif tr.held:
            held.append(tr.held[-1])  # the loss
        used = {id(t) for op in ops for t in op.inputs}
        new = Trace(
            tr.batch_size,
            tr.seq_len,
            tr.param_dtype,
            tr.compute_dtype,
            tr.autocast,
            tr.device,
            tr.training,
        )
        for name, value in vars(tr).items():
            if name not in ("ops", "held", "params", "weight_casts"):
                setattr(new, name, value)
        new.ops = ops
        new.held = held
        new.params = {k: p for k, p in tr.params.items() if id(p) in used}
        new.weight_casts = {k: w for k, w in tr.weight_casts.items() if id(w) in produced}
        return new
