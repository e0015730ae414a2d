"""Model presets and config.json reading, checked tensor by tensor against transformers itself.

Every preset and a few hundred random small configs are built by transformers on the meta device (no
memory, no download) and their `named_parameters()` must equal `ModelSpec.parameter_tensors()`:
same names, same shapes, same order, tied weights listed once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from memprof.estimators.errors import MemprofUserError  # noqa: E402
from memprof.estimators.families import SUPPORTED_MODEL_TYPES  # noqa: E402
from memprof.estimators.models import (  # noqa: E402
    ModelSpec,
    load_model,
    normalize_config,
    preset_aliases,
    preset_info,
    preset_names,
    spec_from_config_file,
)
from memprof.profiles import data_path  # noqa: E402

transformers.logging.set_verbosity_error()

AUTO_CLASS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "image-classification": "AutoModelForImageClassification",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
}


def hf_named_parameters(spec: ModelSpec, config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Build the real head class from `config` on the meta device and list its parameters."""
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(spec.model_type, **kwargs)
    auto = getattr(transformers, AUTO_CLASS[spec.task])
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = auto.from_config(hf_config)
    assert type(model).__name__ == spec.head_class
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def ours(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    return [(t.name, t.shape) for t in spec.parameter_tensors()]


def assert_same_parameters(spec: ModelSpec, config: dict) -> None:
    expected = hf_named_parameters(spec, config)
    got = ours(spec)
    if got != expected:  # show the first difference, not two 1000-line lists
        for i, (a, b) in enumerate(zip(got, expected)):
            assert a == b, f"tensor {i}: ours {a} vs transformers {b}"
        assert len(got) == len(expected), f"{len(got)} tensors vs transformers' {len(expected)}"
    assert spec.num_parameters == sum(_numel(s) for _, s in expected)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def preset_config(name: str) -> dict:
    return json.loads(data_path("models", f"{name}.json").read_text())["config"]


# ---------------------------------------------------------------------------------------------------
# Presets against transformers


@pytest.mark.parametrize("name", preset_names())
def test_preset_parameters_equal_transformers_named_parameters(name):
    # GIVEN the preset's published config.json fields, WHEN transformers builds the head class from them,
    # THEN our derived tensors are its named_parameters() exactly
    spec = load_model(name)
    assert_same_parameters(spec, preset_config(name))


def test_normalized_config_builds_the_same_model():
    # spec.config (defaults and derived fields filled in) is itself a valid transformers config
    for name in ("opt-350m", "qwen2.5-0.5b", "vit-b-16", "llama-2-7b"):
        spec = load_model(name)
        assert_same_parameters(spec, dict(spec.config))


# Totals as model.num_parameters() reports them for the released checkpoints (model cards, the Pythia
# README's parameter table, PEFT "all params" logs); each equals transformers' own count in the test above.
PUBLISHED = {
    # the ZeRO paper's GPT-2 1.5B: 1,557,611,200 with lm_head tied to wte
    "gpt2-1.5b": 1_557_611_200,
    "gpt2-124m": 124_439_808,  # nanoGPT's sizing notebook / HF model card "124M"
    "gpt2-355m": 354_823_168,
    "gpt2-774m": 774_030_080,
    "llama-2-7b": 6_738_415_616,  # PEFT logs for Llama-2-7b-hf: "all params: 6738415616"
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768,  # Qwen2.5 model card: 0.49B (tied embeddings)
    "qwen2.5-7b": 7_615_616_512,  # Qwen2.5 model card: 7.61B
    "pythia-410m": 405_334_016,  # Pythia README table: 405,334,016 total params
    "pythia-6.9b": 6_857_302_016,  # Pythia README table: 6,857,302,016
    "opt-350m": 331_196_416,
    "opt-1.3b": 1_315_758_080,
    "bert-base-uncased": 109_514_298,  # BertForMaskedLM (BertModel with pooler: 109,482,240)
    "bert-large-uncased": 335_174_458,
    "vit-b-16": 86_567_656,  # ViTForImageClassification, 1000 classes
    "qwen3-8b": 8_190_735_360,  # Qwen3-8B model card: 8.2B
    "gemma-2-9b": 9_241_705_984,  # Gemma2ForCausalLM, lm_head tied
    "gemma-3-12b": 11_766_034_176,  # the text model only (Gemma3ForCausalLM); the card's 12B adds the vision tower
    "phi-3-mini": 3_821_079_552,  # Phi-3-mini model card: 3.8B
    "llama-3.2-1b": 1_235_814_400,  # Llama 3.2 model card: 1.23B (tied)
    "llama-3.2-3b": 3_212_749_824,  # Llama 3.2 model card: 3.21B (tied)
    "mixtral-8x7b": 46_702_792_704,  # Mixtral model card: 46.7B total
    "qwen3-30b-a3b": 30_532_122_624,  # Qwen3-30B-A3B model card: 30.5B total, 3.3B activated
    "t5-base": 222_903_552,  # T5ForConditionalGeneration (shared embedding = lm_head): "220M"
    "t5-large": 737_668_096,  # "770M"
}


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, count):
    assert load_model(name).num_parameters == count


