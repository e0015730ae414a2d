"""Task heads (`--head`, estimators/heads.py, estimators/families/_heads.py): the parameters of every
head class memprof models, checked against transformers' own class on the meta device; the head a
config's `architectures` names; the one-line errors; and the activation replay of each head against a
real CPU training step of a tiny model (memprof.validate runs it)."""

from __future__ import annotations

import json
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from memprof.estimators.errors import MemprofUserError, ParameterError  # noqa: E402
from memprof.estimators.estimation import estimate  # noqa: E402
from memprof.estimators.families import FAMILIES  # noqa: E402
from memprof.estimators.heads import HEADS, family_heads, head_from_architectures  # noqa: E402
from memprof.estimators.models import load_model, spec_from_config  # noqa: E402
from memprof.profiles import data_path  # noqa: E402
from memprof.tiny_models import AUTO_HEADS  # noqa: E402

transformers.logging.set_verbosity_error()

# one preset of each of the eight families (opt-350m: its word_embed_proj_dim differs from hidden)
PRESETS = {
    "gpt2": "gpt2-124m",
    "llama": "llama-3.2-1b",
    "mistral": "mistral-7b",
    "qwen2": "qwen2.5-0.5b",
    "gpt_neox": "pythia-410m",
    "opt": "opt-350m",
    "bert": "bert-base-uncased",
    "vit": "vit-b-16",
}
CASES = [(family, head) for family in PRESETS for head in family_heads(FAMILIES[family])]


