"""Property: whatever a user gives the CLI, memprof answers or refuses in one line - never a traceback.

Hypothesis generates config.json dicts (random and extreme field values), profiles (random mutations
of a real profile: wrong types, huge numbers, deep nesting, deleted keys), arbitrary files, and random
flag values for `estimate`, `fit`, `compare`, `report` and `replay`. Each example runs the CLI
in-process (`memprof.cli.main`) and must end in exit 0 with a well-formed record (JSON output parses
and has the record's keys), or exit 2 with exactly one `memprof: error:` line on stderr.

Time: every example has a deadline (`DEADLINE`), which also catches a hang or an unbounded run; the
examples are derandomized (the same ones on every run, so CI is reproducible) and the whole file
takes ~30 s on two cores. `MEMPROF_PROPERTY_EXAMPLES=500 pytest tests/test_properties.py` explores
more (and then draws fresh examples).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from memprof.cli import main  # noqa: E402

EXAMPLES = int(os.environ.get("MEMPROF_PROPERTY_EXAMPLES", "0"))
DEADLINE = timedelta(seconds=15)  # an estimate takes well under a second; fit ~20 estimates


def _settings(examples: int) -> settings:
    return settings(
        max_examples=EXAMPLES or examples,
        deadline=DEADLINE,
        derandomize=not EXAMPLES,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# what a successful `--format json` prints, by command: keys every record of that command has
RECORD_KEYS = {
    "estimate": {"model", "parameters", "settings", "peak"},
    "fit": {"model"},
    "compare": {"model", "rows", "missing"},
    "replay": {"config", "peak"},
}


def check_outcome(argv: list[str]) -> None:
    """The property: exit 0 with a well-formed record, or exit 2 with exactly one line on stderr."""
    code, out, err = run_cli(argv)
    assert "Traceback" not in err, (argv, err)
    if code == 0:
        if "--format" in argv and argv[argv.index("--format") + 1] == "json":
            record = json.loads(out)
            assert isinstance(record, dict) and RECORD_KEYS[argv[0]] <= set(record), (argv, sorted(record))
        else:
            assert out.strip(), argv
        return
    assert code == 2, (argv, code, err)
    assert err.count("\n") == 1 and err.startswith("memprof: error: "), (argv, err)


# -- values ------------------------------------------------------------------------------------------
EXTREME_INTS = st.sampled_from([0, -1, 1, 2, 3, 7, 513, 2**31, 2**32 + 1, 10**9, 2**63, 10**30, 10**400])
SMALL_INTS = st.integers(1, 6)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    SMALL_INTS,
    EXTREME_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


class Deep:
    """A value nested `depth` lists deep, written out only as JSON text (hypothesis cannot print it)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


def to_json(value: Any) -> str:
    """json.dumps that writes each Deep as its nested lists."""
    if isinstance(value, Deep):
        return "[" * value.depth + "0" + "]" * value.depth
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


DEEP = st.sampled_from([50, 101, 2000]).map(Deep)

# -- configs -----------------------------------------------------------------------------------------
FIELDS = {
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "n_inner"),
    "llama": (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    ),
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
    "opt": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim"),
    "gpt_neox": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
    "vit": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size"),
}


@st.composite
def configs(draw: st.DrawFn) -> Any:
    """Mostly plausible configs with a few fields replaced by extreme or wrong values."""
    kind = draw(st.sampled_from([*FIELDS, "mistral", "qwen2", "nonsense", None]))
    if kind is None:
        return draw(st.one_of(JSON_VALUES, DEEP))
    config: dict[str, Any] = {"model_type": kind}
    for key in FIELDS.get(kind, FIELDS["llama"]):
        # a multiple of 8 keeps heads dividing the width; a few fields go wild
        config[key] = draw(
            st.one_of(SMALL_INTS.map(lambda n: 8 * n), EXTREME_INTS, SCALARS, DEEP)
            if draw(st.integers(0, 3)) == 0
            else SMALL_INTS.map(lambda n: 8 * n)
        )
    for key in draw(st.lists(st.text(max_size=12), max_size=2)):
        config[key] = draw(JSON_VALUES)
    return config