def test_gpt2_xl_is_exactly_1_557_611_200():
    assert load_model("gpt2-xl").num_parameters == 1557611200


def test_every_preset_has_an_anchor_and_documented_metadata():
    assert set(PUBLISHED) == set(preset_names())
    readme = data_path("models", "README.md").read_text()
    for name in preset_names():
        info = preset_info(name)
        assert info["source"].startswith("https://"), name
        assert info["hf_id"] in info["aliases"], name
        assert info["notes"], name
        assert f"`{name}`" in readme, f"{name} not listed in profiles/models/README.md"


def test_tied_and_untied_output_layers():
    def names(ref):
        return [t.name for t in load_model(ref).parameter_tensors()]

    assert "lm_head.weight" not in names("gpt2-xl")  # tied to transformer.wte.weight
    assert "lm_head.weight" not in names("qwen2.5-0.5b")  # Qwen2.5-0.5B ties
    assert names("qwen2.5-7b")[-1] == "lm_head.weight"  # Qwen2.5-7B does not
    assert names("llama-2-7b")[-1] == "lm_head.weight"
    assert names("llama-3.1-8b")[-1] == "lm_head.weight"
    assert names("pythia-410m")[-1] == "lm_head.weight"  # GPT-NeoX's separate output matrix
    bert = names("bert-base-uncased")
    assert not any("pooler" in n for n in bert) and not any("decoder" in n for n in bert)
    assert "cls.predictions.bias" in bert


def test_derived_sizes():
    llama = load_model("meta-llama/Llama-3.1-8B")
    assert (
        llama.hidden_size,
        llama.num_layers,
        llama.num_heads,
        llama.num_kv_heads,
        llama.head_dim,
        llama.intermediate_size,
        llama.vocab_size,
        llama.max_positions,
    ) == (4096, 32, 32, 8, 128, 14336, 128256, 131072)
    assert (llama.tie_word_embeddings, llama.gated_mlp, llama.norm, llama.activation) == (
        False,
        True,
        "rmsnorm",
        "silu",
    )
    gpt2 = load_model("gpt2-1.5b")
    assert (
        gpt2.hidden_size,
        gpt2.num_layers,
        gpt2.num_heads,
        gpt2.head_dim,
        gpt2.intermediate_size,
        gpt2.max_positions,
        gpt2.tie_word_embeddings,
        gpt2.norm,
    ) == (1600, 48, 25, 64, 6400, 1024, True, "layernorm")
    vit = load_model("vit-b-16")
    assert (vit.vocab_size, vit.max_positions, vit.num_patches, vit.num_labels, vit.task) == (
        None,
        None,
        196,
        1000,
        "image-classification",
    )
    opt = load_model("opt-350m")
    assert (opt.hidden_size, opt.intermediate_size, opt.config["word_embed_proj_dim"]) == (1024, 4096, 512)
    assert load_model("bert-base").task == "masked-lm"


def test_aliases_are_case_insensitive_and_include_hf_ids():
    assert load_model("GPT2-XL").name == "gpt2-1.5b"
    assert load_model("meta-llama/Llama-3.1-8B").name == "llama-3.1-8b"
    assert load_model("  Qwen/Qwen2.5-0.5B ").name == "qwen2.5-0.5b"
    aliases = preset_aliases()
    assert all(aliases[n] == n for n in preset_names())
    assert set(SUPPORTED_MODEL_TYPES) == {"gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt", "bert", "vit"} | {
        "qwen3",
        "phi3",
        "gemma2",
        "gemma3_text",
        "mixtral",
        "qwen3_moe",
        "t5",
    }
    assert {load_model(n).model_type for n in preset_names()} == set(SUPPORTED_MODEL_TYPES)


