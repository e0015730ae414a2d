"""`memprof estimate --ds-config / --accelerate-config`: DeepSpeed and accelerate configs as input.

Each config gives the same record as the flags it stands for; contradictions (between files, or a
file and a flag) and unreadable files are one line and exit 2; settings memprof does not model are
named (an error in the CLI and with strict=True, a warning with strict=False)."""

import json
import textwrap

import pytest

from memprof.cli import main
from memprof.estimators.errors import MemprofUserError
from memprof.integrations.configs import FSDP1_NOTE, knobs_from_accelerate_config, knobs_from_ds_config

MODEL = "gpt2-124m"

# what `deepspeed` examples and the HF docs ship: ZeRO-2 with CPU optimizer offload in bf16
DS_ZERO2_OFFLOAD = {
    "train_batch_size": 64,
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}},
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "allgather_partitions": True,
        "allgather_bucket_size": 5e8,
        "overlap_comm": False,
        "reduce_scatter": True,
        "reduce_bucket_size": 5e8,
        "contiguous_gradients": True,
    },
    "steps_per_print": 2000,
    "wall_clock_breakdown": False,
}
DS_ZERO2_FLAGS = ["--batch-size", "4", "--grad-accumulation", "2", "--gpus", "8", "--precision", "bf16-master"]
DS_ZERO2_FLAGS += ["--zero", "2", "--offload", "optimizer", "--optimizer", "adamw"]

DS_ZERO3_PARAM_OFFLOAD = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1},
    "zero_optimization": {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}
DS_ZERO3_FLAGS = ["--batch-size", "2", "--precision", "16-master", "--zero", "3", "--offload", "optimizer+parameters"]

# the Hugging Face integration's template: "auto" everywhere the Trainer fills in
DS_AUTO = {
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "contiguous_gradients": True},
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
}

ACCELERATE_FSDP = """\
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
fsdp_config:
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_backward_prefetch: BACKWARD_PRE
  fsdp_cpu_ram_efficient_loading: true
  fsdp_forward_prefetch: false
  fsdp_offload_params: true
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_sync_module_states: true
  fsdp_use_orig_params: true
machine_rank: 0
main_training_function: main
mixed_precision: bf16
num_machines: 1
num_processes: 4
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""
# FULL_SHARD with offloaded parameters: FSDP2's fully_shard with CPUOffloadPolicy (memprof's engine fsdp)
FSDP_FLAGS = ["--gpus", "4", "--precision", "bf16-mixed", "--engine", "fsdp", "--zero", "3", "--offload", "optimizer"]

ACCELERATE_DEEPSPEED_FILE = """\
compute_environment: LOCAL_MACHINE
deepspeed_config:
  deepspeed_config_file: ds_config.json
  zero3_init_flag: false
distributed_type: DEEPSPEED
machine_rank: 0
num_machines: 1
num_processes: 8
use_cpu: false
"""

ACCELERATE_DDP = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
gpu_ids: all
machine_rank: 0
mixed_precision: fp16
num_machines: 1
num_processes: 2
use_cpu: false
"""
DDP_FLAGS = ["--gpus", "2", "--precision", "16-mixed", "--zero", "0"]


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return str(path)


