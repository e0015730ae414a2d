"""Quantized base weights as bitsandbytes 0.50.2 stores and runs them (transformers' BitsAndBytesConfig).

transformers' bitsandbytes integration replaces every nn.Linear but the output layer (its
`modules_to_not_convert`: `get_output_embeddings()` and tied weights) by a bitsandbytes layer; the
rest of the model (embeddings, norms, lm_head) stays a float parameter, which peft's
`prepare_model_for_kbit_training` (utils/other.py) casts to float32 and freezes.

Storage (read in bitsandbytes/functional.py and nn/modules.py; measured on the CPU):
- 4-bit (`nf4`, `fp4`: `Params4bit`, `quantize_4bit`): the weight is packed two values a byte into a
  uint8 tensor of (n + 1) // 2 elements (n = out * in); its `quant_state` holds `absmax`, one float32
  per block of 64 values (`blocksize=64`), and `code`, its own copy of the 16-value lookup table
  (float32). With double quantization (`compress_statistics`, `bnb_4bit_use_double_quant`) absmax
  is quantized in turn (`quantize_blockwise(absmax - offset, blocksize=256)`): absmax becomes uint8,
  plus `state2.absmax` (float32 per 256 blocks), `state2.code` (a 256-value float32 table, a copy per
  weight) and `offset` (a 0-d float32);
- 8-bit (`int8`: `Int8Params`, LLM.int8()): an int8 copy of the weight (out, in) and `SCB`, one
  float32 scale per output row. The outlier threshold (`llm_int8_threshold=6.0`) decomposes the
  activations at matmul time; it stores nothing with the weights.
A bias stays a float parameter; Linear4bit.forward casts it to the compute dtype in place
(`bias.data = bias.data.to(x.dtype)`), Linear8bitLt.forward to the input's dtype.

Forward and backward (bitsandbytes/autograd/_functions.py):
- 4-bit: Linear4bit.forward casts x to `compute_dtype` (`bnb_4bit_compute_dtype`), `MatMul4Bit`
  dequantizes the whole weight into a temporary (out * in values in the compute dtype,
  `_gemm_4bit_default_impl`), multiplies, and saves only the packed weight (no activation: the
  weight needs no gradient); the output is cast back to x's dtype. Its backward dequantizes again
  (in the dtype the weight was loaded in, `quant_state.dtype`, then cast to the gradient's dtype) for
  the input's gradient: temporaries of the backward, freed within it.
- 8-bit in training on the CPU (`MatMul8bitFp`): dequantizes the weight (`CB.to(x.dtype) * SCB /
  127`, out * in values) and runs F.linear; it keeps its input x (`ctx.A = A`) whatever needs a
  gradient; its backward dequantizes again and casts the output gradient to x's dtype. CUDA runs
  `MatMul8bitLt` (int8 matmul with outlier decomposition): approximated by the same figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dtypes import dtype_bytes
from ..errors import ParameterError
from ..tensors import ParamTensor

if TYPE_CHECKING:
    from ..autograd import T, Trace
    from ..families._base import Linear

QUANTIZE = ("int8", "nf4", "fp4")
BLOCKSIZE_4BIT = 64  # Params4bit's default blocksize (transformers' integration keeps it)
NESTED_BLOCKSIZE = 256  # double quantization of absmax (functional.quantize_4bit)
CODE_4BIT = 16  # the nf4 / fp4 lookup table: 16 float32 values
CODE_DYNAMIC = 256  # create_dynamic_map(): the 8-bit table of the nested absmax
# families whose linear layers are nn.Linear, which transformers' bitsandbytes integration replaces
# (measured on the CPU: llama, qwen2, opt, qwen3, phi3, gemma2, gemma3_text; mistral and gpt_neox run
# the same layers). Not modelled: GPT-2's Conv1D, BERT / ViT / T5 (encoders' and T5's heads and tied
# weights), and the mixture-of-experts families (fused 3-D expert weights)
QUANTIZABLE = ("llama", "mistral", "qwen2", "opt", "gpt_neox", "qwen3", "phi3", "gemma2", "gemma3_text")


def check_quantize(quantize: object, double_quant: object, model_type: str) -> str | None:
    if quantize is None:
        if double_quant:
            raise ParameterError(
                "{double_quant} quantizes 4-bit absmax values: add {quantize} nf4 or fp4", "double_quant"
            )
        return None
    if quantize not in QUANTIZE:
        raise ParameterError(f"invalid {{quantize}} {quantize!r}; valid: {', '.join(QUANTIZE)}", "quantize")
    if double_quant and quantize == "int8":
        raise ParameterError("{double_quant} applies to 4-bit weights (nf4, fp4), not int8", "double_quant")
    if model_type not in QUANTIZABLE:
        raise ParameterError(
            f"memprof cannot quantize a {model_type} model (its bitsandbytes layers are not modelled); "
            f"{{quantize}} works for {', '.join(QUANTIZABLE)}",
            "quantize",
        )
    return str(quantize)


def storage(weight: ParamTensor, quantize: str, double_quant: bool) -> list[ParamTensor]:
    """The tensors one quantized weight keeps: the quantized data, then its quantization state."""
    out_features, in_features = weight.shape
    n = out_features * in_features
    if quantize == "int8":
        return [
            ParamTensor(weight.name, (out_features, in_features), "int8", trainable=False),
            ParamTensor(weight.name + ".SCB", (out_features,), "float32", trainable=False),
        ]
    blocks = -(-n // BLOCKSIZE_4BIT)
    state = weight.name + ".quant_state."
    tensors = [
        ParamTensor(weight.name, ((n + 1) // 2, 1), "uint8", trainable=False),
        ParamTensor(state + "absmax", (blocks,), "uint8" if double_quant else "float32", trainable=False),
        ParamTensor(state + "code", (CODE_4BIT,), "float32", trainable=False),
    ]
    if double_quant:
        tensors += [
            ParamTensor(state + "state2.absmax", (-(-blocks // NESTED_BLOCKSIZE),), "float32", trainable=False),
            ParamTensor(state + "state2.code", (CODE_DYNAMIC,), "float32", trainable=False),
            ParamTensor(state + "offset", (), "float32", trainable=False),
        ]
    return tensors


def bias_dtype(quantize: str, compute_dtype: str, input_dtype: str) -> str:
    """The dtype a quantized layer's bias ends up in after the first forward (module docstring)."""
    return input_dtype if quantize == "int8" else compute_dtype