@given(config=configs(), fmt=st.sampled_from(["json", "table"]))
@_settings(60)
def test_any_config_json_is_estimated_or_refused_in_one_line(tmp_path_factory, config, fmt) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(to_json(config))
    check_outcome(["estimate", str(path), "--format", fmt])


# -- profiles ----------------------------------------------------------------------------------------
@cache
def real_profile() -> dict[str, Any]:
    """A real profile of a tiny Hugging Face-free run, saved with events (made once)."""
    import torch

    import memprof

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters())
    with memprof.track(model, opt, events=True) as run:
        for _ in range(2):
            model(torch.ones(4, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profile.json"
        run.save(path, events=True)
        data: dict[str, Any] = json.loads(path.read_text())
    return data


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[tuple[Any, ...], Any]]:
    """1-3 changes to the real profile: (path, new value), the value None-or-DELETE to drop the key."""
    paths = _paths(real_profile())
    return draw(
        st.lists(
            st.tuples(st.sampled_from(paths), st.one_of(JSON_VALUES, DEEP, st.just(DELETE))), min_size=1, max_size=3
        )
    )


DELETE = "<delete>"


def mutate(changes: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(real_profile()))
    for where, value in changes:
        node: Any = data
        try:
            for key in where[:-1]:
                node = node[key]
            if value == DELETE and isinstance(node, dict):
                node.pop(where[-1], None)
            else:
                node[where[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change altered the shape above this path
    return data


def profiles() -> st.SearchStrategy[dict[str, Any]]:
    return mutations().map(mutate)


@given(changes=mutations(), command=st.sampled_from(["compare", "report", "replay"]))
@_settings(60)
def test_any_mutated_profile_is_read_or_refused_in_one_line(tmp_path_factory, changes, command) -> None:
    path = tmp_path_factory.mktemp("prof") / "profile.json"
    path.write_text(to_json(mutate(changes)))
    argv = [command, str(path)]
    if command in ("compare", "replay"):
        argv += ["--format", "json"]
    if command == "replay":
        argv += ["--no-what-if"]
    check_outcome(argv)


@given(estimate=st.one_of(JSON_VALUES, DEEP, profiles()), command=st.sampled_from(["compare", "report"]))
@_settings(25)
def test_any_estimate_file_is_read_or_refused_in_one_line(tmp_path_factory, estimate, command) -> None:
    folder = tmp_path_factory.mktemp("est")
    prof, est = folder / "profile.json", folder / "estimate.json"
    prof.write_text(json.dumps(real_profile()))
    est.write_text(to_json(estimate))
    check_outcome([command, str(prof), "--estimate", str(est)])


# -- files -------------------------------------------------------------------------------------------
FILES = st.one_of(
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    st.text(max_size=100).map(lambda t: ("text", t.encode())),
    st.sampled_from(["directory", "missing", "/dev/null", "/dev/zero", "fifo"]).map(lambda k: (k, b"")),
)


@given(file=FILES, command=st.sampled_from(["estimate", "compare", "report", "replay", "compare-estimate"]))
@_settings(40)
def test_any_file_is_read_or_refused_in_one_line(tmp_path_factory, file, command) -> None:
    kind, content = file
    folder = tmp_path_factory.mktemp("file")
    path = folder / "input.json"
    if kind in ("bytes", "text"):
        path.write_bytes(content)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        if not hasattr(os, "mkfifo"):
            return
        os.mkfifo(path)
    elif kind.startswith("/dev/"):
        if not os.path.exists(kind):
            return
        path = Path(kind)
    if command == "compare-estimate":
        prof = folder / "profile.json"
        prof.write_text(json.dumps(real_profile()))
        check_outcome(["compare", str(prof), "--estimate", str(path)])
    else:
        check_outcome([command, str(path)])


# -- flags -------------------------------------------------------------------------------------------
FLAG_TEXT = st.one_of(
    st.text(max_size=12),
    EXTREME_INTS.map(str),
    st.sampled_from(["0", "-1", "auto", "5%", "99%", "100%", "1e400%", "2GiB", "9" * 5000, "80GB", "nan", ""]),
)
ESTIMATE_FLAGS = {
    "--optimizer": st.sampled_from(["adamw", "sgd", "lion", "muon", "lbfgs", "adafactor", "nope"]) | FLAG_TEXT,
    "--precision": st.sampled_from(["fp32", "bf16-mixed", "16-mixed", "16-master", "bf16-true"]) | FLAG_TEXT,
    "--batch-size": FLAG_TEXT,
    "--seq-len": FLAG_TEXT,
    "--checkpointing": st.sampled_from(["none", "selective", "full"]) | FLAG_TEXT,
    "--attention": st.sampled_from(["auto", "eager", "sdpa", "flash"]),
    "--device": st.sampled_from(["cuda", "cpu"]) | FLAG_TEXT,
    "--gpu": st.sampled_from(["h100-80gb", "a100-40gb", "t4"]) | FLAG_TEXT,
    "--gpus": FLAG_TEXT,
    "--zero": st.sampled_from(["0", "1", "2", "3"]) | FLAG_TEXT,
    "--offload": st.sampled_from(["none", "optimizer", "optimizer+parameters"]),
    "--grad-accumulation": FLAG_TEXT,
    "--optimizer-impl": st.sampled_from(["auto", "single_tensor", "foreach", "fused"]),
    "--alloc-conf": st.sampled_from(
        ["expandable_segments:True", "max_split_size_mb:128", "roundup_power2_divisions:4", "garbage"]
    )
    | FLAG_TEXT,
}
MODELS = st.sampled_from(["gpt2", "gpt2-1.5b", "llama-2-7b", "bert-base-uncased", "vit-b-16", "opt-350m", "nope"])


@st.composite
def estimate_argv(draw: st.DrawFn, command: str) -> list[str]:
    argv = [command, draw(MODELS)]
    flags = dict(ESTIMATE_FLAGS)
    if command == "fit":
        flags["--headroom"] = FLAG_TEXT
        flags["--seq-len"] = st.sampled_from(["auto", "128"]) | FLAG_TEXT
        argv += ["--gpu", draw(st.sampled_from(["h100-80gb", "t4"]))]
        flags.pop("--gpu")
    for flag in draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True)):
        argv += [flag, draw(flags[flag])]
    return [*argv, "--format", "json"]


@given(argv=st.sampled_from(["estimate", "fit"]).flatmap(estimate_argv))
@_settings(60)
def test_any_estimate_or_fit_flags_answer_or_refuse_in_one_line(argv) -> None:
    check_outcome(argv)


@given(
    capacity=st.none() | FLAG_TEXT,
    alloc_conf=st.none() | ESTIMATE_FLAGS["--alloc-conf"],
    device=st.none() | FLAG_TEXT,
    sizes=st.lists(st.sampled_from([0, 1, 512, 2**20, 2**30, 2**40, 2**45, 2**48, 2**49]), min_size=1, max_size=4),
)
@_settings(30)
def test_any_snapshot_and_replay_flags_answer_or_refuse_in_one_line(
    tmp_path_factory, capacity, alloc_conf, device, sizes
) -> None:
    import pickle

    trace = []
    for i, size in enumerate(sizes):
        addr = (i + 1) << 50
        trace.append({"action": "alloc", "addr": addr, "size": size, "stream": 0, "time_us": i, "frames": []})
    path = tmp_path_factory.mktemp("snap") / "snapshot.pickle"
    path.write_bytes(pickle.dumps({"segments": [], "device_traces": [trace]}))
    argv = ["replay", str(path), "--format", "json"]
    for flag, value in (("--capacity", capacity), ("--alloc-conf", alloc_conf), ("--device", device)):
        if value is not None:
            argv += [flag, value]
    check_outcome(argv)
