"""memprof.integrations.configs: a saved TrainingArguments JSON read into estimate knobs."""

from __future__ import annotations

import json

import pytest

from memprof.estimators.errors import MemprofUserError, ParameterError
from memprof.integrations.configs import FSDP1_NOTE, HF_OPTIMIZERS, knobs_from_training_args, map_optim

# the fields of `trainer.args.to_json_string()` this mapping reads, as transformers writes them
SAVED = {
    "output_dir": "out",
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 4,
    "bf16": True,
    "fp16": False,
    "tf32": True,
    "activation_checkpointing": True,
    "activation_checkpointing_kwargs": {"use_reentrant": False},
    "optim": "adamw_torch_fused",
    "optim_args": None,
    "use_cpu": False,
    "fsdp": [],
    "deepspeed": None,
    "torch_compile": False,
}


def test_a_saved_file_gives_knobs_and_says_where_each_came_from(tmp_path):
    path = tmp_path / "training_args.json"
    path.write_text(json.dumps(SAVED))
    knobs, provenance, warnings = knobs_from_training_args(path)
    assert knobs == {
        "batch_size": 8,
        "grad_accumulation": 4,
        "precision": "bf16-mixed",
        "checkpointing": "full",
        "optimizer": "adamw",
        "optimizer_impl": "fused",
        "device": "cuda",
    }
    assert provenance["batch_size"] == "training_args.json: per_device_train_batch_size=8"
    assert provenance["precision"] == "training_args.json: bf16=true, fp16=false with weights in float32"
    assert "use_reentrant" in provenance["checkpointing"]
    assert "TF32" in provenance["tf32"]
    assert warnings == []
    # a folder holding the file, and the dict itself, read the same
    assert knobs_from_training_args(tmp_path)[0] == knobs
    assert knobs_from_training_args(SAVED)[0] == knobs


def test_the_knobs_are_estimate_arguments(tmp_path):
    import memprof

    knobs, _, _ = knobs_from_training_args({**SAVED, "max_length": 512})
    assert knobs["seq_len"] == 512
    est = memprof.estimate("gpt2-1.5b", **knobs)
    assert est.record.settings.grad_accumulation == 4
    assert est.record.settings.optimizer_impl == "fused"


def test_weights_dtype_decides_true_or_mixed():
    assert knobs_from_training_args(SAVED, param_dtype="bfloat16")[0]["precision"] == "bf16-true"
    assert knobs_from_training_args({**SAVED, "bf16": False}, param_dtype="float32")[0]["precision"] == "32-true"
    assert knobs_from_training_args({**SAVED, "bf16": False, "fp16": True})[0]["precision"] == "16-mixed"
    with pytest.raises(ParameterError, match="param_dtype"):
        knobs_from_training_args(SAVED, param_dtype="int8")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"optim": "lomo"}, "optim='lomo'"),
        ({"optim": "brand_new_optim"}, "brand_new_optim"),
        ({"fsdp": ["hybrid_shard"]}, "fsdp"),
        ({"activation_checkpointing_kwargs": {"every_n_layers": 2}}, "every_n_layers=2"),
    ],
)
def test_an_option_memprof_cannot_model_is_an_error_or_a_warning(change, named):
    # strict (the library default): a MemprofUserError naming the setting and what memprof assumes
    with pytest.raises(MemprofUserError, match="assumes") as info:
        knobs_from_training_args({**SAVED, **change})
    assert named in str(info.value)
    # strict=False (what the callbacks use): the same sentence as a warning, the assumption applied
    knobs, _, warnings = knobs_from_training_args({**SAVED, **change}, strict=False)
    assert any(named in w and "assumes" in w for w in warnings), warnings
    assert knobs["optimizer"] is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json {", "is not JSON"),
        ('{"model_type": "llama"}', "is not a saved TrainingArguments"),
        ("[1, 2]", "is not a saved TrainingArguments"),
    ],
)
def test_a_file_memprof_cannot_read_is_a_user_error(tmp_path, content, message):
    path = tmp_path / "args.json"
    path.write_text(content)
    with pytest.raises(MemprofUserError, match=message):
        knobs_from_training_args(path)


