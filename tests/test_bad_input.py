"""Every bad input is one line on stderr and exit code 2 (issue 14, "nothing lost, nothing misleading").

Each case below once ended in a traceback, a hang, a silent default or an unbounded run. The CLI runs
in-process (`memprof.cli.main`), except where the failure was a hang: those run in a subprocess with
a timeout, so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from memprof.cli import main

ROOT = Path(__file__).resolve().parent.parent


def one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one `memprof: error:` line on stderr; return it."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.startswith("memprof: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real profile of a tiny run, saved with its allocation events."""
    import torch

    import memprof

    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with memprof.track(model, opt, events=True) as run:
        model(torch.ones(4, 8)).sum().backward()
        opt.step()
    path = tmp_path_factory.mktemp("profiles") / "profile.json"
    run.save(path, events=True)
    return path


def mutated(profile_path: Path, tmp_path: Path, where: tuple[Any, ...], value: Any) -> str:
    data = json.loads(profile_path.read_text())
    node = data
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    out = tmp_path / "mutated.json"
    out.write_text(json.dumps(data))
    return str(out)


# -- profiles with the right structure and the wrong types ------------------------------------------
WRONG_TYPES = [
    (("settings", "param_dtypes"), 5, "'param_dtypes' must be"),
    (("settings", "param_dtypes"), "x", "'param_dtypes' must be"),
    (("settings", "input_shapes"), "x", "'input_shapes' must be a list"),
    (("settings", "input_shapes"), [[None]], "'input_shapes[0]' must be a shape"),
    (("settings", "hf_config"), "x", "'hf_config' must be an object"),
    (("settings", "parameter_tensors"), "x", "'parameter_tensors' must be a list"),
    (("settings", "parameter_tensors"), [["w"]], "'parameter_tensors[0]' must be a [name, shape] pair"),
    (("settings", "optimizer_class"), 1, "'optimizer_class' must be a string"),
    (("settings", "optimizer_defaults"), 1, "'optimizer_defaults' must be an object"),
    (("settings", "autocast_dtype"), [], "'autocast_dtype' must be a string"),
    (("settings", "backward_calls"), "x", "'backward_calls' must be an integer"),
    (("settings", "parameters"), 10**30, "'parameters' must be an integer (64-bit)"),
    (("model_states", "parameters"), 10**30, "'parameters' must be an integer (64-bit)"),
    (("peak", "allocated"), 10**30, "'allocated' must be an integer (64-bit)"),
    (("peak", "by_category", "activations"), 10**30, "'by_category.activations' must be an integer"),
]


@pytest.mark.parametrize("command", ["compare", "report"])
@pytest.mark.parametrize(("where", "value", "message"), WRONG_TYPES, ids=lambda v: str(v)[:30])
def test_a_profile_with_wrong_field_types_is_one_line(
    capsys, tmp_path, profile_path, command, where, value, message
) -> None:
    # GIVEN a real profile with one field of the wrong type WHEN compared or reported THEN one line
    err = one_line_error(capsys, [command, mutated(profile_path, tmp_path, where, value)])
    assert message in err


def test_an_event_of_more_than_64_bit_bytes_is_one_line_in_replay(capsys, tmp_path, profile_path) -> None:
    data = json.loads(profile_path.read_text())
    first_alloc = next(i for i, e in enumerate(data["events"]) if e[0] == "alloc")
    path = mutated(profile_path, tmp_path, ("events", first_alloc, 2), 10**30)
    assert "corrupt memprof profile: event" in one_line_error(capsys, ["replay", path])


# -- a profile where an estimate belongs -----------------------------------------------------------
@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_profile_passed_as_the_estimate_says_so(capsys, profile_path, command) -> None:
    err = one_line_error(capsys, [command, str(profile_path), "--estimate", str(profile_path)])
    assert "that is a profile, not an estimate" in err


# -- deeply nested JSON ----------------------------------------------------------------------------
@pytest.fixture
def deep_json(tmp_path: Path) -> str:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return str(path)


@pytest.mark.parametrize(
    "args",
    [
        ["estimate", "{deep}"],
        ["compare", "{deep}"],
        ["compare", "{profile}", "--estimate", "{deep}"],
        ["report", "{deep}"],
        ["report", "{profile}", "--estimate", "{deep}"],
        ["replay", "{deep}"],
    ],
    ids=lambda a: "-".join(a).replace("{", "").replace("}", ""),
)
def test_deeply_nested_json_is_one_line(capsys, deep_json, profile_path, args) -> None:
    argv = [a.format(deep=deep_json, profile=profile_path) for a in args]
    assert "nested deeper than" in one_line_error(capsys, argv)


