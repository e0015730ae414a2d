"""First-order adaptive optimizers outside torch.optim: Lion, AdaBelief, DiffGrad, 8-bit AdamW, GaLore.

pytorch-optimizer keeps its step counter per group as a python int, so its state is tensors only.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import MemprofUserError
from ..tensors import ParamTensor, StateTensor
from ._spec import Family, OptimizerSpec, check_choice, check_int, like

PYOPT = "pytorch-optimizer 4.1.0"
BNB = "bitsandbytes 0.50.2"
GALORE = "galore-torch 1.0"


def _pyopt(*keys: str, ams_key: str | None = None):
    """exp_avg-style tensors (+ the AMSBound maximum) (+ AdaNorm's (1,) gradient-norm EMA)."""
    def build(params: Sequence[ParamTensor], dtype: str, opts: Mapping[str, Any]) -> list[StateTensor]:
        out = []
        for p in params:
            out.extend(like(k, p, dtype) for k in keys)
            if ams_key and opts.get("ams_bound"):
                out.append(like(ams_key, p, dtype))
            if opts.get("adanorm"):
                out.append(StateTensor("exp_grad_adanorm", (1,), dtype, p.name))
        return out
    return build


# bitsandbytes Optimizer2State.init_state: blocksize 256 is hard-coded for the block-wise 8-bit states.
BNB_BLOCKSIZE = 256
BNB_QMAP_SIZE = 256


def _adamw8bit(params, dtype, opts):
    # 8-bit (numel >= min_8bit_size): state1/state2 uint8 shaped like p, absmax1/absmax2 float32 of
    # ceil(numel / 256) blocks, and the two quantization maps (256 float32 each), which are ONE pair of
    # tensors shared by every 8-bit parameter (self.name2qmap). Smaller parameters keep state1/state2
    # in float32 whatever the parameter dtype. `step` is a python int.
    min_size = check_int("adamw8bit", "min_8bit_size", opts["min_8bit_size"], 0)
    check_choice("adamw8bit", "optim_bits", opts["optim_bits"], (8, 32))
    out, qmaps = [], False
    for p in params:
        if opts["optim_bits"] == 8 and p.numel >= min_size:
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


def _galore(params, dtype, opts):
    # GaLoreAdamW with proj_type "std" on the GaLore group (by default every 2-D parameter; others are
    # plain AdamW: exp_avg + exp_avg_sq like p). For an m x n gradient, k = min(m, n), r = min(rank, k):
    #   m >= n: projector = Vh[:r] (right), moments are (m, r); m < n: projector = U[:, :r], moments (r, n).
    # The projector keeps the SVD factor it slices: for float32 parameters it is a VIEW of the full
    # U (m, k) or Vh (k, n) of torch.linalg.svd(full_matrices=False), so that whole factor stays
    # allocated (k*k floats either way); other dtypes `.type(dtype)` a compact copy of r rows/cols.
    rank = check_int("galore", "rank", opts["rank"], 1)
    check_choice("galore", "proj_type", opts["proj_type"], ("std",))
    chosen = opts["galore_params"]
    if chosen is None:
        chosen = {p.name for p in params if len(p.shape) == 2}
    else:
        chosen = set(chosen)
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


A = Family.FIRST_ORDER_ADAPTIVE

SPECS = [
    OptimizerSpec("lion", ("lion-pytorch",), A, f"pytorch_optimizer.Lion ({PYOPT})",
                  "Sign-momentum: one exp_avg (1x params); lion_pytorch.Lion keeps the same single buffer.",
                  {"adanorm": False}, _pyopt("exp_avg")),
    OptimizerSpec("adabelief", (), A, f"pytorch_optimizer.AdaBelief ({PYOPT})",
                  "exp_avg + exp_avg_var (2x params); ams_bound adds max_exp_avg_var.",
                  {"ams_bound": False, "adanorm": False},
                  _pyopt("exp_avg", "exp_avg_var", ams_key="max_exp_avg_var")),
    OptimizerSpec("diffgrad", (), A, f"pytorch_optimizer.DiffGrad ({PYOPT})",
                  "exp_avg + exp_avg_sq + previous_grad (3x params); ams_bound adds max_exp_avg_sq.",
                  {"ams_bound": False, "adanorm": False},
                  _pyopt("exp_avg", "exp_avg_sq", "previous_grad", ams_key="max_exp_avg_sq")),
    OptimizerSpec("adamw8bit", ("adamw-8bit", "8bit-adamw", "bnb-adamw8bit"), A,
                  f"bitsandbytes.optim.AdamW8bit ({BNB})",
                  "Block-wise quantized moments: 2 bytes/param + 8 bytes per 256-element block, "
                  "plus 2 KiB of shared quantization maps; tensors under 4096 elements stay float32 "
                  "(8 bytes/param).",
                  {"min_8bit_size": 4096, "optim_bits": 8}, _adamw8bit),
    OptimizerSpec("galore", ("galore-adamw",), A, f"galore_torch.GaLoreAdamW ({GALORE})",
                  "AdamW moments in a rank-r projection of each 2-D gradient, plus the projection matrix "
                  "(for float32 weights the full SVD factor it is sliced from).",
                  {"rank": 128, "proj_type": "std", "galore_params": None}, _galore),
]