def test_missing_file_pickled_args_and_bad_values(tmp_path):
    with pytest.raises(MemprofUserError, match="does not exist"):
        knobs_from_training_args(tmp_path / "nope.json")
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04")
    with pytest.raises(MemprofUserError, match="pickled TrainingArguments"):
        knobs_from_training_args(tmp_path / "training_args.bin")
    with pytest.raises(MemprofUserError, match="per_device_train_batch_size must be"):
        knobs_from_training_args({**SAVED, "per_device_train_batch_size": 0})
    with pytest.raises(MemprofUserError, match="bf16 and fp16"):
        knobs_from_training_args({**SAVED, "fp16": True})
    with pytest.raises(ParameterError, match="path_or_dict"):
        knobs_from_training_args(42)  # type: ignore[arg-type]


def test_every_mapped_optimizer_is_a_registry_entry_with_valid_options():
    from memprof.estimators.optimizers import get_optimizer

    for name, entry in HF_OPTIMIZERS.items():
        registry, options, _ = map_optim(name)
        assert registry == entry.registry
        if registry is not None:
            options.pop("optimizer_impl", None)
            get_optimizer(registry).resolve_options(options)


def test_a_real_to_json_string_round_trips(tmp_path):
    # GIVEN what a real Trainer writes (transformers' own serialization, enums as strings)
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        optim="adamw_bnb_8bit",
        gradient_checkpointing=True,
    )
    path = tmp_path / "training_args.json"
    path.write_text(args.to_json_string())
    knobs, provenance, warnings = knobs_from_training_args(path)
    assert knobs == {
        "batch_size": 3,
        "grad_accumulation": 2,
        "precision": "32-true",
        "checkpointing": "full",
        "optimizer": "adamw8bit",
        "optim_bits": 8,
        "device": "cpu",
    }
    assert provenance["optimizer"] == 'training_args.json: optim="adamw_bnb_8bit"'
    assert any("GlobalOptimManager" in w for w in warnings)


def test_the_trainers_deepspeed_config_sets_precision_zero_and_offload():
    # GIVEN TrainingArguments naming a ZeRO-3 config with parameter offload, its batch left to the Trainer
    ds = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}},
    }
    knobs, prov, _ = knobs_from_training_args({**SAVED, "deepspeed": ds}, strict=False)
    # THEN DeepSpeed's precision, stage and offload win; "auto" keeps the Trainer's batch
    assert (knobs["precision"], knobs["zero"], knobs["offload"]) == ("bf16-master", 3, "optimizer+parameters")
    assert knobs["batch_size"] == SAVED["per_device_train_batch_size"]
    assert "deepspeed -> " in prov["zero"] and "zero_optimization.stage" in prov["zero"]


def test_the_trainers_fsdp_words_are_the_fsdp_engine():
    knobs, prov, warnings = knobs_from_training_args({**SAVED, "fsdp": "full_shard offload auto_wrap"}, strict=False)
    # full_shard: FSDP2's fully_shard with reshard_after_forward=True; offload: its CPUOffloadPolicy
    assert (knobs["engine"], knobs["zero"], knobs["offload"]) == ("fsdp", 3, "optimizer")
    assert prov["engine"] == prov["zero"] == 'training arguments: fsdp="full_shard offload auto_wrap"'
    assert warnings == [f'fsdp="full_shard offload auto_wrap": {FSDP1_NOTE}']  # no fsdp_config version 2
    fsdp2 = {**SAVED, "fsdp": ["shard_grad_op"], "fsdp_config": {"version": 2}}
    knobs, _, warnings = knobs_from_training_args(fsdp2, strict=False)
    assert (knobs["engine"], knobs["zero"], warnings) == ("fsdp", 2, []) and "offload" not in knobs
    knobs, _, warnings = knobs_from_training_args({**SAVED, "fsdp": "no_shard"}, strict=False)
    assert (knobs["engine"], knobs["zero"], warnings) == ("ddp", 0, [])
    assert not any("approximated" in w for w in warnings)