def test_spec_is_read_only():
    spec = load_model("gpt2")
    with pytest.raises(TypeError):
        spec.config["n_layer"] = 1  # type: ignore[index]
    assert spec == load_model("gpt2-124m") and hash(spec) == hash(load_model("gpt2-124m"))


def test_estimators_stay_torch_free():
    code = (
        "import sys; import memprof.estimators.models as m; m.load_model('llama-2-70b').num_parameters; "
        "bad = [x for x in ('torch', 'transformers', 'numpy') if x in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------
# config.json files


def write(tmp_path, config, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_config_file_and_folder(tmp_path):
    config = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 128}
    path = write(tmp_path, config)
    by_file, by_folder = load_model(str(path)), load_model(str(tmp_path))
    assert by_file.name == str(path) and by_folder.name == str(tmp_path)
    assert by_file.parameter_tensors() == by_folder.parameter_tensors()
    # missing fields take GPT2Config's defaults: 1024 positions, tied lm_head
    assert by_file.max_positions == 1024 and by_file.tie_word_embeddings
    assert_same_parameters(by_file, config)


def test_existing_folder_wins_over_a_preset_name(tmp_path, monkeypatch):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    write(folder, {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 128})
    monkeypatch.chdir(tmp_path)
    assert load_model("gpt2").hidden_size == 64
    monkeypatch.chdir(folder)  # no ./gpt2 here: the preset
    assert load_model("gpt2").hidden_size == 768


def test_aliased_field_names_are_accepted(tmp_path):
    # transformers maps GPT-2's hidden_size/num_hidden_layers/... onto n_embd/n_layer/...
    config = {
        "model_type": "gpt2",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "vocab_size": 128,
    }
    spec = load_model(str(write(tmp_path, config)))
    assert (spec.hidden_size, spec.num_layers, spec.max_positions) == (64, 2, 32)
    assert_same_parameters(spec, config)


def test_qwen2_missing_kv_heads_takes_the_class_default_of_32(tmp_path):
    config = {
        "model_type": "qwen2",
        "hidden_size": 256,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 64,
        "vocab_size": 32,
    }
    spec = spec_from_config_file(write(tmp_path, config))
    assert spec.num_kv_heads == 32
    assert_same_parameters(spec, config)


@pytest.mark.parametrize(
    "config,message",
    [
        ({"model_type": "gpt2", "n_layer": 2, "n_head": 4, "vocab_size": 128}, "required field 'n_embd' is missing"),
        (
            {"model_type": "gpt2", "n_embd": "64", "n_layer": 2, "n_head": 4, "vocab_size": 128},
            "field 'n_embd' must be an integer, got '64'",
        ),
        (
            {"model_type": "gpt2", "n_embd": 64.0, "n_layer": 2, "n_head": 4, "vocab_size": 128},
            "field 'n_embd' must be an integer",
        ),
        (
            {"model_type": "gpt2", "n_embd": 64, "n_layer": True, "n_head": 4, "vocab_size": 128},
            "field 'n_layer' must be an integer, got True",
        ),
        (
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 0,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 128,
            },
            "field 'intermediate_size' must be positive, got 0",
        ),
        (
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 8,
                "num_hidden_layers": -2,
                "num_attention_heads": 4,
                "vocab_size": 128,
            },
            "field 'num_hidden_layers' must be positive, got -2",
        ),
        (
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 8,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 3,
                "vocab_size": 128,
            },
            "num_attention_heads (4) must be a multiple of num_key_value_heads (3)",
        ),
        (
            {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 5, "vocab_size": 128},
            "n_embd (64) must be a multiple of n_head (5)",
        ),
        (
            {
                "model_type": "opt",
                "hidden_size": 64,
                "ffn_dim": 8,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 128,
                "tie_word_embeddings": "yes",
            },
            "field 'tie_word_embeddings' must be true or false",
        ),
        (
            {"model_type": "mamba", "d_model": 64},
            "unsupported model_type 'mamba'; supported: gpt2, llama, mistral, qwen2, gpt_neox, opt, bert, vit, qwen3",
        ),
        ({"n_embd": 64}, "no 'model_type' field; supported: gpt2"),
        (
            {
                "model_type": "vit",
                "hidden_size": 64,
                "intermediate_size": 8,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 8,
                "patch_size": 16,
            },
            "image_size (8, 8) is smaller than patch_size",
        ),
    ],
)
def test_bad_config_fields(tmp_path, config, message):
    path = write(tmp_path, config)
    with pytest.raises(MemprofUserError) as err:
        load_model(str(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "model_type": "gpt2",\n  "n_embd": 64,,\n}\n')
    with pytest.raises(MemprofUserError, match=r"config\.json: malformed JSON at line 3, column 16"):
        load_model(str(path))


def test_non_object_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(MemprofUserError, match="must hold a JSON object, found list"):
        load_model(str(path))


def test_missing_file_and_empty_folder(tmp_path):
    missing = tmp_path / "nope" / "config.json"
    with pytest.raises(MemprofUserError, match=r"config file not found: .*nope/config.json"):
        load_model(str(missing))
    with pytest.raises(MemprofUserError, match=f"no config.json in folder {tmp_path}"):
        load_model(str(tmp_path))


def test_unknown_preset_suggests_close_matches():
    with pytest.raises(MemprofUserError, match=r"unknown model 'gpt2-xxl'; did you mean .*gpt2-xl"):
        load_model("gpt2-xxl")
    with pytest.raises(MemprofUserError, match=r"unknown model 'llama-3-8b'; did you mean .*llama"):
        load_model("llama-3-8b")
    with pytest.raises(MemprofUserError, match=r"unknown model 'zzzz'; valid: .*gpt2-1.5b"):
        load_model("zzzz")
    with pytest.raises(MemprofUserError, match="unknown model 'meta-llama/Llama-4'"):
        load_model("meta-llama/Llama-4")
    with pytest.raises(MemprofUserError, match="model must be a preset name"):
        load_model("")


def test_spec_from_a_raw_config_dict_applies_defaults():
    raw = preset_config("opt-350m")
    spec = ModelSpec(name="mine", model_type="opt", config=raw, task="causal-lm")
    assert spec.parameter_tensors() == load_model("opt-350m").parameter_tensors()
    assert spec.config["enable_bias"] is True and "enable_bias" not in raw
    with pytest.raises(MemprofUserError, match="config model_type 'opt' differs from 'gpt2'"):
        ModelSpec(name="mine", model_type="gpt2", config=raw, task="causal-lm")


def test_task_must_match_the_family():
    with pytest.raises(MemprofUserError, match="head 'causal-lm' is not modelled for bert; its heads: masked-lm"):
        ModelSpec(name="x", model_type="bert", config=load_model("bert-base").config, task="causal-lm")


# ---------------------------------------------------------------------------------------------------
# Random small configs of every family against transformers

SMALL = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
heads = st.sampled_from([1, 2, 4])
layers = st.integers(1, 3)
sizes = st.sampled_from([8, 16, 24])


@st.composite
def gpt2_configs(draw):
    h = draw(heads)
    return {
        "model_type": "gpt2",
        "n_head": h,
        "n_embd": h * draw(sizes),
        "n_layer": draw(layers),
        "vocab_size": draw(st.integers(5, 70)),
        "n_positions": draw(st.integers(1, 40)),
        "n_inner": draw(st.none() | st.integers(1, 50)),
        "tie_word_embeddings": draw(st.booleans()),
        "add_cross_attention": draw(st.booleans()),
    }


@st.composite
def llama_like_configs(draw, model_type):
    h, per_kv = draw(heads), draw(st.sampled_from([1, 2, 4]))
    config = {
        "model_type": model_type,
        "num_attention_heads": h * per_kv,
        "num_key_value_heads": h,
        "hidden_size": h * per_kv * draw(sizes),
        "intermediate_size": draw(st.integers(1, 50)),
        "num_hidden_layers": draw(layers),
        "vocab_size": draw(st.integers(5, 70)),
        "tie_word_embeddings": draw(st.booleans()),
    }
    if draw(st.booleans()):
        config["head_dim"] = draw(st.sampled_from([4, 8, 12]))
    if model_type == "llama":
        config["attention_bias"] = draw(st.booleans())
        config["mlp_bias"] = draw(st.booleans())
    return config


@st.composite
def gpt_neox_configs(draw):
    h = draw(heads)
    return {
        "model_type": "gpt_neox",
        "num_attention_heads": h,
        "hidden_size": h * draw(sizes),
        "intermediate_size": draw(st.integers(1, 50)),
        "num_hidden_layers": draw(layers),
        "vocab_size": draw(st.integers(5, 70)),
        "tie_word_embeddings": draw(st.booleans()),
        "attention_bias": draw(st.booleans()),
        "use_parallel_residual": draw(st.booleans()),
    }


@st.composite
def opt_configs(draw):
    h = draw(heads)
    hidden = h * draw(sizes)
    return {
        "model_type": "opt",
        "num_attention_heads": h,
        "hidden_size": hidden,
        "ffn_dim": draw(st.integers(1, 50)),
        "num_hidden_layers": draw(layers),
        "vocab_size": draw(st.integers(5, 70)),
        "max_position_embeddings": draw(st.integers(1, 40)),
        "word_embed_proj_dim": draw(st.sampled_from([None, hidden, 8])),
        "do_layer_norm_before": draw(st.booleans()),
        "_remove_final_layer_norm": draw(st.booleans()),
        "enable_bias": draw(st.booleans()),
        "layer_norm_elementwise_affine": draw(st.booleans()),
        "tie_word_embeddings": draw(st.booleans()),
    }


@st.composite
def bert_configs(draw):
    h = draw(heads)
    cross = draw(st.booleans())
    return {
        "model_type": "bert",
        "num_attention_heads": h,
        "hidden_size": h * draw(sizes),
        "intermediate_size": draw(st.integers(1, 50)),
        "num_hidden_layers": draw(layers),
        "vocab_size": draw(st.integers(5, 70)),
        "max_position_embeddings": draw(st.integers(1, 40)),
        "type_vocab_size": draw(st.integers(1, 3)),
        "tie_word_embeddings": draw(st.booleans()),
        "is_decoder": cross,
        "add_cross_attention": cross,
    }


@st.composite
def vit_configs(draw):
    h = draw(heads)
    patch = draw(st.sampled_from([2, 4, [2, 4]]))
    image = draw(st.sampled_from([8, 12, [8, 16]]))
    config = {
        "model_type": "vit",
        "num_attention_heads": h,
        "hidden_size": h * draw(sizes),
        "intermediate_size": draw(st.integers(1, 50)),
        "num_hidden_layers": draw(layers),
        "image_size": image,
        "patch_size": patch,
        "num_channels": draw(st.integers(1, 4)),
        "qkv_bias": draw(st.booleans()),
    }
    labels = draw(st.sampled_from(["none", "num", "map"]))
    if labels == "num":
        config["num_labels"] = draw(st.integers(0, 5))
    elif labels == "map":
        config["id2label"] = {str(i): f"c{i}" for i in range(draw(st.integers(1, 4)))}
    return config


def check_random(config):
    spec = ModelSpec(
        name="random",
        model_type=config["model_type"],
        config=normalize_config(config),
        task=_task(config["model_type"]),
    )
    assert_same_parameters(spec, config)


def _task(model_type):
    return {"bert": "masked-lm", "vit": "image-classification"}.get(model_type, "causal-lm")


@SMALL
@given(gpt2_configs())
def test_random_gpt2(config):
    check_random(config)


@SMALL
@given(st.sampled_from(["llama", "mistral", "qwen2"]).flatmap(llama_like_configs))
def test_random_llama_mistral_qwen2(config):
    check_random(config)


@SMALL
@given(gpt_neox_configs())
def test_random_gpt_neox(config):
    check_random(config)


@SMALL
@given(opt_configs())
def test_random_opt(config):
    check_random(config)


@SMALL
@given(bert_configs())
def test_random_bert(config):
    check_random(config)


@SMALL
@given(vit_configs())
def test_random_vit(config):
    check_random(config)


def test_the_lazy_family_registry_names_each_family_by_its_own_model_type():
    from memprof.estimators.families import FAMILIES

    assert [f.model_type for f in FAMILIES.values()] == list(FAMILIES) == list(SUPPORTED_MODEL_TYPES)