def _real_parameters(config: dict, head: str) -> tuple[str, list[tuple[str, tuple[int, ...]]]]:
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = getattr(transformers, AUTO_HEADS[head]).from_config(hf_config)
    return type(model).__name__, [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _preset_config(name: str) -> dict:
    return json.loads(data_path("models", f"{name}.json").read_text())["config"]


@pytest.mark.parametrize(("family", "head"), CASES)
@pytest.mark.parametrize("labels", [None, 5])
def test_every_head_lists_the_real_classes_named_parameters(family, head, labels):
    # GIVEN a preset's config (with 5 labels named by id2label, or transformers' default 2)
    config = _preset_config(PRESETS[family])
    if labels is not None:  # as a saved config.json carries it: the label map, no num_labels
        config.pop("num_labels", None)
        config["id2label"] = {str(i): f"L{i}" for i in range(labels)}
    config.pop("architectures", None)
    spec = spec_from_config(config, name="x", where="x", source="test", head=head)
    # WHEN transformers builds the head class on the meta device
    cls, expected = _real_parameters(config, head)
    # THEN memprof names that class and lists its named_parameters() exactly
    assert cls == spec.head_class
    assert [(t.name, t.shape) for t in spec.parameter_tensors()] == expected


def test_decoders_and_bert_have_both_classification_heads_and_opt_its_sequence_one():
    assert set(family_heads(FAMILIES["gpt2"])) == {"causal-lm", "seq-cls", "token-cls"}
    assert set(family_heads(FAMILIES["bert"])) == {"masked-lm", "seq-cls", "token-cls"}
    assert set(family_heads(FAMILIES["opt"])) == {"causal-lm", "seq-cls"}
    assert set(family_heads(FAMILIES["vit"])) == {"image-cls"}
    assert "seq2seq-lm" in HEADS  # t5 declares it in its Family.heads


@pytest.mark.parametrize(
    ("architectures", "head"),
    [
        (["BertForSequenceClassification"], "seq-cls"),
        (["LlamaForTokenClassification"], "token-cls"),
        (["GPT2LMHeadModel"], "causal-lm"),
        (["ViTForImageClassification"], "image-cls"),
        (["T5ForConditionalGeneration"], "seq2seq-lm"),
        (["SomethingElse"], None),
        ("BertForMaskedLM", None),  # not a list
    ],
)
def test_the_head_a_config_names(architectures, head):
    found = head_from_architectures(architectures)
    assert (found[0] if found else None) == head


def test_a_config_json_naming_a_classifier_is_estimated_as_that_classifier(tmp_path):
    # GIVEN bert-base's config.json as a fine-tuned classifier saves it
    config = _preset_config("bert-base-uncased")
    config.update(architectures=["BertForSequenceClassification"], id2label={"0": "neg", "1": "pos", "2": "mixed"})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    spec = load_model(str(path))
    # THEN it is the classifier (pooler + 3-way classifier), not the masked-LM head, and its
    # estimate says so in settings.head
    assert spec.head == "seq-cls" and spec.head_class == "BertForSequenceClassification"
    assert spec.num_parameters == 109_484_547  # bert-base-uncased + pooler + 768x3 classifier, transformers'
    record = estimate(str(path), device="cpu", batch_size=2, seq_len=128).record
    assert record.settings.head == "seq-cls" and record.to_dict()["settings"]["head"] == "seq-cls"
    # and --head picks another one of its heads
    assert estimate(str(path), device="cpu", seq_len=128, head="masked-lm").record.settings.head == "masked-lm"


def test_a_head_a_family_does_not_have_is_one_line_naming_its_heads():
    with pytest.raises(ParameterError, match=r"'token-cls' is not modelled for opt; its heads: causal-lm"):
        estimate("opt-1.3b", head="token-cls")
    with pytest.raises(ParameterError, match="invalid head 'qa'; valid: causal-lm, masked-lm"):
        estimate("gpt2-124m", head="qa")


def test_an_unmodelled_architecture_is_refused_not_estimated_as_another_head(tmp_path):
    config = _preset_config("opt-350m")
    config["architectures"] = ["OPTForQuestionAnswering"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert load_model(str(path)).head == "causal-lm"  # no head suffix memprof knows: the family's own
    config["architectures"] = ["OPTForTokenClassification"]  # not a class transformers has, but a head name
    path.write_text(json.dumps(config))
    with pytest.raises(MemprofUserError, match="architectures names OPTForTokenClassification"):
        load_model(str(path))


def test_decoder_sequence_classification_needs_a_pad_token_for_batches():
    # transformers: "Cannot handle batch sizes > 1 if no padding token is defined" (gpt2 has none)
    with pytest.raises(ParameterError, match="pad_token_id"):
        estimate("gpt2-124m", head="seq-cls", batch_size=2, seq_len=64)
    assert estimate("gpt2-124m", head="seq-cls", batch_size=1, seq_len=64).record.peak.allocated


def test_regression_and_multi_label_are_refused():
    with pytest.raises(MemprofUserError, match="regression and multi-label"):
        config = dict(_preset_config("bert-base-uncased"), num_labels=1)
        config.pop("id2label", None)
        spec_from_config(config, name="x", where="x", source="t", head="seq-cls")


def test_the_vocabulary_logits_are_gone():
    # a 2-label classifier of Llama-3.2-1B needs none of the 128k-vocabulary logits of the LM head
    # (its config has no pad_token_id: one sequence per batch, as transformers requires)
    lm = estimate("llama-3.2-1b", device="cpu", batch_size=1, seq_len=2048).record
    cls = estimate("llama-3.2-1b", device="cpu", batch_size=1, seq_len=2048, head="seq-cls").record
    vocab_logits = 2048 * 128_256 * 2  # bf16 logits alone
    assert lm.peak.allocated - cls.peak.allocated > vocab_logits


# -- the replay against a real CPU step ------------------------------------------------------------------

REAL = [(family, head) for family, head in CASES if head in ("seq-cls", "token-cls")]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "head"), REAL)
def test_the_heads_replay_matches_a_real_training_step(family, head):
    from memprof.validate import Case, run_case

    # GIVEN a tiny model of the family with the head, trained for real in fp32 on the CPU
    result = run_case(Case(family, "adamw", "32-true", "eager", "none", head=head))
    # THEN model states are exact and the peak within the matrix's tolerance
    assert result["status"] == "pass", result
    peak = result["rows"]["peak.allocated"]
    assert abs(peak["error_pct"]) < 0.01, peak  # fp32 eager replays every tensor: off by the 4-byte step counter
