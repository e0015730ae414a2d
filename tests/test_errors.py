"""The exception tree: library messages name parameters, the CLI names flags, one line, exit 2."""

import pytest

import memprof
from memprof.cli import flag_of, main
from memprof.estimators.errors import (
    MemprofError,
    MemprofUserError,
    ParameterError,
    RecordError,
    UnknownNameError,
    UserCodeError,
    unknown_name,
)


def test_the_tree():
    assert issubclass(MemprofUserError, MemprofError) and issubclass(MemprofUserError, ValueError)
    for cls in (UnknownNameError, ParameterError, RecordError):
        assert issubclass(cls, MemprofUserError)
    assert issubclass(UserCodeError, MemprofError) and not issubclass(UserCodeError, ValueError)
    assert not hasattr(MemprofUserError("x"), "exit_code")  # the exit code is the CLI's business


def test_a_parameter_error_speaks_python_in_the_library_and_flags_on_the_cli():
    err = ParameterError(
        "{batch_size} must be at least 1; or set {seq_len} lower ({other} stays)", "batch_size", "seq_len"
    )
    assert str(err) == "batch_size must be at least 1; or set seq_len lower ({other} stays)"
    assert err.cli_message(flag_of) == "--batch-size must be at least 1; or set --seq-len lower ({other} stays)"


def test_library_calls_name_parameters():
    with pytest.raises(ParameterError) as err:
        memprof.estimate("gpt2-124m", batch_size=0)
    assert str(err.value) == "batch_size must be a whole number from 1 to 1,048,576, got 0"
    with pytest.raises(ParameterError, match=r"^gpus must be a whole number"):
        memprof.estimate("gpt2-124m", gpus=0)
    with pytest.raises(ParameterError, match=r"^invalid checkpointing 'some'; valid: none, selective, full$"):
        memprof.estimate("gpt2-124m", checkpointing="some")


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["estimate", "gpt2-124m", "--batch-size", "0"],
            "memprof: error: --batch-size must be a whole number from 1 to 1,048,576, got 0",
        ),
        (
            ["estimate", "gpt2-124m", "--zero", "1", "--offload", "optimizer+parameters"],
            "memprof: error: parameter offload needs ZeRO stage 3 (--zero 3); "
            "use --offload optimizer with stages 1 and 2",
        ),
        (
            ["estimate", "gpt2-124m", "--device", "cpu", "--alloc-conf", "expandable_segments:True"],
            "memprof: error: --alloc-conf configures the CUDA caching allocator; drop it with --device cpu",
        ),
        (
            ["estimate", "gpt2-124m", "--seq-len", "4096"],
            "memprof: error: --seq-len 4096 exceeds the 1024 learned positions of gpt2-124m; "
            "use --seq-len 1024 or less",
        ),
        (
            ["estimate", "gpt2-124m", "--optimizer", "adamww"],
            "memprof: error: unknown optimizer 'adamww'; did you mean adamw, adam, radam?",
        ),
    ],
)
def test_the_cli_prints_one_line_with_flags_and_exits_2(capsys, argv, line):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [line]


def test_unknown_names_carry_their_suggestions():
    err = unknown_name("optimizer", "adamww", ["adam", "adamw", "sgd"])
    assert isinstance(err, UnknownNameError)
    assert (err.kind, err.name, err.suggestions) == ("optimizer", "adamww", ("adamw", "adam"))
    assert str(err) == "unknown optimizer 'adamww'; did you mean adamw, adam?"
    assert str(unknown_name("gpu", "zz", ["b", "a"])) == "unknown gpu 'zz'; valid: a, b"