def _record(capsys, *args):
    assert main(["estimate", MODEL, *args, "--format", "json"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _refused(capsys, *args):
    assert main(["estimate", MODEL, *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("memprof: error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("option", "name", "content", "flags"),
    [
        ("--ds-config", "ds_config.json", DS_ZERO2_OFFLOAD, DS_ZERO2_FLAGS),
        ("--ds-config", "ds_config.json", DS_ZERO3_PARAM_OFFLOAD, DS_ZERO3_FLAGS),
        ("--accelerate-config", "default_config.yaml", ACCELERATE_FSDP, FSDP_FLAGS),
        ("--accelerate-config", "default_config.yaml", ACCELERATE_DDP, DDP_FLAGS),
    ],
    ids=["ds-zero2-offload", "ds-zero3-param-offload", "accelerate-fsdp", "accelerate-ddp"],
)
def test_a_config_gives_the_record_of_its_flags(tmp_path, capsys, option, name, content, flags):
    # GIVEN a config file as the tools write it
    path = _write(tmp_path, name, content)
    # WHEN it is estimated from the file, and from the flags it stands for
    from_file, _ = _record(capsys, option, path)
    from_flags, _ = _record(capsys, *flags)
    # THEN the records are the same
    assert from_file == from_flags


def test_the_table_says_which_setting_set_each_knob(tmp_path, capsys):
    path = _write(tmp_path, "ds_config.json", DS_ZERO2_OFFLOAD)
    assert main(["estimate", MODEL, "--ds-config", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "batch_size from ds_config.json: train_micro_batch_size_per_gpu=4" in lines
    assert "precision from ds_config.json: bf16.enabled=true" in lines
    assert "zero from ds_config.json: zero_optimization.stage=2" in lines
    assert (
        "gpus from ds_config.json: train_batch_size=64 / (train_micro_batch_size_per_gpu=4 x "
        "gradient_accumulation_steps=2)" in lines
    )


def test_auto_values_leave_the_knob_at_the_flag_and_say_so(tmp_path, capsys):
    path = _write(tmp_path, "ds_config.json", DS_AUTO)
    # the Trainer would fill the "auto"s from TrainingArguments; the flags do it here
    from_file, err = _record(capsys, "--ds-config", path, "--batch-size", "8", "--precision", "bf16-master")
    assert (
        'memprof: warning: train_micro_batch_size_per_gpu="auto": filled by the Hugging Face integration from '
        "per_device_train_batch_size; batch_size stays at the flag/default"
    ) in err.splitlines()
    assert any(line.startswith('memprof: warning: bf16/fp16.enabled="auto"') for line in err.splitlines())
    flags = ["--batch-size", "8", "--precision", "bf16-master", "--zero", "2", "--offload", "optimizer"]
    assert from_file == _record(capsys, *flags)[0]


def test_an_accelerate_deepspeed_config_reads_its_ds_config_file(tmp_path, capsys):
    # GIVEN an accelerate config naming a ds_config.json beside it (8 processes: train_batch_size 64 agrees)
    _write(tmp_path, "ds_config.json", DS_ZERO2_OFFLOAD)
    path = _write(tmp_path, "default_config.yaml", ACCELERATE_DEEPSPEED_FILE)
    from_file, _ = _record(capsys, "--accelerate-config", path)
    assert from_file == _record(capsys, *DS_ZERO2_FLAGS)[0]
    # and an inline deepspeed_config block
    inline = ACCELERATE_DDP.replace("distributed_type: MULTI_GPU", "distributed_type: DEEPSPEED").replace(
        "mixed_precision: fp16", "mixed_precision: bf16"
    )
    inline += "deepspeed_config:\n  gradient_accumulation_steps: 4\n  offload_optimizer_device: cpu\n"
    inline += "  offload_param_device: none\n  zero_stage: 2\n"
    path = _write(tmp_path, "inline.yaml", inline)
    from_file, _ = _record(capsys, "--accelerate-config", path)
    flags = ["--gpus", "2", "--precision", "bf16-master", "--zero", "2", "--offload", "optimizer"]
    assert from_file == _record(capsys, *flags, "--grad-accumulation", "4")[0]


def test_contradictions_are_one_line(tmp_path, capsys):
    ds = _write(tmp_path, "ds_config.json", DS_ZERO2_OFFLOAD)
    acc = _write(tmp_path, "default_config.yaml", ACCELERATE_DDP)
    # an agreeing flag is fine
    _record(capsys, "--ds-config", ds, "--zero", "2")
    assert _refused(capsys, "--ds-config", ds, "--zero", "3") == (
        "memprof: error: --zero 3 contradicts ds_config.json: zero_optimization.stage=2 (= 2); "
        "drop the flag or edit the file"
    )
    # two files setting one knob differently name both
    assert _refused(capsys, "--ds-config", ds, "--accelerate-config", acc) == (
        "memprof: error: ds_config.json: train_batch_size=64 / (train_micro_batch_size_per_gpu=4 x "
        "gradient_accumulation_steps=2) (= 8) contradicts default_config.yaml: num_processes=2 (= 2); "
        "edit one of the files"
    )
    # train_batch_size that is no whole number of GPUs
    bad = _write(tmp_path, "uneven.json", {**DS_ZERO2_OFFLOAD, "train_batch_size": 60})
    assert "train_batch_size=60 is not" in _refused(capsys, "--ds-config", bad)


@pytest.mark.parametrize(
    ("option", "name", "content", "says"),
    [
        ("--ds-config", "ds_config.json", "{not json", "is not JSON"),
        ("--ds-config", "ds_config.json", "[1, 2]", "holds list, not an object of settings"),
        ("--ds-config", "ds_config.json", json.dumps({"zero_optimization": 2}), "must be an object of settings"),
        ("--ds-config", "ds_config.json", json.dumps({"zero_optimization": {"stage": 5}}), "stage must be"),
        ("--ds-config", "ds_config.json", json.dumps({"train_micro_batch_size_per_gpu": "4"}), "whole number"),
        ("--accelerate-config", "c.yaml", "distributed_type: [FSDP\n", "is not YAML"),
        ("--accelerate-config", "c.yaml", "just a string", "holds str"),
        ("--accelerate-config", "c.yaml", "num_processes: two\n", "num_processes must be a whole number"),
        ("--accelerate-config", "c.yaml", "distributed_type: FSDP\nfsdp_config:\n  fsdp_sharding_strategy: X\n", "X"),
    ],
)
def test_an_unreadable_file_is_one_line(tmp_path, capsys, option, name, content, says):
    path = _write(tmp_path, name, content)
    assert says in _refused(capsys, option, path)


def test_a_missing_file_and_a_directory_are_one_line(tmp_path, capsys):
    assert "does not exist" in _refused(capsys, "--ds-config", str(tmp_path / "nope.json"))
    assert "cannot read" in _refused(capsys, "--accelerate-config", str(tmp_path))
    acc = _write(tmp_path, "default_config.yaml", ACCELERATE_DEEPSPEED_FILE)  # its ds_config.json is missing
    assert "ds_config.json' does not exist" in _refused(capsys, "--accelerate-config", acc)


# the bucket sizes, contiguous_gradients, overlap_comm and the stage3_* settings DeepSpeed's engine
# models are the `deepspeed` knob (tests/test_deepspeed.py)
UNMODELLED = [
    (
        {"zero_optimization": {"stage": 2, "sub_group_size": 2e8}},
        "zero_optimization.sub_group_size=200000000.0"
        " is not modelled; memprof assumes DeepSpeed's default 1000000000 (the optimizer step's sub-groups)",
    ),
    ({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 8}}, "zero_hpz_partition_size=8"),
    (
        {
            "zero_optimization": {
                "stage": 3,
                "offload_param": {"device": "nvme"},
                "offload_optimizer": {"device": "nvme"},
            }
        },
        'zero_optimization.offload_optimizer.device="nvme" (ZeRO-Infinity) is not modelled; memprof assumes cpu',
    ),
    ({"activation_checkpointing": {"partition_activations": True}}, "activation_checkpointing.partition_activations"),
    ({"optimizer": {"type": "OneBitAdam"}}, 'optimizer.type="OneBitAdam" is not modelled'),
]


UNMODELLED += [
    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.3}}}, "ratio=0.3"),
]


def test_deepspeed_defaults_are_no_warning():
    # overlap_comm defaults to true at stage 3 (DeepSpeed's DeepSpeedZeroConfig.overlap_comm_valid)
    config = {"zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": 5e8}}
    assert knobs_from_ds_config(config) == (
        {"precision": "32-true", "zero": 3, "offload": "none"},
        {
            "precision": "DeepSpeed config: neither bf16 nor fp16 enabled",
            "zero": "DeepSpeed config: zero_optimization.stage=3",
            "offload": "DeepSpeed config: zero_optimization.offload_optimizer.device=none, offload_param.device=none",
        },
        [],
    )


