"""Render README.md's AlgoPerf table: every AlgoPerf workload × optimizer family, traced on fake tensors.

    python scripts/render_algoperf.py                      # rewrite the block in README.md
    python scripts/render_algoperf.py --check              # exit 1 if README.md is not up to date
    python scripts/render_algoperf.py --check --only ogbg  # check some rows only (the test does)

Each cell is `memprof.trace(examples/algoperf/<workload>.py:workload, optimizer, "32-true",
device="cuda", batch_size=<per device>, gpu="v100-16gb")`: the peak one device reaches (tensors,
allocator fragmentation from a replay of the traced allocations, CUDA context), AlgoPerf's global
batch split over its 8 V100 16 GB GPUs under DDP (docs/DOCUMENTATION.md "Benchmarking Hardware";
PyTorch workloads take per-device batches), fp32 as the PyTorch references train. The block lies
between `<!-- algoperf:start -->` and `<!-- algoperf:end -->`.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- algoperf:start -->", "<!-- algoperf:end -->"
DEVICES = 8  # AlgoPerf's benchmarking hardware: 8× NVIDIA V100 (16 GB)
GPU = "v100-16gb"
PRECISION = "32-true"

# workload -> global batch size (algorithms/target_setting_algorithms/get_batch_size.py)
WORKLOADS = {
    "imagenet_resnet": 1024,
    "imagenet_vit": 1024,
    "librispeech_conformer": 256,
    "librispeech_deepspeech": 256,
    "fastmri": 32,
    "criteo1tb": 262_144,
    "ogbg": 512,
    "wmt": 128,
}
# optimizer family -> memprof registry name
OPTIMIZERS = {
    "SGD-momentum": "sgd-momentum",
    "AdamW": "adamw",
    "Adafactor": "adafactor",
    "Lion": "lion",
    "SOAP": "soap",
    "Muon": "muon",
    "8-bit Adam": "adamw8bit",
}
# where a cell has no figure, and why: a footnote mark each, fixed so that a row renders the same alone
NOT_APPLICABLE = {("imagenet_resnet", "muon"), ("fastmri", "muon")}
NOTES = {
    "a": "Muon orthogonalizes 2-D matrices; torch.optim.Muon rejects the 4-D kernels of a convolutional network.",
    "b": "the CTC loss: aten._ctc_loss has no fake-tensor kernel in torch 2.13 (its output shape is data-dependent).",
    "c": "bitsandbytes' AdamW8bit reads tensor values while it builds its state (.item()): fake tensors have none.",
}


def load(name: str) -> ModuleType:
    path = ROOT / "examples" / "algoperf" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"memprof_algoperf_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def cell(workload: str, optimizer: str, used: dict[str, str]) -> str:
    """One traced figure, or a footnote mark saying why there is none (recorded in `used`)."""
    import memprof

    if (workload, optimizer) in NOT_APPLICABLE:
        used["a"] = NOTES["a"]
        return "n/a (a)"
    try:
        traced = memprof.trace(
            load(workload).workload,
            optimizer,
            PRECISION,
            device="cuda",
            batch_size=WORKLOADS[workload] // DEVICES,
            gpu=GPU,
        ).record
    except memprof.MemprofError as exc:
        mark = _mark(str(exc), used)
        return f"not traced ({mark})"
    total = traced.peak.device_total
    fits = traced.gpu is not None and traced.gpu.fits
    return _gib(total) if fits else f"**{_gib(total)}** ✗"


def _mark(message: str, used: dict[str, str]) -> str:
    """The footnote mark of the tracer's reason; a reason not foreseen gets the next free mark."""
    if "_ctc_loss" in message:
        mark = "b"
    elif "bitsandbytes" in message or "AdamW8bit" in message:
        mark = "c"
    else:
        reason = re.sub(r'^model "[^"]*": ', "", message).split(";")[0] + "."
        known = {**NOTES, **used}
        mark = next((m for m, t in known.items() if t == reason), chr(ord("a") + len(known)))
        used[mark] = reason
        return mark
    used[mark] = NOTES[mark]
    return mark


def render(only: list[str] | None = None) -> list[str]:
    """The table's lines (header, rule, one row per workload) and its footnotes."""
    names = only or list(WORKLOADS)
    notes: dict[str, str] = {}
    lines = [
        "| workload | batch per device | " + " | ".join(OPTIMIZERS) + " |",
        "|---|---:|" + "---:|" * len(OPTIMIZERS),
    ]
    rows = []
    for name in names:
        cells = [cell(name, opt, notes) for opt in OPTIMIZERS.values()]
        per_device = WORKLOADS[name] // DEVICES
        rows.append(f"| {name} | {per_device:,} (of {WORKLOADS[name]:,}) | " + " | ".join(cells) + " |")
    return lines + rows + [""] + [f"- ({m}) {t}" for m, t in sorted(notes.items())]


def block(lines: list[str]) -> str:
    intro = (
        "GiB one device reaches at its peak (tensors, allocator fragmentation, CUDA context): `memprof.trace` of "
        "the workload's step at its per-device batch (the global batch over 8 GPUs), fp32 as the AlgoPerf "
        f"PyTorch references train; DDP's gradient buckets are not included. **Bold ✗**: more than a {GPU} "
        "(AlgoPerf's GPU) holds. Rendered by `python scripts/render_algoperf.py`."
    )
    return intro + "\n\n" + "\n".join(lines)


def _rows(text: str) -> dict[str, str]:
    body = text.split(START, 1)[1].split(END, 1)[0] if START in text else ""
    return {line.split("|")[1].strip(): line for line in body.splitlines() if line.startswith("| ")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--only", help="comma-separated workloads: check only their rows (with --check)")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or ()) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; one of {', '.join(WORKLOADS)}")
    if only and not args.check:
        parser.error("--only renders part of the table: use it with --check")
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"{args.readme}: no {START} ... {END} block", file=sys.stderr)
        return 1
    lines = render(only)
    if args.check:
        have = _rows(text)
        want = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
        stale = [name for name, line in want.items() if have.get(name) != line]
        if only is None:
            stale += [] if text.split(START, 1)[1].split(END, 1)[0].strip() == block(lines) else ["(the block)"]
        if stale:
            print(
                f"{args.readme}: the AlgoPerf table is out of date ({', '.join(stale)}); run "
                "python scripts/render_algoperf.py",
                file=sys.stderr,
            )
            return 1
        return 0
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    args.readme.write_text(f"{head}{START}\n{block(lines)}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