def test_json_nested_within_the_parser_but_beyond_the_limit_is_refused(capsys, tmp_path, profile_path) -> None:
    from memprof.estimators import files

    # 500 levels parse (the interpreter allows ~1000) but would recurse in every later copy of the record
    nested: dict[str, Any] = {}
    node = nested
    for _ in range(500):
        node["a"] = {}
        node = node["a"]
    path = mutated(profile_path, tmp_path, ("settings", "hf_config"), nested)
    assert f"nested deeper than {files.MAX_JSON_DEPTH}" in one_line_error(capsys, ["compare", path])


# -- files that are not regular files --------------------------------------------------------------
FILE_ARGUMENTS = [
    ["estimate", "{f}"],
    ["compare", "{f}"],
    ["compare", "{profile}", "--estimate", "{f}"],
    ["report", "{f}"],
    ["report", "{profile}", "--estimate", "{f}"],
    ["replay", "{f}"],
]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("args", FILE_ARGUMENTS, ids=lambda a: "-".join(a[:1] + a[2:3]))
def test_a_device_is_refused_before_it_is_read(capsys, profile_path, args) -> None:
    argv = [a.format(f="/dev/zero", profile=profile_path) for a in args]
    assert "/dev/zero is a character device, not a file" in one_line_error(capsys, argv)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("args", FILE_ARGUMENTS, ids=lambda a: "-".join(a[:1] + a[2:3]))
def test_a_named_pipe_is_refused_without_blocking(tmp_path, profile_path, args) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    argv = [a.format(f=fifo, profile=profile_path) for a in args]
    # a subprocess with a timeout: reading a pipe nobody writes blocks forever
    proc = subprocess.run(
        [sys.executable, "-m", "memprof", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is a named pipe, not a file" in proc.stderr


def test_a_file_over_the_size_limit_is_refused(capsys, monkeypatch, tmp_path, profile_path) -> None:
    from memprof.estimators import files

    monkeypatch.setattr(files, "MAX_INPUT_BYTES", 100)
    assert "larger than" in one_line_error(capsys, ["compare", str(profile_path)])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2}) * 3)
    assert "larger than" in one_line_error(capsys, ["estimate", str(config)])


def test_the_size_limit_is_documented() -> None:
    from memprof.estimators import files

    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "MAX_INPUT_BYTES" in doc and "MAX_JSON_DEPTH" in doc and "MAX_LAYERS" in doc
    assert files.MAX_INPUT_BYTES == 1 << 30 and "1 GiB" in doc


def test_report_out_naming_a_directory_is_one_line(capsys, tmp_path, profile_path) -> None:
    (tmp_path / "figures.png").mkdir()
    err = one_line_error(capsys, ["report", str(profile_path), "--out", str(tmp_path / "figures.png")])
    assert "is a directory" in err


# -- the allocator simulator ---------------------------------------------------------------------
def big_snapshot(tmp_path: Path, size: int) -> str:
    trace = [
        {"action": "alloc", "addr": 1 << 45, "size": size, "stream": 0, "time_us": 1, "frames": []},
        {"action": "free_completed", "addr": 1 << 45, "size": size, "stream": 0, "time_us": 2, "frames": []},
    ]
    path = tmp_path / "big.pickle"
    path.write_bytes(pickle.dumps({"segments": [], "device_traces": [trace]}))
    return str(path)


@pytest.mark.parametrize("size", [1 << 40, (1 << 40) + 1, 1 << 45])
def test_a_snapshot_with_a_terabyte_allocation_replays(capsys, tmp_path, size) -> None:
    # the what-if tries expandable segments, whose address space was fixed at 1 TiB without --capacity
    assert main(["replay", big_snapshot(tmp_path, size), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peak"]["allocated"] >= size
    candidates = out["what_if"]["candidates"]
    assert "expandable_segments:True" in [c["conf"] for c in candidates]
    assert all(c["peak_allocated"] >= size and not c["oom"] for c in candidates)


def test_an_allocation_beyond_the_simulator_limit_is_one_line(capsys, tmp_path) -> None:
    assert "2**48 bytes" in one_line_error(capsys, ["replay", big_snapshot(tmp_path, 1 << 49)])


def test_expandable_segments_with_a_huge_batch_estimates(capsys) -> None:
    code = main(["estimate", "gpt2", "--alloc-conf", "expandable_segments:True", "--batch-size", "100000"])
    assert code == 0, capsys.readouterr().err


# -- configs that describe impossible models -----------------------------------------------------
@pytest.mark.parametrize("layers", [513, 10**5, 10**9])
def test_a_config_with_too_many_layers_is_refused_at_once(capsys, tmp_path, layers) -> None:
    config = tmp_path / "config.json"
    dims = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
    config.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers, **dims}))
    start = time.perf_counter()
    assert "MAX_LAYERS" in one_line_error(capsys, ["estimate", str(config)])
    assert time.perf_counter() - start < 5


