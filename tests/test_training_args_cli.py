"""`memprof estimate --training-args`: knobs from a saved TrainingArguments, flags must agree with it."""

import json

from memprof.cli import main

ARGS = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "bf16": True,
    "fp16": False,
    "gradient_checkpointing": True,
    "optim": "adamw_torch",
}


def _file(tmp_path, **changes):
    path = tmp_path / "training_args.json"
    path.write_text(json.dumps({**ARGS, **changes}))
    return str(path)


def test_the_file_sets_the_knobs_and_the_table_says_which_setting_set_what(tmp_path, capsys):
    # GIVEN a saved TrainingArguments
    path = _file(tmp_path)
    # WHEN it is estimated from the file alone
    assert main(["estimate", "gpt2-124m", "--training-args", path, "--format", "json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    # THEN the knobs are the file's
    assert (
        settings["batch_size"],
        settings["grad_accumulation"],
        settings["precision"],
        settings["checkpointing"],
    ) == (
        4,
        2,
        "bf16-mixed",
        "full",
    )
    assert main(["estimate", "gpt2-124m", "--training-args", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "batch_size from training_args.json: per_device_train_batch_size=4" in lines
    assert "checkpointing from training_args.json: gradient_checkpointing=true" in lines


def test_the_same_estimate_as_the_flags(tmp_path, capsys):
    path = _file(tmp_path)
    assert main(["estimate", "gpt2-124m", "--training-args", path, "--format", "json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    flags = ["--batch-size", "4", "--grad-accumulation", "2", "--precision", "bf16-mixed", "--checkpointing", "full"]
    assert main(["estimate", "gpt2-124m", *flags, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["peak"] == from_file["peak"]


def test_an_agreeing_flag_is_fine_and_a_contradicting_one_is_one_line(tmp_path, capsys):
    path = _file(tmp_path)
    assert main(["estimate", "gpt2-124m", "--training-args", path, "--batch-size", "4", "--format", "json"]) == 0
    capsys.readouterr()
    assert main(["estimate", "gpt2-124m", "--training-args", path, "--precision", "32-true"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "memprof: error: --precision 32-true contradicts training_args.json: bf16=true, fp16=false with weights "
        "in float32 (= bf16-mixed); drop the flag or edit the file"
    ]


def test_a_file_memprof_cannot_read_is_one_line(tmp_path, capsys):
    bad = tmp_path / "training_args.json"
    bad.write_text("{not json")
    assert main(["estimate", "gpt2-124m", "--training-args", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("memprof: error: ")


def test_population_is_a_flag_of_the_population_optimizers(capsys):
    assert main(["estimate", "gpt2-124m", "--optimizer", "ga", "--population", "4", "--format", "json"]) == 0
    four = json.loads(capsys.readouterr().out)
    assert main(["estimate", "gpt2-124m", "--optimizer", "ga", "--population", "8", "--format", "json"]) == 0
    eight = json.loads(capsys.readouterr().out)
    assert four["settings"]["population"] == 4 and eight["settings"]["population"] == 8
    # four more full fp32 copies of the weights (and four fp32 fitness values)
    assert eight["model_states"]["optimizer_states"] - four["model_states"]["optimizer_states"] == 4 * (
        four["model_states"]["parameters"] + 4
    )
    assert main(["estimate", "gpt2-124m", "--optimizer", "adamw", "--population", "4"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "memprof: error: unknown option(s) population for optimizer 'adamw'; valid: amsgrad, capturable, fused"
    ]
