"""Render README.md's generated blocks: the gallery of real command output and the seed reconciliation.

    python scripts/render_readme.py            # rewrite the blocks in README.md
    python scripts/render_readme.py --check    # exit 1 if README.md is not up to date (CI runs this)

Each block lies between `<!-- gallery:NAME:start -->` and `<!-- gallery:NAME:end -->` (or
`<!-- seed:start -->` / `<!-- seed:end -->`) and is produced by running memprof itself, so the README
shows what the code prints, never typed-in figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# block name -> the command whose output the block shows
GALLERY = {
    "estimate": "memprof estimate gpt2-1.5b --optimizer adamw",
    "estimate-gpu": "memprof estimate llama-3.1-8b --precision bf16-true --batch-size 4 --seq-len 4096 "
    "--checkpointing full --gpu h100-80gb",
    "fit": "memprof fit gpt2-1.5b --gpu a100-80gb",
    "qlora": "memprof estimate llama-3.1-8b --lora-rank 16 --quantize nf4 --checkpointing full --gpu rtx-4090",
    "engines": "memprof estimate qwen2.5-0.5b --gpus 2 --engine fsdp --zero 3 --gpu a100-40gb",
}


def _run(command: str) -> str:
    from memprof.cli import main

    args = shlex.split(command)[1:]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    if code != 0:
        raise SystemExit(f"{command!r} exited with {code}")
    return out.getvalue().rstrip("\n")


def gallery_block(name: str) -> str:
    command = GALLERY[name]
    return f"```console\n$ {command}\n{_run(command)}\n```"


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def _share_cached(e) -> str:
    return f"{e.peak_by_category['fragmentation'] / e.peak_reserved:.1%}"


def seed_block() -> str:
    """The seed's GPT-2 1.5B figures next to memprof's, one line of explanation each."""
    from memprof.estimators.estimation import estimate

    knobs = dict(precision="16-master", batch_size=32, seq_len=1024)
    eager = estimate("gpt2-1.5b", "adamw", attention="eager", **knobs)
    flash = estimate("gpt2-1.5b", "adamw", attention="flash", **knobs)
    ckpt = estimate("gpt2-1.5b", "adamw", attention="eager", checkpointing="full", **knobs)
    ckpt_flash = estimate("gpt2-1.5b", "adamw", attention="flash", checkpointing="full", **knobs)
    psi = eager.parameters
    h, L, b, s = 1600, 48, 32, 1024
    korthikanti = L * s * b * h * (34 + 5 * 25 * s / h)
    head = b * s * 50257 * (2 + 4 + 4)  # fp16 logits, their fp32 upcast, fp32 log-softmax
    rows = [
        (
            "model states (16Ψ)",
            "24 GB",
            _gb(eager.model_state_bytes),
            f"Ψ = {psi:,}, not 1.5 × 10⁹; fp16 weights and gradients (2 + 2 B) and fp32 master weights, "
            f"momentum and variance (12 B): `--precision 16-master`",
        ),
        (
            "activations, eager attention",
            "~60 GB",
            _gb(eager.activations_saved),
            f"~60 GB is 12·h·b·s·L fp16 elements, the layers' matmul inputs only; autograd also keeps the "
            f"attention scores, softmax and dropout masks (Korthikanti et al.'s s·b·h·(34 + 5·a·s/h) per layer = "
            f"{_gb(korthikanti)}), GPT-2's `gelu_new` formula (four 4h tensors instead of one), the k/v copies of "
            f"transformers' `use_cache` and the LM head's logits with their fp32 cross-entropy ({_gb(head)})",
        ),
        (
            "activations, FlashAttention",
            "—",
            _gb(flash.activations_saved),
            "the s² scores, softmax and dropout mask go: flash keeps q, k, v, the output and a log-sum-exp",
        ),
        (
            "activations, full checkpointing",
            "about half",
            f"{_gb(ckpt.activations_saved)} ({_gb(ckpt_flash.activations_saved)} with flash)",
            "each layer keeps only its input (2·b·s·h bytes); the head, the loss and one layer's recomputation "
            "remain — far below half at this batch",
        ),
        (
            "peak, eager / flash / checkpointed",
            "—",
            f"{_gb(eager.device_total)} / {_gb(flash.device_total)} / {_gb(ckpt_flash.device_total)}",
            f"the largest moment of the step ({eager.peak_phase}): model states + live activations + temporaries "
            "+ fragmentation + CUDA context",
        ),
        (
            "temporary buffers",
            "6 GB (fused fp32 buffer)",
            f"{_gb(eager.optimizer_temporaries)} optimizer scratch",
            "memprof assumes no whole-model fused buffer; the same 4Ψ appears as foreach AdamW's "
            "`exp_avg_sq.sqrt()` list inside `step()`, itemized with the cuBLAS workspace",
        ),
        (
            "fragmentation",
            "> 30 % in some cases",
            f"{_share_cached(eager)} (batch 32), "
            f"{_share_cached(estimate('gpt2-1.5b', 'adamw', precision='16-master'))} (batch 1)",
            "what the allocator holds beyond the live tensors at its peak, as a share of reserved memory, from "
            "replaying the step through the caching-allocator simulator",
        ),
    ]
    lines = [
        "| GPT-2 1.5B, sequence 1024, batch 32, fp16 | the seed | memprof | why they differ |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def render(text: str) -> str:
    for name in GALLERY:
        text = _replace(text, f"<!-- gallery:{name}:start -->", f"<!-- gallery:{name}:end -->", gallery_block(name))
    return _replace(text, "<!-- seed:start -->", "<!-- seed:end -->", seed_block())


def _replace(text: str, start: str, end: str, body: str) -> str:
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print(f"{args.readme} is out of date: run python scripts/render_readme.py", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