def test_a_config_with_an_absurd_dimension_is_refused(capsys, tmp_path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10**40, "n_embd": 8, "n_layer": 1, "n_head": 2}))
    assert "'vocab_size'" in one_line_error(capsys, ["estimate", str(config)])


@pytest.mark.parametrize("value", ["1e400", "NaN", str(10**400)], ids=["inf", "nan", "400-digits"])
def test_a_config_number_no_family_checks_is_bounded_too(capsys, tmp_path, value) -> None:
    # image_size is read by the ViT family only through arithmetic that overflowed on such values
    config = tmp_path / "config.json"
    dims = '"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 8'
    config.write_text(f'{{"model_type": "vit", {dims}, "image_size": {value}}}')
    assert "'image_size'" in one_line_error(capsys, ["estimate", str(config)])


def test_a_null_size_is_refused_rather_than_assumed(capsys, tmp_path) -> None:
    config = tmp_path / "config.json"
    fields = {"model_type": "gpt2", "vocab_size": 8, "n_embd": 8, "n_layer": 2, "n_head": 2, "n_positions": None}
    config.write_text(json.dumps(fields))
    assert "'n_positions' is null" in one_line_error(capsys, ["estimate", str(config)])


def test_brackets_inside_strings_do_not_count_as_nesting(capsys, tmp_path) -> None:
    config = tmp_path / "config.json"
    fields = {"model_type": "gpt2", "vocab_size": 100, "n_embd": 16, "n_layer": 2, "n_head": 2}
    config.write_text(json.dumps({**fields, "_name_or_path": "[" * 500 + "{" * 500}))
    assert main(["estimate", str(config), "--format", "json"]) == 0, capsys.readouterr().err


def test_the_largest_allowed_model_still_estimates(capsys, tmp_path) -> None:
    from memprof.estimators.models import MAX_LAYERS

    config = tmp_path / "config.json"
    small = {"vocab_size": 100, "n_embd": 16, "n_head": 2}
    config.write_text(json.dumps({"model_type": "gpt2", "n_layer": MAX_LAYERS, **small}))
    assert main(["estimate", str(config), "--format", "json"]) == 0


# -- flags -------------------------------------------------------------------------------------------
def test_fit_refuses_batch_size_0_with_an_automatic_sequence(capsys) -> None:
    err = one_line_error(capsys, ["fit", "gpt2", "--gpu", "h100-80gb", "--seq-len", "auto", "--batch-size", "0"])
    assert "--batch-size must be a whole number from 1" in err


@pytest.mark.parametrize("only", ["", " "])
def test_validate_refuses_an_empty_only(capsys, only) -> None:
    assert "--only needs a part of a case id" in one_line_error(capsys, ["validate", "--only", only])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["estimate", "gpt2", "--no-such-flag"], "No such option '--no-such-flag'"),
        (["compare"], "Missing argument 'PROFILE'"),
        (["estimate", "gpt2", "--format", "xml"], "Invalid value for '--format'"),
        (["estimate", "gpt2", "--zero", "7"], "Invalid value for '--zero'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_clicks_usage_errors_are_one_line(capsys, args, message) -> None:
    err = one_line_error(capsys, args)
    assert message in err and "--help" in err


def test_a_size_with_thousands_of_digits_is_one_line(capsys, tmp_path) -> None:
    err = one_line_error(capsys, ["replay", big_snapshot(tmp_path, 1 << 20), "--capacity", "9" * 5000])
    assert "16 EiB" in err


# -- third-party noise stays out of memprof's output -------------------------------------------------
def test_building_a_bitsandbytes_optimizer_prints_nothing() -> None:
    pytest.importorskip("bitsandbytes")
    # a fresh interpreter: bitsandbytes logs its missing optional CPU kernels once, at import
    code = "import torch, memprof.validate as v; v.make_optimizers('adamw8bit', torch.nn.Linear(2, 2))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == "", proc.stderr[:300]