@pytest.mark.parametrize(("config", "says"), UNMODELLED)
def test_unmodelled_settings_are_named(tmp_path, capsys, config, says):
    # strict (the CLI and the library default): an error naming the setting and what memprof assumes
    with pytest.raises(MemprofUserError, match="strict=False") as err:
        knobs_from_ds_config(config)
    assert says in str(err.value)
    assert says in _refused(capsys, "--ds-config", _write(tmp_path, "ds_config.json", config))
    # strict=False: a warning, and the knobs memprof does model
    knobs, _, warnings = knobs_from_ds_config(config, strict=False)
    assert any(says in w for w in warnings) and "zero" in knobs


def test_fsdp_strategies_are_the_fsdp_engine_and_hybrid_sharding_is_a_problem(tmp_path):
    knobs, prov, warnings = knobs_from_accelerate_config(_write(tmp_path, "c.yaml", ACCELERATE_FSDP))
    assert (knobs["engine"], knobs["zero"], knobs["offload"], knobs["gpus"]) == ("fsdp", 3, "optimizer", 4)
    assert prov["engine"].endswith('fsdp_config.fsdp_sharding_strategy="FULL_SHARD"')
    # no fsdp_version: FSDP1, predicted as FSDP2 and said so; nothing is "approximated by ZeRO" any more
    assert warnings == [FSDP1_NOTE]
    grad_op = (
        textwrap.dedent(ACCELERATE_FSDP)
        .replace("FULL_SHARD", "SHARD_GRAD_OP")
        .replace("fsdp_offload_params: true", "fsdp_offload_params: false")
    )
    knobs = knobs_from_accelerate_config(_write(tmp_path, "g.yaml", grad_op))[0]
    assert (knobs["engine"], knobs["zero"], knobs["offload"]) == ("fsdp", 2, "none")
    no_shard = grad_op.replace("SHARD_GRAD_OP", "NO_SHARD")
    knobs, _, warnings = knobs_from_accelerate_config(_write(tmp_path, "n.yaml", no_shard))
    assert (knobs["engine"], knobs["zero"], warnings) == ("ddp", 0, [])
    hybrid = ACCELERATE_FSDP.replace("FULL_SHARD", "HYBRID_SHARD")
    with pytest.raises(MemprofUserError, match="HYBRID_SHARD"):
        knobs_from_accelerate_config(_write(tmp_path, "h.yaml", hybrid))
    knobs = knobs_from_accelerate_config(_write(tmp_path, "h.yaml", hybrid), strict=False)[0]
    assert (knobs["engine"], knobs["zero"]) == ("fsdp", 3)


def test_fsdp2_reshard_after_forward_is_the_zero_stage_without_a_note(tmp_path):
    base = "distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n  fsdp_version: 2\n"
    for reshard, zero in (("true", 3), ("false", 2)):
        path = _write(tmp_path, f"v2{zero}.yaml", base + f"  fsdp_reshard_after_forward: {reshard}\n")
        knobs, _, warnings = knobs_from_accelerate_config(path)
        assert (knobs["engine"], knobs["zero"], knobs["offload"], warnings) == ("fsdp", zero, "none", [])


def test_a_single_process_config_with_bare_yaml_no_values(tmp_path, capsys):
    # YAML 1.1 reads an unquoted NO / no as false; accelerate means the strings
    path = _write(tmp_path, "c.yaml", "distributed_type: NO\nmixed_precision: no\nnum_processes: 1\nuse_cpu: false\n")
    knobs, _, warnings = knobs_from_accelerate_config(path)
    assert (knobs["gpus"], knobs["precision"], knobs["zero"], warnings) == (1, "32-true", 0, [])
    assert _record(capsys, "--accelerate-config", path)[0] == _record(capsys, "--precision", "32-true")[0]