def quantized_linear(tr: Trace, x: T, m: Linear, quantize: str, compute_dtype: str, load_dtype: str) -> T:
    """x through the bitsandbytes layer replacing `m` (module docstring). `load_dtype`: the dtype the
    weight had when it was quantized (the 4-bit backward dequantizes into it)."""
    n = m.out_features * m.in_features
    if quantize == "int8":
        w = tr.param(m.weight.name, n, "int8", trainable=False)
        bias = tr.param(m.bias.name, m.out_features, x.dtype, trainable=False) if m.bias is not None else None
        dq = tr.act(n, x.dtype, m.name + ".dequantized_weight", "const")
        tr.record("dequantize_int8", [w], [dq])  # CB.to(x.dtype).mul_(SCB / 127)
        xi, wi = tr.lowp(x), tr.lowp(dq)  # F.linear under autocast casts both operands
        out = tr.act(x.numel // m.in_features * m.out_features, xi.dtype if tr.autocast else x.dtype, "linear")
        tr.record("matmul_8bit", [xi, wi] + ([bias] if bias is not None else []), [out], [("A", x)])
        if tr.ops[-1].saved:
            # its backward: CB.to(x.dtype) * SCB / 127 again, and the output gradient cast to x's dtype
            cast = out.numel * dtype_bytes(x.dtype) if out.dtype != x.dtype else 0
            tr.ops[-1].backward_scratch = n * dtype_bytes(x.dtype) + cast
        return out
    w = tr.param(m.weight.name, (n + 1) // 2, "uint8", trainable=False)
    bias = tr.param(m.bias.name, m.out_features, compute_dtype, trainable=False) if m.bias is not None else None
    xc = tr.to(x, compute_dtype)  # Linear4bit.forward: x.to(compute_dtype)
    dq = tr.act(n, compute_dtype, m.name + ".dequantized_weight", "const")
    tr.record("dequantize_4bit", [w], [dq])
    out = tr.act(xc.numel // m.in_features * m.out_features, compute_dtype, "linear")
    tr.record("matmul_4bit", [xc, dq] + ([bias] if bias is not None else []), [out])
    if tr.ops[-1].outputs[0].requires_grad:
        # MatMul4Bit.backward: dequantize_4bit(B) in quant_state.dtype, .to(grad dtype), for grad_A
        cast = n * dtype_bytes(compute_dtype) if compute_dtype != load_dtype else 0
        tr.ops[-1].backward_scratch = n * dtype_bytes(load_dtype) + cast
    return tr.to(out, x.dtype)  # .to(inp_dtype)
