"""First-order adaptive optimizers outside torch.optim: Lion, AdaBelief, DiffGrad, 8-bit AdamW, GaLore.

pytorch-optimizer keeps its step counter per group as a python int, so its state is tensors only.
States and step scratch of each, read from the package's source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._scratch import (
    F32,
    FOREACH,
    NONE,
    SINGLE,
    Context,
    DefaultRule,
    Live,
    StepScratch,
    always_picks,
    by_implementation,
    exact,
)
from ._spec import PYTORCH_OPTIMIZER, Family, OptimizerSpec, StateBuilder, check_choice, check_int, like

BNB = "bitsandbytes 0.50.2"
GALORE = "galore-torch 1.0"


# ------------------------------------------------------- pytorch-optimizer: Lion, AdaBelief, DiffGrad
# Step scratch: update / grad_residual / de_nom per parameter or list; exact (adanorm: the
# data-dependent rescaled gradient counted: an upper bound). BaseOptimizer negates (maximize) and
# decays (coupled weight decay) the gradient in place, so only the update's own intermediates
# count. `_step_foreach` runs unless an option forces the loop.


def _pyopt_states(*keys: str, ams_key: str | None = None) -> StateBuilder:
    """exp_avg-style tensors (+ the AMSBound maximum) (+ AdaNorm's (1,) gradient-norm EMA)."""

    def build(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
        out: list[StateTensor] = []
        for p in params:
            out.extend(like(k, p, dtype) for k in keys)
            if ams_key and opts.get("ams_bound"):
                out.append(like(ams_key, p, dtype))
            if opts.get("adanorm"):
                out.append(StateTensor("exp_grad_adanorm", (1,), dtype, p.name))
        return out

    return build


def _pyopt_default(loop_options: Sequence[str]) -> DefaultRule:
    """pytorch-optimizer takes `_step_foreach` (dense real gradients, foreach not False) unless one
    of `loop_options` is set; on every device, the CPU included."""

    def default(opts: Mapping[str, Any], device: str) -> str:
        return SINGLE if any(opts.get(k) for k in loop_options) else FOREACH

    return default


def _adanorm(live: Live, b: int, c: Context) -> None:
    """get_adanorm_gradient: grad.mul(exp_grad_norm).div_(grad_norm) when the running norm exceeds
    this step's norm (data-dependent: counted, an upper bound), with the 0-d norm alive."""
    if c.opts.get("adanorm"):
        live.make("s_grad", b, transient=c.elem)


def _lion_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _adanorm(live, b, c)
        live.make("update", b)  # exp_avg.lerp(grad, 1 - beta1).sign_()
    return live.peak


def _lion_foreach(c: Context) -> int:
    return c.total  # torch._foreach_lerp(exp_avgs, grads, ...)


def _adabelief_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _adanorm(live, b, c)
        live.make("grad_residual", b)  # grad - exp_avg
        live.make("de_nom", b)  # apply_ams_bound: exp_avg_var.add(eps)
    return live.peak


def _adabelief_foreach(c: Context) -> int:
    return 2 * c.total  # grad_residuals, de_noms (_foreach_sub, _add)


def _diffgrad_single(c: Context) -> int:
    live = Live()
    for i in range(len(c.sizes)):
        b = c.nbytes(i)
        _adanorm(live, b, c)
        live.make("de_nom", b)  # apply_ams_bound; dfc works in previous_grad
    return live.peak


def _diffgrad_foreach(c: Context) -> int:
    return c.total  # apply_ams_bound_foreach: _foreach_add


A = Family.FIRST_ORDER_ADAPTIVE

LION = OptimizerSpec(
    "lion",
    ("lion-pytorch",),
    A,
    f"pytorch_optimizer.Lion ({PYTORCH_OPTIMIZER})",
    "Sign-momentum: one exp_avg (1x params); lion_pytorch.Lion keeps the same single buffer.",
    {"adanorm": False},
    _pyopt_states("exp_avg"),
    step=StepScratch(
        by_implementation(_lion_single, _lion_foreach),
        exact(SINGLE, FOREACH),
        "pytorch_optimizer.Lion: _step_per_param, _step_foreach",
        default=_pyopt_default(("adanorm",)),
    ),
)

ADABELIEF = OptimizerSpec(
    "adabelief",
    (),
    A,
    f"pytorch_optimizer.AdaBelief ({PYTORCH_OPTIMIZER})",
    "exp_avg + exp_avg_var (2x params); ams_bound adds max_exp_avg_var.",
    {"ams_bound": False, "adanorm": False},
    _pyopt_states("exp_avg", "exp_avg_var", ams_key="max_exp_avg_var"),
    step=StepScratch(
        by_implementation(_adabelief_single, _adabelief_foreach),
        exact(SINGLE, FOREACH),
        "pytorch_optimizer.AdaBelief: _step_per_param, _step_foreach",
        default=_pyopt_default(("adanorm", "ams_bound")),
    ),
)

DIFFGRAD = OptimizerSpec(
    "diffgrad",
    (),
    A,
    f"pytorch_optimizer.DiffGrad ({PYTORCH_OPTIMIZER})",
    "exp_avg + exp_avg_sq + previous_grad (3x params); ams_bound adds max_exp_avg_sq.",
    {"ams_bound": False, "adanorm": False},
    _pyopt_states("exp_avg", "exp_avg_sq", "previous_grad", ams_key="max_exp_avg_sq"),
    step=StepScratch(
        by_implementation(_diffgrad_single, _diffgrad_foreach),
        exact(SINGLE, FOREACH),
        "pytorch_optimizer.DiffGrad: _step_per_param, _step_foreach",
        default=_pyopt_default(("adanorm",)),
    ),
)


# ------------------------------------------------------------------------------ bitsandbytes 8-bit
# Step scratch: CUDA 0 (fused in-place kernels, not measured); CPU: the reference kernels'
# dequantized states, float gradient and denom (5 n_i float32), measured with the CPU allocator.

# bitsandbytes Optimizer2State.init_state: blocksize 256 is hard-coded for the block-wise 8-bit states.
BNB_BLOCKSIZE = 256
BNB_QMAP_SIZE = 256


def _adamw8bit_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # 8-bit (numel >= min_8bit_size): state1/state2 uint8 shaped like p, absmax1/absmax2 float32 of
    # ceil(numel / 256) blocks, and the two quantization maps (256 float32 each), which are ONE pair of
    # tensors shared by every 8-bit parameter (self.name2qmap). Smaller parameters keep state1/state2
    # in float32 whatever the parameter dtype. `step` is a python int.
    min_size = check_int("adamw8bit", "min_8bit_size", opts["min_8bit_size"], 0)
    check_choice("adamw8bit", "optim_bits", opts["optim_bits"], (8, 32))
    fp32 = _fp32_params(params, opts)
    out, qmaps = [], False
    for p in params:
        if opts["optim_bits"] == 8 and p.numel >= min_size and p.name not in fp32:
            blocks = -(-p.numel // BNB_BLOCKSIZE)
            out.append(StateTensor("state1", p.shape, "uint8", p.name))
            if not qmaps:
                out.append(StateTensor("qmap1", (BNB_QMAP_SIZE,), "float32", p.name))
            out.append(StateTensor("state2", p.shape, "uint8", p.name))
            if not qmaps:
                out.append(StateTensor("qmap2", (BNB_QMAP_SIZE,), "float32", p.name))
            qmaps = True
            out.append(StateTensor("absmax1", (blocks,), "float32", p.name))
            out.append(StateTensor("absmax2", (blocks,), "float32", p.name))
        else:
            out.append(StateTensor("state1", p.shape, "float32", p.name))
            out.append(StateTensor("state2", p.shape, "float32", p.name))
    return out


def _fp32_params(params: Sequence[ParamTensor], opts: Mapping[str, Any]) -> frozenset[str]:
    """fp32_params: the parameters bitsandbytes' GlobalOptimManager overrides to 32-bit states
    (`register_module_override(module, "weight", {"optim_bits": 32})`, which the Hugging Face Trainer
    does for every nn.Embedding, transformers/trainer.py create_optimizer); Optimizer2State.init_state then
    keeps their state1/state2 in float32."""
    chosen = frozenset(opts["fp32_params"])
    missing = sorted(chosen - {p.name for p in params})
    if missing:
        raise MemprofUserError("fp32_params not among the parameters: " + ", ".join(missing[:5]))
    return chosen


def _adamw8bit_step(c: Context) -> int:
    # On CUDA the update is one kernel per parameter (optimizer_update_8bit_blockwise, or the
    # 32-bit one below min_8bit_size) working in place on the quantized states: nothing
    # allocated (derived from the kernels; no GPU here to measure it). On the CPU bitsandbytes
    # runs a PyTorch reference (backends/cpu/ops.py), one parameter at a time:
    # - 8-bit: both states dequantized to float32, grad = g.float() * gnorm_scale,
    #   p_fp32 = p.float() (a copy unless float32), denom = (state2.sqrt() / correction2): 5 (6)
    #   float32 tensors of the parameter's size;
    # - 32-bit (small tensors): g_float, p_float (unless float32), state2.sqrt() + eps and the
    #   quotient: 3 (4).
    if c.device != "cpu":
        return 0
    copy = c.dtype != "float32"
    peak = 0
    fp32 = frozenset(c.opts["fp32_params"])
    for i, n in enumerate(c.sizes):
        if c.opts["optim_bits"] == 8 and n >= c.opts["min_8bit_size"] and (c.names[i] if c.names else "") not in fp32:
            peak = max(peak, (5 + copy) * n * F32)
        else:
            peak = max(peak, (3 + copy) * n * F32)
    return peak


ADAMW8BIT = OptimizerSpec(
    "adamw8bit",
    ("adamw-8bit", "8bit-adamw", "bnb-adamw8bit"),
    A,
    f"bitsandbytes.optim.AdamW8bit ({BNB})",
    "Block-wise quantized moments: 2 bytes/param + 8 bytes per 256-element block, "
    "plus 2 KiB of shared quantization maps; tensors under 4096 elements stay float32 "
    "(8 bytes/param).",
    {"min_8bit_size": 4096, "optim_bits": 8, "fp32_params": ()},
    _adamw8bit_states,
    step=StepScratch(
        {NONE: _adamw8bit_step},
        {
            NONE: "exact on the CPU (measured with the CPU allocator's profiler); "
            "CUDA: derived from the kernels, not measured"
        },
        "bitsandbytes.optim.AdamW8bit: optimizer_update_8bit_blockwise (backends/cpu/ops.py on the CPU)",
        default=always_picks(NONE),
    ),
)


# ------------------------------------------------------------------------------------------ GaLore
# Step scratch: low-rank gradient, denom, exp_avg / denom and the back-projection (2 n_i); with
# svd_step (default, every update_proj_gap steps) the float32 SVD factors; exact.


def _galore_states(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
    # GaLoreAdamW with proj_type "std" on the GaLore group (by default every 2-D parameter; others are
    # plain AdamW: exp_avg + exp_avg_sq like p). For an m x n gradient, k = min(m, n), r = min(rank, k):
    #   m >= n: projector = Vh[:r] (right), moments are (m, r); m < n: projector = U[:, :r], moments (r, n).
    # The projector keeps the SVD factor it slices: for float32 parameters it is a VIEW of the full
    # U (m, k) or Vh (k, n) of torch.linalg.svd(full_matrices=False), so that whole factor stays
    # allocated (k*k floats either way); other dtypes `.type(dtype)` a compact copy of r rows/cols.
    rank = check_int("galore", "rank", opts["rank"], 1)
    check_choice("galore", "proj_type", opts["proj_type"], ("std",))
    if opts["galore_params"] is None:
        chosen = {p.name for p in params if len(p.shape) == 2}
    else:
        chosen = set(opts["galore_params"])
        names = {p.name for p in params}
        missing = sorted(chosen - names)
        if missing:
            raise MemprofUserError("galore_params not among the parameters: " + ", ".join(missing[:5]))
    out = []
    for p in params:
        if p.name not in chosen:
            out += [like("exp_avg", p, dtype), like("exp_avg_sq", p, dtype)]
            continue
        if len(p.shape) != 2:
            raise MemprofUserError(f"GaLore projects 2-D gradients only; {p.name} has shape {p.shape}")
        m, n = p.shape
        k = min(m, n)
        r = min(rank, k)
        if m >= n:
            proj = (k, n) if dtype == "float32" else (r, n)
            moment = (m, r)
        else:
            proj = (m, k) if dtype == "float32" else (m, r)
            moment = (r, n)
        out.append(StateTensor("projector", proj, dtype, p.name))
        out.append(StateTensor("exp_avg", moment, dtype, p.name))
        out.append(StateTensor("exp_avg_sq", moment, dtype, p.name))
    return out


def _galore_step(c: Context) -> int:
    # GaLoreAdamW.step per parameter. A projected (GaLore) m x n parameter, k = min(m, n),
    # r = min(rank, k): project() makes the low-rank gradient L (m x r if m >= n, else r x n);
    # denom = exp_avg_sq.sqrt() and exp_avg / denom are L-sized; project_back() multiplies back to
    # m x n and scales it (`* self.scale`): two full-size tensors. Other parameters: plain AdamW
    # (denom, exp_avg / denom). `denom` and `norm_grad` stay bound into the next parameter.
    # svd_step (every update_proj_gap steps; counted by default, the peak over a run):
    # get_orthogonal_matrix runs torch.linalg.svd(full_matrices=False): U (m x k), s (k),
    # Vh (k x n) in float32 (+ a float32 copy of the gradient for other dtypes), then
    # A = U[:, :r] @ diag(s[:r]) (m >= n) or B = diag(s[:r]) @ Vh[:r] (m < n); the factor kept
    # (a view for float32) replaces the previous projector when project() assigns it.
    # LAPACK's own workspace is not counted.
    chosen = c.opts["galore_params"]
    live, e = Live(), c.elem
    for i, shape in enumerate(c.shapes):
        b = c.nbytes(i)
        live.ref("grad")
        is_galore = (chosen is None and len(shape) == 2) or (chosen is not None and c.names[i] in chosen)
        if not is_galore:
            live.make("denom", b)
            live.make("norm_grad", b)
            continue
        m, n = shape
        k = min(m, n)
        r = min(c.opts["rank"], k)
        low = (m * r if m >= n else r * n) * e
        if c.opts["svd_step"]:
            copy = 0 if c.dtype == "float32" else m * n * F32  # matrix = grad.float()
            svd = (m * k + k + k * n) * F32
            factor = (m * r if m >= n else r * n) * F32  # A (right) or B (left) product
            live.touch(copy + svd + r * r * F32 + factor)
            if c.dtype != "float32":
                live.touch(svd + (r * n if m >= n else m * r) * e)  # .type(dtype) of the kept factor
        live.make("grad", low)  # grad = projector.project(grad, step)
        live.make("denom", low)  # exp_avg_sq.sqrt().add_(eps)
        live.make("norm_grad", low)  # exp_avg / denom
        live.make("norm_grad", b, transient=b)  # project_back: matmul, then * scale
    return live.peak


GALORE_ADAMW = OptimizerSpec(
    "galore",
    ("galore-adamw",),
    A,
    f"galore_torch.GaLoreAdamW ({GALORE})",
    "AdamW moments in a rank-r projection of each 2-D gradient, plus the projection "
    "matrix (for float32 weights the full SVD factor it is sliced from).",
    {"rank": 128, "proj_type": "std", "galore_params": None},
    _galore_states,
    step=StepScratch(
        {NONE: _galore_step},
        exact(NONE),
        "galore_torch.GaLoreAdamW.step, GaLoreProjector.project / project_back / get_orthogonal_matrix",
        {"svd_step": True},
        default=always_picks(NONE),
    ),
)

SPECS = [LION, ADABELIEF, DIFFGRAD, ADAMW8BIT, GALORE_ADAMW]
